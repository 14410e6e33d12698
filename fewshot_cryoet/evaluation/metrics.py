"""Metrics the runner computes from predictions (methods never score themselves)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

#: Significance level of every "tie" and "better" the leaderboards state.
ALPHA = 0.05


def mean_ci95(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval, 1.96·σ/√n (σ with n − 1)."""
    array = np.asarray(values, dtype=float)
    if len(array) == 0:
        return math.nan, math.nan
    if len(array) == 1:
        return float(array[0]), math.nan
    return float(array.mean()), float(1.96 * array.std(ddof=1) / math.sqrt(len(array)))


def episode_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of queries whose highest score is their class."""
    return float((scores.argmax(dim=1) == labels.to(scores.device)).float().mean())


def dice(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice coefficient per volume of boolean masks ``(n, ...)``; 1 when both are empty."""
    p = predicted.flatten(1).bool()
    t = truth.flatten(1).bool()
    overlap = (p & t).sum(dim=1).float()
    total = p.sum(dim=1).float() + t.sum(dim=1).float()
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))


def significantly_worse(best_mean: float, best_ci: float, mean: float, ci: float) -> bool:
    """Whether ``mean`` is below ``best_mean`` beyond chance: the difference exceeds the 95%
    interval of a difference of two independent means, 1.96·√(se₁² + se₂²)."""
    if math.isnan(best_ci) or math.isnan(ci):
        return mean < best_mean
    return best_mean - mean > math.sqrt(best_ci**2 + ci**2)


def seeds_and_episodes_ci(group: pd.DataFrame, replicates: int = 2000) -> tuple[float, float, int]:
    """(mean, 95% CI half-width, number of training seeds) of a row's accuracy. One seed: mean ±
    1.96·σ/√n over episodes. Several: the mean over seeds of their means, with a two-level
    bootstrap (seeds with replacement, then episodes with replacement, the same episodes for every
    seed as they were scored; 2000 replicates, fixed generator, half the 95% percentile range), so
    the interval counts training-to-training variation as well as episode variation."""
    table = group.pivot_table(index="episode", columns="train_seed", values="accuracy", aggfunc="first").dropna()
    seeds = table.shape[1]
    if seeds < 2:
        mean, ci = mean_ci95(group["accuracy"])
        return mean, ci, seeds
    values = table.to_numpy()
    rng = np.random.default_rng(0)
    episodes = rng.integers(0, len(values), size=(replicates, len(values)))
    chosen = rng.integers(0, seeds, size=(replicates, seeds))
    means = np.take_along_axis(values[episodes], chosen[:, None, :], axis=2).mean(axis=(1, 2))
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float((high - low) / 2), seeds


@dataclass(frozen=True)
class PairedComparison:
    """A − B over the same episodes: mean per-episode difference, the half-width of its 95% CI,
    and the two-sided Wilcoxon signed-rank p-value (scipy; zero differences dropped, as Wilcoxon
    did; 1 when every difference is zero)."""

    mean_difference: float
    ci95: float
    p_value: float
    episodes: int

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def verdict(self, a: str = "A", b: str = "B") -> str:
        if not self.significant:
            return "tie"
        return f"{a} better" if self.mean_difference > 0 else f"{b} better"


def paired_comparison(a, b) -> PairedComparison:
    """Compare two methods' per-episode scores on identical episodes (``a[i]`` and ``b[i]`` from
    episode i): far more sensitive than comparing two means, since episode difficulty cancels."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or len(x) == 0:
        raise ValueError("paired comparison needs two equally long, non-empty series of the same episodes")
    differences = x - y
    mean, ci = mean_ci95(differences)
    if not np.any(differences != 0):
        return PairedComparison(mean, 0.0 if len(x) > 1 else math.nan, 1.0, len(x))
    p_value = float(wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)
    return PairedComparison(mean, ci, p_value, len(x))
