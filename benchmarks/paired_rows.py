"""What the generalisation benchmarks (class_diversity.py, cross_route.py) report of a row: its
accuracy per test episode (the mean over training seeds, since every seed is scored on the same
episodes), the range of its per-seed means, and a paired difference against another row."""

from __future__ import annotations

import pandas as pd

from fewshot_cryoet.evaluation.metrics import paired_comparison


def episode_means(part: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(accuracy per test episode over the training seeds, accuracy per training seed)."""
    seeds = part["train_seed"].fillna(0)  # one training seed leaves the column empty
    return part.groupby("episode")["accuracy"].mean(), part.groupby(seeds)["accuracy"].mean()


def seed_range(per_seed: pd.Series) -> str:
    return f"{per_seed.min():.3f}–{per_seed.max():.3f}"


def paired_text(a: pd.Series, b: pd.Series) -> str:
    """``a − b`` over their common episodes: mean ± 95% CI and the Wilcoxon p-value."""
    common = a.index.intersection(b.index)
    result = paired_comparison(a[common], b[common])
    return f"{result.mean_difference:+.3f} ± {result.ci95:.3f} (p {result.p_value:.2g})"
