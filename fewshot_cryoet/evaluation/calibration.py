"""Confidence that means what it says: scores become class probabilities by a temperature softmax.

Users threshold on confidence (the predicted class's probability), so a confidence of 0.9 should be
right about 9 times in 10. Every method's scores, logits or similarities, become probabilities the
same way, ``softmax(scores / T)``:

- **Trained methods** get ``T`` fitted after training, on the fixed validation-class episodes that
  also select their weights (temperature scaling, Guo et al. 2017: one parameter, so it cannot
  change which class wins, and validation classes are never test classes). The fitted ``T`` is saved
  in the checkpoint and used by ``fsc bench`` and ``fsc predict`` alike.
- **Training-free methods** have no fit, so they carry a fixed, documented ``temperature`` class
  attribute, measured once on validation-class episodes (see each method's docstring).

The leaderboard's ``calibration.csv`` reports the expected calibration error that results.
scipy's bounded scalar minimiser does the fit; no hand-written optimiser.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import torch

if TYPE_CHECKING:
    from fewshot_cryoet.episodes import Episode
    from fewshot_cryoet.methods.base import FewShotMethod

#: Temperatures searched, as log10(T): 1e-4 … 1e3 covers similarities that differ in the third
#: decimal (template matching) and logits of squared distances in the hundreds.
LOG10_RANGE = (-4.0, 3.0)


def class_probabilities(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``(n_query, n_way)`` scores → probabilities ``softmax(scores / temperature)``."""
    return torch.softmax(scores.float() / float(temperature), dim=1)


def negative_log_likelihood(scores: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean NLL of the true classes under ``softmax(scores / temperature)``."""
    return float(torch.nn.functional.cross_entropy(scores.double() / temperature, labels.long()))


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the NLL of ``labels`` (searched on a log scale)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: negative_log_likelihood(scores, labels, 10.0 ** log_t),
                             bounds=LOG10_RANGE, method="bounded", options={"xatol": 1e-4})
    return float(10.0 ** result.x)


def temperature_fitter(episodes: Sequence[Episode]) -> Callable[[FewShotMethod], float] | None:
    """What a fit calls once trained: the method's predictions on ``episodes`` (validation classes)
    → its fitted temperature. None without episodes (the method keeps its default)."""
    if not episodes:
        return None

    def fit(method: FewShotMethod) -> float:
        scores, labels = [], []
        for episode in episodes:
            prediction = method.predict(episode)
            scores.append(torch.nan_to_num(prediction.scores.float()))
            labels.append(episode.query_labels.cpu())
        # Episodes may differ in N; pad missing classes with -inf so the softmax ignores them.
        width = max(s.shape[1] for s in scores)
        padded = [torch.cat([s, torch.full((len(s), width - s.shape[1]), -math.inf)], dim=1) for s in scores]
        return fit_temperature(torch.cat(padded), torch.cat(labels))

    return fit
