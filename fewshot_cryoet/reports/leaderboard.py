"""Leaderboards generated from the results store (never edited by hand).

Rows are method/variant, columns are N-way per SNR (per K-shot), cells "acc ± CI". In each column
the best cell is bold, and so is every cell not significantly worse than it (statistical ties
share the mark): every method is scored on the same episodes, so "worse" is decided by a paired
Wilcoxon test on the per-episode accuracies (α = 0.05). A last row gives the chance level 1/N. A Dice table appears when any method segments; a PNG plots accuracy against
N-way for each SNR. CSV files hold the same numbers in long form.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from fewshot_cryoet.datasets.dataset import RECORDED
from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.evaluation.metrics import seeds_and_episodes_ci, significantly_worse
from fewshot_cryoet.core.outputs import write_text

LEADERBOARD_EPISODES = 600


def domain(train_dataset: str, dataset: str) -> str:
    """How a leaderboard names where rows come from: the data set, or "training → test" domains."""
    return f"{train_dataset} → {dataset}" if train_dataset else dataset


#: What makes two results rows the same leaderboard row: the configuration (method, variant,
#: hyper-parameter hash, budget, seed), the data (domain and hashes) and the setting.
ROW_KEYS = ["dataset", "dataset_hash", "train_dataset", "train_dataset_hash", "method", "variant", "params_hash",
            "label", "budget", "seed", "snr", "n_way", "k_shot", "q_query"]
#: The configuration part of a row's key, beside its label.
CONFIGURATION = ["method", "variant", "params_hash", "budget", "seed"]


#: The columns of cross-domain rows: "" for in-domain rows.
CROSS_DOMAIN = ("train_dataset", "train_dataset_hash")


def _filled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its cross-domain columns "" for in-domain rows (older stores lack them, and
    joins may give NaN), so rows compare and group alike wherever they come from."""
    return frame.assign(**{c: frame[c].fillna("") if c in frame else "" for c in CROSS_DOMAIN})


def with_training_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row's training seed: its own, or the episode seed it was trained with (rows from
    stores before training seeds existed were all trained with it)."""
    seeds = frame["train_seed"] if "train_seed" in frame else pd.Series(math.nan, index=frame.index)
    return frame.assign(train_seed=seeds.fillna(frame["seed"]).astype(int))


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (domain, configuration, SNR, N, K): accuracy mean ± CI (over training seeds and
    episodes, see :func:`seeds_and_episodes_ci`), Dice mean ± std, n. Rows of different
    configurations never merge, even under one label: where a label covers several, the label
    says what differs (budget, seed or hyper-parameter hash). An episode index appears at most
    once per row and training seed; anything else is refused, since it would narrow the CI."""
    frame = _distinct_labels(with_training_seeds(_filled(frame)))
    keys = ROW_KEYS
    rows = []
    for key, group in frame.groupby(keys, sort=False):
        repeated = group.duplicated(["train_seed", "episode"])
        if repeated.any():
            raise FscError(f"results row {dict(zip(keys, key))['label']!r} holds episode "
                           f"{int(group['episode'][repeated].iloc[0])} twice; the store is damaged")
        accuracy, ci, seeds = seeds_and_episodes_ci(group)
        dice = group["dice"].dropna()
        dice_crf = group["dice_crf"].dropna()
        rows.append({
            **dict(zip(keys, key)),
            "episodes": int(group["episode"].nunique()), "seeds": seeds, "accuracy": accuracy, "ci95": ci,
            "dice": float(dice.mean()) if len(dice) else math.nan,
            "dice_std": float(dice.std(ddof=1)) if len(dice) > 1 else math.nan,
            "dice_crf": float(dice_crf.mean()) if len(dice_crf) else math.nan,
            "dice_crf_std": float(dice_crf.std(ddof=1)) if len(dice_crf) > 1 else math.nan,
            "predict_ms": 1000 * float(group["predict_seconds"].mean()),
            "fit_seconds": float(group["fit_seconds"].dropna().mean()) if group["fit_seconds"].notna().any() else math.nan,
            "fit_episodes": float(group["fit_episodes"].dropna().mean()) if group["fit_episodes"].notna().any() else math.nan,
            "examples_seen": _examples_seen(group),
            "val_accuracy": float(group["val_accuracy"].dropna().mean()) if group["val_accuracy"].notna().any() else math.nan,
            "mask_snr": float(group["mask_snr"].iloc[0]) if "mask_snr" in group else math.nan,
            "device": group["device"].iloc[0], "package_version": group["package_version"].iloc[0],
            "plugin": group["plugin"].iloc[0],
        })
    return _in_budget_order(pd.DataFrame(rows))


def _in_budget_order(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows of several budgets ordered by increasing budget, otherwise in the store's order. The
    store keeps the order in which results were computed, and a budget curve trains (and so often
    scores) its largest budget first: without this a table would read 100ep, 1000ep, 300ep."""
    if summary.empty or summary.loc[summary["budget"] != "", "budget"].nunique() < 2:
        return summary
    from fewshot_cryoet.core.types import Budget

    def size(text: str) -> tuple[float, float]:
        if not text:
            return (0.0, 0.0)  # untrained methods first, as a floor
        budget = Budget.parse(text)
        return (math.inf if budget.episodes is None else budget.episodes,
                math.inf if budget.minutes is None else budget.minutes)

    order = sorted(range(len(summary)), key=lambda i: size(summary["budget"].iloc[i]))  # stable
    return summary.iloc[order].reset_index(drop=True)


def _examples_seen(group: pd.DataFrame) -> float:
    """Training volumes a row's model saw (supports and queries over every episode), where the
    store recorded it (stores from before it did leave it empty)."""
    if "fit_examples" not in group or not group["fit_examples"].notna().any():
        return math.nan
    return float(group["fit_examples"].dropna().mean())


def _training(part: pd.DataFrame) -> str:
    """What training each row got, in words: its budget and, per SNR, episodes, examples and time."""
    texts = []
    for label, rows in part.groupby("label", sort=False):
        budget = rows["budget"].iloc[0]
        if not budget:
            texts.append(f"{label}: none")
            continue
        fits = rows.drop_duplicates("snr").sort_values("snr", key=lambda c: c.map(_snr_order))
        done = "; ".join(f"SNR {r['snr']}: {r['fit_episodes']:.0f} episodes, "
                         + ("" if math.isnan(r["examples_seen"]) else f"{r['examples_seen']:,.0f} examples, ")
                         + f"{r['fit_seconds']:.0f} s" for _, r in fits.iterrows() if not math.isnan(r["fit_episodes"]))
        seeds = int(rows["seeds"].max())
        texts.append(f"{label}: {budget}" + (f" × {seeds} training seeds (mean per seed)" if seeds > 1 else "")
                     + (f" ({done})" if done else ""))
    return "; ".join(texts)


def _distinct_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Labels made unique per configuration: a label shared by configurations that differ gets
    what differs appended (`` · budget 2m``, `` · seed 1``, `` · params 1a2b3c``)."""
    if frame.empty:
        return frame
    frame = frame.copy()
    for label, part in frame.groupby("label", sort=False):
        configurations = part[CONFIGURATION].drop_duplicates()
        if len(configurations) < 2:
            continue
        differing = [c for c in ("budget", "seed", "params_hash", "variant", "method") if configurations[c].nunique() > 1]
        suffix = part[differing].astype(str).apply(
            lambda r: " · ".join(f"{'params' if c == 'params_hash' else c} {v or 'none'}" for c, v in r.items()), axis=1)
        frame.loc[part.index, "label"] = label + " · " + suffix
    return frame


def _snr_order(text: str) -> float:
    """∞ first, then decreasing SNR; recorded (imported) data, whose SNR is unknown, last."""
    if text == RECORDED:
        return math.inf
    return -math.inf if text == "inf" else -float(text)


def _column(row) -> str:
    """``SNR 0.02 (in-mask 0.16) · 8-way``: the nominal SNR is over the whole box, mostly solvent;
    the median SNR inside the particle masks says how hard the level really is."""
    shot = "" if row["k_shot"] == 1 else f" {row['k_shot']}-shot"
    if row["snr"] == RECORDED:  # imported from a microscope: no nominal SNR
        return f"recorded · {row['n_way']}-way{shot}"
    snr = "∞" if row["snr"] == "inf" else row["snr"]
    mask_snr = row.get("mask_snr", math.nan)
    if not (isinstance(mask_snr, float) and math.isfinite(mask_snr)):
        return f"SNR {snr} · {row['n_way']}-way{shot}"
    inside = f"{mask_snr:.2g}" if mask_snr < 100 else f"{mask_snr:.0f}"
    return f"SNR {snr} (in-mask {inside}) · {row['n_way']}-way{shot}"


def _ordered(summary: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows sorted by SNR (∞ first), K and N, and the table's column names in that order."""
    ordered = summary.assign(_snr=summary["snr"].map(_snr_order)).sort_values(["_snr", "k_shot", "n_way"])
    return ordered, list(dict.fromkeys(_column(r) for _, r in ordered.iterrows()))


#: What makes two rows' episodes the same episodes (so that they can be compared pairwise).
EPISODE_SET = ["dataset_hash", "snr", "n_way", "k_shot", "q_query", "seed"]


def _results_of(frame: pd.DataFrame, row) -> pd.DataFrame:
    """The stored results of one summary row, matched by configuration and data, not by label."""
    mask = pd.Series(True, index=frame.index)
    for key in ROW_KEYS:
        if key != "label":
            mask &= frame[key] == row[key]
    return frame[mask]


def episode_scores(frame: pd.DataFrame, row) -> pd.Series:
    """Per-episode accuracy of one summary row (the mean over its training seeds), indexed by
    episode number (``frame`` as the store gives it, or passed through :func:`_filled`)."""
    return _results_of(frame, row).groupby("episode")["accuracy"].mean().sort_index()  # the mean over training seeds


def seed_scores(frame: pd.DataFrame, row, episodes: pd.Index) -> pd.Series:
    """Mean accuracy of one summary row per training seed, over ``episodes`` only."""
    results = with_training_seeds(_results_of(frame, row))
    return results[results["episode"].isin(episodes)].groupby("train_seed")["accuracy"].mean()


def per_seed_ranges(a: pd.Series, b: pd.Series) -> str:
    """Both rows' per-seed ranges and whether they are apart (every seed of one above every seed
    of the other). The paired test compares per-episode means over seeds, so it tells whether
    these trainings differ on these episodes; ranges that overlap warn that other trainings might
    not. Empty when neither row has several seeds."""
    if len(a) < 2 and len(b) < 2:
        return ""

    def span(scores: pd.Series) -> str:
        return f"{scores.min():.3f}" if len(scores) == 1 else f"{scores.min():.3f}–{scores.max():.3f}"

    apart = a.min() > b.max() or b.min() > a.max()
    return f"{span(a)} vs {span(b)}: {'apart' if apart else 'overlap'}"


def _tied(best, row, frame: pd.DataFrame | None) -> bool:
    """Whether ``row`` is not significantly worse than ``best``: the paired Wilcoxon test on their
    common episodes when both were scored on the same episodes, else the unpaired interval test."""
    from fewshot_cryoet.evaluation.metrics import paired_comparison

    same_episodes = all(best[k] == row[k] for k in EPISODE_SET)
    if frame is not None and same_episodes:
        a, b = episode_scores(frame, best), episode_scores(frame, row)
        common = a.index.intersection(b.index)
        if len(common) >= 2:
            return not paired_comparison(a[common], b[common]).significant
    return not significantly_worse(best["accuracy"], best["ci95"], row["accuracy"], row["ci95"])


def accuracy_table(summary: pd.DataFrame, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Markdown-ready table of "acc ± CI" with bold best cells and statistical ties, and a last row
    with the chance level 1/N. With the results ``frame``, ties are decided by a paired test on the
    episodes both rows share (every method is scored on the same episodes)."""
    ordered, columns = _ordered(summary)
    frame = _distinct_labels(_filled(frame)) if frame is not None else None
    labels = list(dict.fromkeys(summary["label"]))
    table = pd.DataFrame("—", index=[*labels, CHANCE], columns=columns)
    for column in columns:
        cells = ordered[[_column(r) == column for _, r in ordered.iterrows()]]
        best = cells.loc[cells["accuracy"].idxmax()]
        for _, r in cells.iterrows():
            text = f"{r['accuracy']:.3f} ± {r['ci95']:.3f}" if not math.isnan(r["ci95"]) else f"{r['accuracy']:.3f}"
            tie = r.name == best.name or _tied(best, r, frame)
            table.loc[r["label"], column] = f"**{text}**" if tie else text
        table.loc[CHANCE, column] = f"{1 / int(best['n_way']):.3f}"
    table.index.name = "method"
    return table


def _rows_named(summary: pd.DataFrame, name: str) -> pd.DataFrame:
    """Summary rows whose label is ``name``, or whose method is ``name`` when that is one label;
    a one-line error names what the store holds otherwise."""
    exact = summary[summary["label"] == name]
    if not exact.empty:
        return exact
    by_method = summary[summary["method"] == name]
    labels = sorted(set(by_method["label"]))
    if len(labels) == 1:
        return by_method
    if len(labels) > 1:
        raise SettingError("compare", f"compare {name!r}: the store has several rows of {name}: "
                                      f"{'; '.join(labels)}; give one of these labels")
    raise SettingError("compare", f"compare {name!r}: not in the store; it has {'; '.join(sorted(set(summary['label'])))}")


def compare(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """``a`` against ``b`` (labels, or method names with one row each), cell by cell on the
    episodes both were scored on: means, the mean paired difference ± 95% CI, the Wilcoxon
    p-value and the verdict ("tie" unless p < 0.05), and, where a row has several training seeds,
    the range of its per-seed means (see :func:`per_seed_ranges`)."""
    from fewshot_cryoet.evaluation.metrics import paired_comparison

    summary = summarise(frame)
    frame = _distinct_labels(_filled(frame))
    left, right = _rows_named(summary, a), _rows_named(summary, b)
    place = ["train_dataset", "dataset", *EPISODE_SET]
    rows = []
    for _, x in left.iterrows():
        match = right
        for key in place:
            match = match[match[key] == x[key]]
        for _, y in match.iterrows():
            sa, sb = episode_scores(frame, x), episode_scores(frame, y)
            common = sa.index.intersection(sb.index)
            if len(common) == 0:
                continue
            result = paired_comparison(sa[common], sb[common])
            rows.append({"domain": domain(x["train_dataset"], x["dataset"]), "snr": x["snr"], "n_way": x["n_way"],
                         "k_shot": x["k_shot"], "episodes": len(common), a: round(float(sa[common].mean()), 4),
                         b: round(float(sb[common].mean()), 4),
                         "difference": f"{result.mean_difference:+.3f} ± {result.ci95:.3f}",
                         "p (Wilcoxon)": float(f"{result.p_value:.3g}"), "verdict": result.verdict(a, b),
                         "per seed": per_seed_ranges(seed_scores(frame, x, common), seed_scores(frame, y, common))})
    if not rows:
        raise SettingError("compare", f"compare: {a} and {b} share no episodes (other data sets, SNRs or settings)")
    return pd.DataFrame(rows)


def tuning_gains(frame: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Every tuned row (``… · tuned (N trials)``) against its untuned configuration on the same
    test episodes (:func:`compare`: paired differences, Wilcoxon), so "tuned better" is a tested
    claim: training-to-training variation is in each side's per-episode means over its seeds."""
    tables = []
    for label in sorted(set(summary["label"])):
        if " · tuned" not in label:
            continue
        base = label.split(" · tuned")[0]
        if base not in set(summary["label"]):
            continue
        table = compare(frame, label, base)
        tables.append(table.rename(columns={label: "tuned", base: "default"}).assign(row=base))
    if not tables:
        return pd.DataFrame()
    table = pd.concat(tables, ignore_index=True)
    return table[["row", *[c for c in table.columns if c != "row"]]]


#: The last row of every accuracy table.
CHANCE = "chance (1/N)"


def dice_table(summary: pd.DataFrame, column: str = "dice") -> pd.DataFrame | None:
    """"mean ± std" of Dice ``column`` (``dice`` raw, ``dice_crf`` refined) per leaderboard column;
    "—" for methods that do not segment. None if none does."""
    if summary[column].isna().all():
        return None
    ordered, columns = _ordered(summary)
    table = pd.DataFrame("—", index=list(dict.fromkeys(summary["label"])), columns=columns)
    for _, r in ordered.iterrows():
        if not math.isnan(r[column]):
            std = "" if math.isnan(r[f"{column}_std"]) else f" ± {r[f'{column}_std']:.3f}"
            table.loc[r["label"], _column(r)] = f"{r[column]:.3f}{std}"
    table.index.name = "method"
    return table


def per_class_dice(query_dice: pd.DataFrame) -> pd.DataFrame | None:
    """Dice per test class (mean ± std) for each segmenting row, SNR and N-way. Rows are told
    apart as in every other table (:func:`_distinct_labels`), so the budgets of a budget curve
    are not pooled under one label."""
    if query_dice.empty:
        return None
    keys = ["train_dataset", "dataset", "label", "snr", "n_way", "k_shot", "class"]
    query_dice = _distinct_labels(_filled(query_dice))
    raw = query_dice.groupby(keys)["dice"].agg(["mean", "std", "count"])
    refined = query_dice.groupby(keys)["dice_crf"].agg(["mean", "std"]).add_prefix("crf_")
    out = raw.join(refined).reset_index()

    def cell(m: float, s: float) -> str:
        if math.isnan(m):
            return "—"
        return f"{m:.3f} ± {s:.3f}" if not math.isnan(s) else f"{m:.3f}"

    out["cell"] = [f"{cell(m, s)} / {cell(cm, cs)}" for m, s, cm, cs in
                   zip(out["mean"], out["std"], out["crf_mean"], out["crf_std"])]
    return out


def plot_accuracy(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewshot_cryoet.datasets.montage import save_figure

    snrs = sorted(summary["snr"].unique(), key=_snr_order)
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


def budget_curves(summary: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against training for every configuration trained at two or more budgets: one row
    per (domain, configuration without its budget, SNR, N, K, budget), with the episodes trained
    (the x of the curve), accuracy and CI."""
    if summary.empty:
        return summary
    same = ["train_dataset", "dataset", "method", "variant", "params_hash", "seed", "snr", "n_way", "k_shot"]
    rows = []
    for _, part in summary[summary["budget"] != ""].groupby(same, sort=False):
        if part["budget"].nunique() < 2:
            continue
        base = part["label"].iloc[0].split(" · budget ")[0]
        for _, r in part.iterrows():
            rows.append({"domain": domain(r["train_dataset"], r["dataset"]), "row": base, "snr": r["snr"],
                         "n_way": r["n_way"], "k_shot": r["k_shot"], "budget": r["budget"],
                         "fit_episodes": r["fit_episodes"], "examples_seen": r["examples_seen"],
                         "fit_seconds": r["fit_seconds"], "seeds": r["seeds"], "accuracy": r["accuracy"],
                         "ci95": r["ci95"]})
    curves = pd.DataFrame(rows)
    return curves.sort_values(["domain", "row", "snr", "n_way", "fit_episodes"]) if not curves.empty else curves


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


def per_class_results(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-class precision, recall and F1 with query counts; confusion counts in long form) per
    row, domain, SNR and N-way, from every stored query's true and predicted class (scikit-learn's
    ``precision_recall_fscore_support`` and ``confusion_matrix``). Recall is the accuracy on that
    class's queries."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if predictions.empty:
        return pd.DataFrame(), pd.DataFrame()
    predictions = _distinct_labels(_filled(predictions))
    scores, counts = [], []
    for (label, train, dataset, snr, ways), part in predictions.groupby(
            ["label", "train_dataset", "dataset", "snr", "n_way"], sort=False):
        classes = sorted(set(part["truth"]) | set(part["predicted"]))
        precision, recall, f1, support = precision_recall_fscore_support(
            part["truth"], part["predicted"], labels=classes, zero_division=0)
        where = domain(train, dataset)
        scores += [{"label": label, "domain": where, "snr": snr, "n_way": ways, "class": c, "precision": p,
                    "recall": r, "f1": f, "queries": int(n)} for c, p, r, f, n in zip(classes, precision, recall, f1, support)]
        matrix = confusion_matrix(part["truth"], part["predicted"], labels=classes)
        counts += [{"label": label, "domain": where, "snr": snr, "n_way": ways, "truth": t, "predicted": p,
                    "count": int(matrix[i, j])} for i, t in enumerate(classes) for j, p in enumerate(classes)]
    return pd.DataFrame(scores), pd.DataFrame(counts)


#: Confidence bins of the expected calibration error.
CALIBRATION_BINS = 15


def calibration(predictions: pd.DataFrame) -> pd.DataFrame:
    """Expected calibration error per row, domain, SNR and N-way: the query-weighted mean gap
    between confidence (the predicted class's probability) and accuracy in 15 equal-width
    confidence bins, with the mean confidence and accuracy beside it. Users threshold on
    confidence, so a row whose confidence says 0.9 should be right 9 times in 10."""
    known = predictions.dropna(subset=["confidence"]) if "confidence" in predictions else predictions.iloc[:0]
    if known.empty:
        return pd.DataFrame()
    known = _distinct_labels(_filled(known))
    rows = []
    for (label, train, dataset, snr, ways), part in known.groupby(["label", "train_dataset", "dataset", "snr", "n_way"],
                                                                  sort=False):
        confidence = part["confidence"].to_numpy()
        correct = (part["truth"] == part["predicted"]).to_numpy(dtype=float)
        bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        gap = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).sum()
                  for b in np.unique(bins)) / len(part)
        rows.append({"label": label, "domain": domain(train, dataset), "snr": snr, "n_way": ways,
                     "queries": len(part), "mean_confidence": float(confidence.mean()),
                     "accuracy": float(correct.mean()), "ece": float(gap)})
    return pd.DataFrame(rows)


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


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80]


def render(frame: pd.DataFrame, query_dice: pd.DataFrame, out: str | Path, store_name: str,
           predictions: pd.DataFrame | None = None, notes: list[str] | None = None) -> list[Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` (and Dice files, ``accuracy.png``) to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(frame)
    written = []
    lines = ["# Leaderboard", "", f"Generated by `fsc leaderboard` from `{store_name}`; do not edit by hand.",
             "Cells: accuracy over test episodes ± 95% CI (1.96·σ/√n). Bold: best in the column and every "
             "cell not significantly worse than it by a paired Wilcoxon test on the same episodes (α = 0.05).",
             *(["Rows trained with several seeds: the mean over seeds ± half the 95% range of a two-level "
                "bootstrap (seeds, then episodes, with replacement; 2000 replicates), so the interval counts "
                "training-to-training variation; their paired tests use the per-episode mean over seeds."]
               if (summary["seeds"] > 1).any() else []), "",
             *(f"Note: {note}." for note in notes or []), *([""] if notes else [])]
    for (train_dataset, dataset), part in summary.groupby(["train_dataset", "dataset"], sort=False):
        episodes = part["episodes"]
        quick = episodes.min() < LEADERBOARD_EPISODES
        hashes = ", ".join(f"SNR {snr}: `{h}`" for snr, h in
                           sorted(set(zip(part["snr"], part["dataset_hash"])), key=lambda x: _snr_order(x[0])))
        if train_dataset:
            trained = ", ".join(f"SNR {snr}: `{h}`" for snr, h in sorted(
                set(zip(part["snr"], part["train_dataset_hash"])), key=lambda x: _snr_order(x[0])))
            heading = [f"## Domains `{train_dataset}` → `{dataset}` (trained and selected on the first, tested on "
                       "the second)", "", f"Training data hashes: {trained}. Test data hashes: {hashes}.", ""]
        else:
            heading = [f"## Data set `{dataset}`", "", f"Content hashes: {hashes}.", ""]
        lines += [*heading,
                  f"Test episodes per cell: {episodes.min()}–{episodes.max()}"
                  + (f" — **quick run: fewer than {LEADERBOARD_EPISODES}, not leaderboard grade**" if quick else "")
                  + f"; queries per class: {', '.join(map(str, sorted(part['q_query'].unique())))}; "
                  + "training budget per method and SNR, and what it gave: " + _training(part) + ".", "",
                  "### Accuracy", "", accuracy_table(part, frame).to_markdown(), ""]
        dice = dice_table(part)
        if dice is not None:
            lines += ["### Segmentation Dice, raw (probability > 0.5; mean ± std over episodes)", "",
                      dice.to_markdown(), ""]
        refined = dice_table(part, "dice_crf")
        if refined is not None:
            lines += ["### Segmentation Dice, 3D dense CRF-refined", "", refined.to_markdown(), ""]
    per_class = per_class_dice(query_dice)
    if per_class is not None:
        lines += ["### Dice per test class (raw / CRF-refined, mean ± std over queries)", ""]
        index = ["label", "snr", "n_way"]
        if (per_class["train_dataset"] != "").any():  # cross-domain rows say which domains they come from
            per_class = per_class.assign(domain=[domain(t, d) for t, d in zip(per_class["train_dataset"],
                                                                                  per_class["dataset"])])
            index = ["domain", *index]
        pivot = per_class.pivot_table(index=index, columns="class", values="cell", aggfunc="first")
        lines += [pivot.to_markdown(), ""]
        write_text(out / "dice_per_class.csv", per_class.to_csv(index=False))
        written.append(out / "dice_per_class.csv")
    if predictions is not None and not predictions.empty:
        scores, counts = per_class_results(predictions)
        lines += ["## Per-class results", "",
                  "Recall (accuracy on the class's queries) per test class, at each row's largest N-way and "
                  "every SNR; precision, F1 and every N-way in `per_class.csv`, confusion counts in "
                  "`confusion.csv`, and one heat-map per row (`confusion_*.png`, row-normalised, largest N-way, "
                  "lowest SNR).", ""]
        largest = scores[scores["n_way"] == scores.groupby("label")["n_way"].transform("max")]
        pivot = largest.pivot_table(index=["label", "domain", "snr", "n_way"], columns="class", values="recall",
                                    aggfunc="first")
        lines += [pivot.to_markdown(floatfmt=".2f"), ""]
        calibrated = calibration(predictions)
        if not calibrated.empty:
            lines += ["### Calibration", "",
                      f"Expected calibration error (ECE, {CALIBRATION_BINS} confidence bins): how far the stated "
                      "confidence (the predicted class's probability, softmax(scores / T)) is from the accuracy. "
                      "T is fitted on validation-class episodes after training for trained methods and a fixed, "
                      "measured value for training-free ones (`fewshot_cryoet.evaluation.calibration`). 0 is perfect; mean "
                      "confidence below accuracy means the row understates itself.", "",
                      calibrated.to_markdown(index=False, floatfmt=".3f"), ""]
            write_text(out / "calibration.csv", calibrated.to_csv(index=False))
            written.append(out / "calibration.csv")
        write_text(out / "per_class.csv", scores.to_csv(index=False))
        write_text(out / "confusion.csv", counts.to_csv(index=False))
        written += [out / "per_class.csv", out / "confusion.csv"]
        for (label, where), part in counts.groupby(["label", "domain"], sort=False):
            part = part[part["n_way"] == part["n_way"].max()]
            snr = min(part["snr"].unique(), key=lambda s: -_snr_order(s))  # the noisiest
            path = out / f"confusion_{_slug(label)}_{_slug(where)}.png"
            plot_confusion(part[part["snr"] == snr], path, f"{label} · {where} · SNR {snr} · {part['n_way'].max()}-way")
            written.append(path)
    gains = tuning_gains(frame, summary)
    if not gains.empty:
        lines += ["## Tuned against the defaults", "",
                  "Each tuned row against its untuned configuration on the same test episodes: mean paired difference "
                  "± 95% CI and a Wilcoxon test; \"tie\" unless p < 0.05. Run both with several `--seeds`, so that "
                  "training-to-training variation is part of each side.", "",
                  gains.to_markdown(index=False), ""]
        write_text(out / "tuning.csv", gains.to_csv(index=False))
        written.append(out / "tuning.csv")
    curves = budget_curves(summary)
    if not curves.empty:
        lines += ["## Accuracy against training budget", "",
                  "Configurations trained at several budgets (`fsc bench --budget A --budget B ...`), at each "
                  "budget's episodes trained; `budget_curves.png` plots them (log scale), `budget_curves.csv` "
                  "holds every N-way.", "", curves.to_markdown(index=False, floatfmt=".3f"), ""]
        write_text(out / "budget_curves.csv", curves.to_csv(index=False))
        plot_budget_curves(curves, out / "budget_curves.png")
        written += [out / "budget_curves.csv", out / "budget_curves.png"]
    write_text(out / "leaderboard.md", "\n".join(lines) + "\n")
    write_text(out / "leaderboard.csv", summary.to_csv(index=False))
    plot_accuracy(summary, out / "accuracy.png")
    return [out / "leaderboard.md", out / "leaderboard.csv", out / "accuracy.png", *written]
