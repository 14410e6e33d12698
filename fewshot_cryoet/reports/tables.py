"""The leaderboard's tables: accuracy with bold best cells and paired ties, Dice, per-class
Dice, tuned-against-defaults gains, budget curves, and one row against another on shared episodes."""

from __future__ import annotations

import math

import pandas as pd

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.evaluation.metrics import significantly_worse
from fewshot_cryoet.reports.summary import (
    ROW_KEYS,
    column_label,
    distinct_labels,
    domain,
    ordered_rows,
    summarise,
    with_domain_columns,
    with_training_seeds,
)

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
    episode number (``frame`` as the store gives it, or passed through :func:`with_domain_columns`)."""
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
    ordered, columns = ordered_rows(summary)
    frame = distinct_labels(with_domain_columns(frame)) if frame is not None else None
    labels = list(dict.fromkeys(summary["label"]))
    table = pd.DataFrame("—", index=[*labels, CHANCE], columns=columns)
    for column in columns:
        cells = ordered[[column_label(r) == column for _, r in ordered.iterrows()]]
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
    frame = distinct_labels(with_domain_columns(frame))
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
    ordered, columns = ordered_rows(summary)
    table = pd.DataFrame("—", index=list(dict.fromkeys(summary["label"])), columns=columns)
    for _, r in ordered.iterrows():
        if not math.isnan(r[column]):
            std = "" if math.isnan(r[f"{column}_std"]) else f" ± {r[f'{column}_std']:.3f}"
            table.loc[r["label"], column_label(r)] = f"{r[column]:.3f}{std}"
    table.index.name = "method"
    return table


def per_class_dice(query_dice: pd.DataFrame) -> pd.DataFrame | None:
    """Dice per test class (mean ± std) for each segmenting row, SNR and N-way. Rows are told
    apart as in every other table (:func:`distinct_labels`), so the budgets of a budget curve
    are not pooled under one label."""
    if query_dice.empty:
        return None
    keys = ["train_dataset", "dataset", "label", "snr", "n_way", "k_shot", "class"]
    query_dice = distinct_labels(with_domain_columns(query_dice))
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
