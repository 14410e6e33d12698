"""Metrics the runner computes from predictions (methods never score themselves)."""

from __future__ import annotations

import math

import numpy as np
import torch


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
