"""What every method sees: the canonical input normalisation and test-time augmentation.

Both are hyper-parameters that every method inherits from ``FewShotMethod`` (``input_wedge``,
``input_lowpass``, ``input_whiten``, ``input_sphere``, ``tta``), so they travel with the method's settings into the
results store, checkpoints and model folders, and the base class applies them at the one choke
point every path goes through (``fit`` and ``predict``): ``fsc bench``, ``train``, ``tune`` and
``predict`` therefore treat supports, queries, training and validation volumes identically.

Why these steps: a model trained on one microscope's subtomograms learns its transfer
function, and its tilt range. The wedge step zeroes every frequency outside the sampled double
cone of a tilt range narrower than any data's (``input_wedge``, the largest tilt in degrees), so
every input carries the same measured region: what one microscope's wider tilts measured and
another's did not, and the noise the reconstruction left in the missing wedge, can no longer tell
two data sets apart. Whitening divides each volume's spectrum by its own radially averaged amplitude, which
removes a CTF envelope or B-factor the model never saw; the low-pass then cuts the frequencies
that whitening would amplify and that differ most between microscopes; z-scoring inside a
sphere ignores the corners, where neighbours and background structure live.

Test-time augmentation averages a prediction over the rotations that keep the missing wedge where
it is (the identity and the 180° turns about z, y and x), so it never shows a network a wedge
orientation it was not trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fewshot_cryoet.core.params import Param
from fewshot_cryoet.datasets.imaging import centred_radius, lowpass, radial_frequency, wedge_mask
from fewshot_cryoet.episodes import Episode

#: Version of the normalisation code; a model folder from a newer one is refused.
NORMALISATION_VERSION = 1
#: The input hyper-parameters every method has, at the values that leave volumes as the data
#: set stores them (z-scored over the whole box) and predict without augmentation.
INPUT_DEFAULTS: dict[str, Any] = {"input_wedge": 0.0, "input_lowpass": 0.0, "input_whiten": False,
                                  "input_sphere": 0.0, "tta": 1}
INPUT_RULES: dict[str, Param] = {
    "input_wedge": Param("float", low=0.0, high=90.0),
    "input_lowpass": Param("float", low=0.0),
    "input_whiten": Param("bool"),
    "input_sphere": Param("float", low=0.0, high=1.0),
    "tta": Param("int", choices=(1, 4)),
}
#: The robust input settings (``fsc train --inputs robust``; see docs/tutorials/robustness.md). They
#: help a model trained on the default imaging; with domain-randomised training data they did
#: worse than plain inputs, so ``fsc train`` does not use them by default. Chosen by a
#: measurement (protonet, 150 training episodes, SNR 0.5, 6-way, 200 test episodes; accuracy on
#: default / strong-envelope / near-focus / the first all-shifted): none .888/.685/.812/.560;
#: low-pass 30 Å .882/.622/.811/.554; + whitening .827/.604/.816/.516; sphere 0.9 alone
#: .812/.671/.824/.666; low-pass 30 Å + sphere 0.9 .894/.773/.881/.692; the same + tta 4
#: .895/.774 at 20× the prediction time. Whitening and test-time augmentation stay off.
ROBUST_INPUTS: dict[str, Any] = {"input_lowpass": 30.0, "input_sphere": 0.9}


@dataclass(frozen=True)
class InputNormalisation:
    """Per-volume normalisation: optional whitening, Gaussian low-pass to ``lowpass`` Å (where
    the amplitude halves; 0: none), then zero mean and unit variance inside a sphere of radius
    ``sphere`` × half the box (0: the whole box), with the outside set to zero. First of all,
    ``wedge`` (degrees; 0: none) keeps only the frequencies a ±``wedge``° tilt series about y
    samples (beam along z, as every route of this package images)."""

    lowpass: float = 0.0
    whiten: bool = False
    sphere: float = 0.0
    wedge: float = 0.0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> InputNormalisation:
        return cls(float(params.get("input_lowpass", 0.0)), bool(params.get("input_whiten", False)),
                   float(params.get("input_sphere", 0.0)), float(params.get("input_wedge", 0.0)))

    @property
    def identity(self) -> bool:
        """True when volumes stay as stored (already z-scored over the box)."""
        return self == InputNormalisation()

    def describe(self) -> str:
        """One line for model cards and logs."""
        if self.identity:
            return "per-volume zero mean and unit variance over the whole box; particle density positive"
        steps = ([f"frequencies outside a ±{self.wedge:g}° tilt range about y zeroed"] if self.wedge else []) + (
            ["spectrum whitened (radial amplitude)"] if self.whiten else []) + (
            [f"Gaussian low-pass to {self.lowpass:g} Å"] if self.lowpass else []) + [
            f"zero mean and unit variance inside a sphere of {self.sphere:g} × half the box, zero outside"
            if self.sphere else "zero mean and unit variance over the whole box"]
        return f"v{NORMALISATION_VERSION}: " + "; ".join(steps) + "; particle density positive"

    def __call__(self, volumes: torch.Tensor, voxel_size: float) -> torch.Tensor:
        """Normalise ``(N, 1, D, H, W)`` (or ``(N, D, H, W)``) float volumes."""
        if self.identity or volumes.numel() == 0:
            return volumes
        shape = volumes.shape[-3:]
        out = volumes.float()
        if self.whiten or self.lowpass or self.wedge:
            spectrum = torch.fft.rfftn(out, dim=(-3, -2, -1))
            if self.wedge:
                spectrum = spectrum * wedge_mask(tuple(shape), -self.wedge, self.wedge).to(volumes.device)
            k = radial_frequency(tuple(shape), voxel_size).to(volumes.device)
            if self.whiten:
                spectrum = spectrum / _radial_amplitude(spectrum, k)
            if self.lowpass:
                spectrum = spectrum * lowpass(k, self.lowpass)
            out = torch.fft.irfftn(spectrum, s=shape, dim=(-3, -2, -1))
        weights = _sphere(shape, self.sphere, volumes.device) if self.sphere else None
        flat = out.flatten(-3)
        if weights is None:
            mean, std = flat.mean(-1, keepdim=True), flat.std(-1, keepdim=True)
            flat = (flat - mean) / std.clamp_min(1e-6)
        else:
            w = weights.flatten()
            count = w.sum()
            mean = (flat * w).sum(-1, keepdim=True) / count
            std = ((((flat - mean) ** 2) * w).sum(-1, keepdim=True) / (count - 1)).sqrt()
            flat = (flat - mean) / std.clamp_min(1e-6) * w
        return flat.view_as(out).to(volumes.dtype)

    def episode(self, episode: Episode) -> Episode:
        """The episode with supports and queries normalised (masks and labels untouched)."""
        if self.identity:
            return episode
        return replace(episode, support=self(episode.support, episode.voxel_size),
                       query=self(episode.query, episode.voxel_size))


def _radial_amplitude(spectrum: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each volume's mean amplitude in shells of its own frequency, broadcast back onto the
    grid (floored, so empty shells and the missing wedge never divide by zero)."""
    shells = torch.round(k / k.flatten()[k.flatten() > 0].min()).long().flatten()
    count = torch.bincount(shells).clamp_min(1).to(spectrum.real.dtype)
    amplitude = spectrum.abs().flatten(-3)
    lead = amplitude.shape[:-1]
    sums = torch.zeros(*lead, len(count), dtype=amplitude.dtype, device=amplitude.device)
    sums.index_add_(-1, shells, amplitude)
    mean = sums / count
    floor = mean.amax(-1, keepdim=True) * 1e-3 + 1e-12
    return mean.clamp_min(floor).gather(-1, shells.expand(*lead, -1)).view_as(spectrum.real)


def _sphere(shape: tuple[int, ...], fraction: float, device) -> torch.Tensor:
    """A soft-edged (2-voxel cosine) ball of radius ``fraction`` × half the box."""
    r = centred_radius(shape, device)
    radius = fraction * min(shape) / 2
    edge = ((r - radius + 2) / 2).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * edge))


#: Rotations that keep the missing wedge (normal along z, tilt axis y) in place: the identity
#: and the 180° turns about z, y and x, as axis flips of (z, y, x).
WEDGE_PRESERVING_FLIPS: tuple[tuple[int, ...], ...] = ((), (-2, -1), (-3, -1), (-3, -2))


def rotated(episode: Episode, flips: tuple[int, ...]) -> Episode:
    """The episode with its queries (and their masks) turned by one wedge-preserving rotation;
    query identities are tagged so per-volume caches never mix turned and unturned volumes."""
    if not flips:
        return episode
    masks = None if episode.query_masks is None else episode.query_masks.flip(flips)
    ids = None if episode.query_ids is None else tuple((*i, "flip", flips) if isinstance(i, tuple)
                                                       else (i, "flip", flips) for i in episode.query_ids)
    return replace(episode, query=episode.query.flip(flips), query_masks=masks, query_ids=ids)


def turned_at_random(episode: Episode, rng: np.random.Generator) -> Episode:
    """Training-time rotation augmentation: every support and query volume (with its mask) turned
    by its own wedge-preserving rotation, drawn from ``rng``. Only these four, because any other
    rotation moves the missing wedge to where no tomogram has it; labels stay, identities are
    dropped (a turned volume is no longer the stored one)."""
    turns = rng.integers(len(WEDGE_PRESERVING_FLIPS), size=len(episode.support) + len(episode.query))

    def turn(volumes: torch.Tensor | None, choices: np.ndarray) -> torch.Tensor | None:
        if volumes is None:
            return None
        return torch.stack([v.flip(WEDGE_PRESERVING_FLIPS[c]) if c else v for v, c in zip(volumes, choices)])

    on_support, on_query = turns[:len(episode.support)], turns[len(episode.support):]
    return replace(episode, support=turn(episode.support, on_support), query=turn(episode.query, on_query),
                   support_masks=turn(episode.support_masks, on_support),
                   query_masks=turn(episode.query_masks, on_query), support_ids=None, query_ids=None)
