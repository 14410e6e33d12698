"""A size-and-shape floor: the rotation-averaged radial density profile, nearest class mean.

No training and no orientation: a subtomogram becomes the mean density in spherical shells around
the box centre, which depends on the particle's size and radial mass distribution only. Whatever
a method scores above this row is what it learned beyond size. A third-party plugin of this kind,
written from the README alone, beat the COS-Net row at 8-way on the shared templates, which is
why it is a built-in reference row.

Confidence: scores are squared distances relative to the query's mean distance, and the fixed
mapping is ``softmax(scores / 0.17)``: temperatures fitted on 40 validation-class episodes were
0.13 on the synthetic set at SNR 1000 and 0.17 and 0.22 on the shared templates at SNR 0.5 and
0.05 (see ``fewshot_cryoet.evaluation.calibration``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fewshot_cryoet.core.params import Param
from fewshot_cryoet.datasets.imaging import centred_radius
from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.base import FewShotMethod, Prediction


def radial_profiles(volumes: torch.Tensor, bins: int) -> torch.Tensor:
    """``(N, 1, D, H, W)`` → ``(N, bins)``: mean density in equal-width shells from the box centre
    out to the inscribed sphere (corners left out)."""
    shape = volumes.shape[-3:]
    radius = centred_radius(tuple(shape), volumes.device).flatten()
    outer = min(shape) / 2
    shell = torch.clamp((radius / outer * bins).long(), max=bins)  # index `bins` = outside the sphere
    flat = volumes.flatten(1).float()
    sums = torch.zeros(len(flat), bins + 1, device=volumes.device).index_add_(1, shell, flat)
    counts = torch.bincount(shell, minlength=bins + 1).clamp_min(1).to(flat.dtype)
    return (sums / counts)[:, :bins]


class RadialProfile(FewShotMethod):
    name: ClassVar[str] = "radial"
    description: ClassVar[str] = "Floor: rotation-averaged radial density profile, nearest class mean (size only)"
    defaults: ClassVar[dict[str, Any]] = {"bins": 16}
    param_rules: ClassVar[dict[str, Param]] = {"bins": Param("int", low=2, high=256)}
    temperature: float = 0.17  # measured; see the module docstring

    def predict(self, episode: Episode) -> Prediction:
        bins = int(self.params["bins"])
        support, query = radial_profiles(episode.support, bins), radial_profiles(episode.query, bins)
        means = torch.stack([support[episode.support_labels == c].mean(dim=0) for c in range(episode.n_way)])
        distances = ((query[:, None, :] - means[None, :, :]) ** 2).sum(dim=-1)
        # Relative to each query's mean distance: the scale of squared distances follows the
        # noise level, so one fixed temperature could not calibrate every SNR (argmax unchanged).
        return Prediction(-distances / distances.mean(dim=1, keepdim=True).clamp_min(1e-12))
