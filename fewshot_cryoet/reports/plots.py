"""The leaderboard's PNGs (matplotlib, written atomically): accuracy against N-way per SNR,
accuracy against training budget, and a confusion heat-map per row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fewshot_cryoet.reports.summary import snr_order


def plot_accuracy(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewshot_cryoet.datasets.montage import save_figure

    snrs = sorted(summary["snr"].unique(), key=snr_order)
    labels = list(dict.fromkeys(summary["label"]))
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}  # same line, same colour
    fig, axes = plt.subplots(1, len(snrs), figsize=(4.2 * len(snrs), 3.4), squeeze=False, sharey=True)
    for ax, snr in zip(axes[0], snrs):
        part = summary[(summary["snr"] == snr) & (summary["k_shot"] == summary["k_shot"].min())]
        for label in labels:
            rows = part[part["label"] == label].sort_values("n_way")
            if rows.empty:
                continue
            ax.errorbar(rows["n_way"], rows["accuracy"], yerr=rows["ci95"].fillna(0), marker="o", capsize=3,
                        label=label, color=colours[label])
        ways = sorted(part["n_way"].unique())
        ax.plot(ways, [1 / n for n in ways], "k:", label="chance")
        ax.set_title(f"SNR {'∞' if snr == 'inf' else snr}")
        ax.set_xlabel("N-way")
        ax.set_xticks(ways)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (± 95% CI)")
    axes[0][0].set_ylim(0, 1.02)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    save_figure(fig, path, dpi=120)


def plot_budget_curves(curves: pd.DataFrame, path: Path) -> None:
    """Accuracy ± CI against training episodes (log scale), one panel per domain and SNR, at the
    largest N-way of each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewshot_cryoet.datasets.montage import save_figure

    panels = list(dict.fromkeys(zip(curves["domain"], curves["snr"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
    for ax, (where, snr) in zip(axes[0], panels):
        part = curves[(curves["domain"] == where) & (curves["snr"] == snr)]
        ways = int(part["n_way"].max())
        part = part[part["n_way"] == ways]
        for row, line in part.groupby("row", sort=False):
            ax.errorbar(line["fit_episodes"], line["accuracy"], yerr=line["ci95"].fillna(0), marker="o", capsize=3,
                        label=row)
        ax.axhline(1 / ways, color="k", linestyle=":", label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("training episodes (log scale)")
        ax.set_title(f"{where}, SNR {'∞' if snr == 'inf' else snr}, {ways}-way", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (± 95% CI)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    save_figure(fig, path, dpi=120)


def plot_confusion(counts: pd.DataFrame, path: Path, title: str) -> None:
    """One heat-map of row-normalised confusion (fraction of each true class's queries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewshot_cryoet.datasets.montage import save_figure

    matrix = counts.pivot_table(index="truth", columns="predicted", values="count", aggfunc="sum", fill_value=0)
    fractions = matrix.div(matrix.sum(axis=1).clip(lower=1), axis=0)
    size = max(3.6, 1.6 + 0.45 * len(matrix))
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(fractions.to_numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(fractions.columns)), fractions.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(fractions.index)), fractions.index, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    fig.suptitle(title, fontsize=8)
    save_figure(fig, path, dpi=110)
