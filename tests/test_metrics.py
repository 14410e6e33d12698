"""Metrics: the confidence interval formula, Dice, and statistical ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewshot_cryoet.evaluation.metrics import dice, episode_accuracy, mean_ci95, significantly_worse


def test_mean_ci95_is_1_96_sigma_over_root_n():
    values = np.array([0.5, 0.75, 1.0, 0.25])
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(0.625)
    assert ci == pytest.approx(1.96 * values.std(ddof=1) / 2)
    assert math.isnan(mean_ci95([0.3])[1])


def test_episode_accuracy():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert episode_accuracy(scores, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_dice():
    a = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    b = torch.zeros_like(a)
    a[0, :2] = True
    b[0, 1:3] = True
    values = dice(a, b)
    assert values[0] == pytest.approx(2 * 16 / (32 + 32))
    assert values[1] == 1.0  # both empty


def test_ties_use_the_interval_of_a_difference():
    assert not significantly_worse(0.80, 0.02, 0.78, 0.02)  # 0.02 < √(0.02² + 0.02²)
    assert significantly_worse(0.80, 0.02, 0.70, 0.02)
