"""The subtomogram simulator: templates in, noisy subtomograms and ground-truth masks out.

Per particle: a Haar-uniform rotation, a small random shift, optional crowding neighbours from
other classes, then imaging by the tilt-series route (projection, CTF, noise, weighted
back-projection) or the Fourier route (3D CTF × missing wedge, noise after). The imaging is
linear, so each particle is simulated once without noise (``signal``) and once as the response
to unit noise (``noise``); a subtomogram at SNR ρ is ``signal + k · noise`` with
k = √(var(signal) / (ρ · var(noise))), which makes the measured SNR equal the target and lets
one noise-free signal serve every SNR level (paired data sets).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from fewshot_cryoet.datasets.imaging import (
    Microscope,
    TiltSeriesImager,
    crop_centre,
    fourier_image,
    tilt_angles,
)
from fewshot_cryoet.datasets.placement import (
    TemplateBank,
    field_size,
    mask_from_density,
    place_neighbours,
    random_rotations,
)
from fewshot_cryoet.datasets.templates import Template
from fewshot_cryoet.errors import FscError, SettingError

Route = Literal["tilt-series", "fourier"]
ROUTES: tuple[str, ...] = ("tilt-series", "fourier")


@dataclass(frozen=True)
class SimulationConfig:
    """Every physical and geometric parameter of a simulated data set (recorded in its manifest)."""

    box: int = 32
    voxel_size: float = 10.0
    route: Route = "tilt-series"
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    tilt_step: float = 2.0
    ctf: bool = True
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    envelope_sigma: float = 0.4
    defocus_um: tuple[float, float] = (2.0, 6.0)
    max_shift: float = 1.0
    crowding: tuple[int, int] = (0, 0)
    contour: float = 0.1
    fourier_padding: float = 1.5

    def __post_init__(self) -> None:
        problems = []
        if self.box < 8 or self.box % 2:
            problems.append(("box", f"box must be an even number ≥ 8, got {self.box}"))
        if not self.voxel_size > 0:
            problems.append(("voxel_size", f"voxel_size must be positive, got {self.voxel_size}"))
        if self.route not in ROUTES:
            problems.append(("route", f"route must be one of {', '.join(ROUTES)}, got {self.route!r}"))
        if not (-90 < self.tilt_min < self.tilt_max <= 90) or not self.tilt_step > 0:
            problems.append(("tilt_range", f"tilt_range {self.tilt_min}..{self.tilt_max} step {self.tilt_step} must "
                                           "satisfy -90 < min < max ≤ 90 with a positive step"))
        lo, hi = self.defocus_um
        if not 0 < lo <= hi:
            problems.append(("defocus", f"defocus range must be 0 < min ≤ max µm, got {lo}..{hi}"))
        cmin, cmax = self.crowding
        if not 0 <= cmin <= cmax <= 4:
            problems.append(("crowding", f"crowding must lie within 0-4 neighbours, got {cmin}-{cmax}"))
        if not 0 < self.contour < 1:
            problems.append(("contour", f"contour {self.contour} leaves an empty or full mask; use a value in (0, 1)"))
        if self.max_shift < 0:
            problems.append(("max_shift", f"max_shift must be ≥ 0 voxels, got {self.max_shift}"))
        if problems:  # every problem at once; the first names the setting the command line shows as its option
            raise SettingError(problems[0][0], "; ".join(text for _, text in problems))

    @property
    def microscope(self) -> Microscope | None:
        if not self.ctf:
            return None
        return Microscope(self.voltage_kv, self.cs_mm, self.amplitude_contrast, self.envelope_sigma)

    @property
    def tilts(self) -> np.ndarray:
        return tilt_angles(self.tilt_min, self.tilt_max, self.tilt_step)

    @property
    def field(self) -> int:
        return field_size(self.box, self.crowding[1])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SimulationConfig:
        data = dict(data)
        for key in ("defocus_um", "crowding"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass
class ParticlePlan:
    """Everything random about a data set's particles, drawn up front from one seed so that the
    simulation itself is a deterministic function of the plan (whatever the batching)."""

    class_index: np.ndarray
    quaternions: np.ndarray
    shifts_voxels: np.ndarray
    defocus_um: np.ndarray
    noise_seeds: np.ndarray
    neighbours: list[list[tuple[int, np.ndarray, np.ndarray]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.class_index)


def make_plan(
    templates: list[Template], per_class: int, config: SimulationConfig, seed: int
) -> ParticlePlan:
    """Draw classes (``per_class`` of each, grouped by class), rotations, shifts, defocus, noise
    seeds and neighbours for every particle."""
    if per_class < 1:
        raise SettingError("per_class", f"per_class must be ≥ 1, got {per_class}")
    if config.crowding[1] > 0 and len(templates) < 2:
        raise SettingError("crowding", "crowding needs at least two classes (neighbours come from other classes)")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    n = len(templates) * per_class
    class_index = np.repeat(np.arange(len(templates)), per_class)
    quaternions = random_rotations(n, rng)
    shifts = rng.uniform(-config.max_shift, config.max_shift, size=(n, 3))
    defocus = rng.uniform(*config.defocus_um, size=n)
    noise_seeds = rng.integers(0, 2**62, size=n)
    radii = np.array([t.radius_voxels(config.contour) for t in templates])
    neighbours: list[list[tuple[int, np.ndarray, np.ndarray]]] = []
    cmin, cmax = config.crowding
    for i in range(n):
        count = int(rng.integers(cmin, cmax + 1)) if cmax > 0 else 0
        others = np.array([j for j in range(len(templates)) if j != class_index[i]])
        chosen = place_neighbours(radii[class_index[i]], radii[others], count, rng) if count else []
        quats = random_rotations(len(chosen), rng) if chosen else np.zeros((0, 4))
        neighbours.append(
            [(int(others[c]), centre + shifts[i], q) for (c, centre), q in zip(chosen, quats)]
        )
    return ParticlePlan(class_index, quaternions, shifts, defocus, noise_seeds, neighbours)


@dataclass
class SimulatedBatch:
    """Noise-free reconstruction, unit-noise response and ground-truth mask, ``(B, box, box, box)``."""

    signal: torch.Tensor
    noise: torch.Tensor | None
    mask: torch.Tensor


class Simulator:
    """Images particles of a plan; holds the template bank and the (cached) imaging operators."""

    def __init__(self, templates: list[Template], config: SimulationConfig) -> None:
        for t in templates:
            if abs(t.voxel_size - config.voxel_size) > 1e-6:
                raise FscError(
                    f"template {t.name} is at {t.voxel_size} Å/voxel but the data set is at "
                    f"{config.voxel_size}; load templates at the data set's voxel size"
                )
            if not (t.density > config.contour).any():
                raise FscError(
                    f"template {t.name}: contour {config.contour} leaves an empty mask; lower contour"
                )
        self.config = config
        self.bank = TemplateBank(templates)
        self._tilt_imager: TiltSeriesImager | None = None

    @property
    def tilt_imager(self) -> TiltSeriesImager:
        if self._tilt_imager is None:
            c = self.config
            self._tilt_imager = TiltSeriesImager(c.field, c.box, c.tilts, c.voxel_size, c.microscope)
        return self._tilt_imager

    def simulate(self, plan: ParticlePlan, indices: np.ndarray, with_noise: bool = True) -> SimulatedBatch:
        """Simulate the particles ``indices`` of ``plan``."""
        c = self.config
        indices = np.asarray(indices)
        field = c.field
        central = self.bank.render(
            plan.class_index[indices], plan.quaternions[indices], plan.shifts_voxels[indices], field
        )
        fields = central.clone()
        for slot in range(c.crowding[1]):
            rows = [r for r, i in enumerate(indices) if len(plan.neighbours[i]) > slot]
            if not rows:
                break
            picks = [plan.neighbours[indices[r]][slot] for r in rows]
            fields[rows] += self.bank.render(
                np.array([p[0] for p in picks]),
                np.stack([p[2] for p in picks]),
                np.stack([p[1] for p in picks]),
                field,
            )
        defocus = torch.from_numpy(plan.defocus_um[indices] * 1e4).to(torch.float32)
        seeds = [int(s) for s in plan.noise_seeds[indices]] if with_noise else None
        if c.route == "tilt-series":
            signal, noise = self.tilt_imager.image(fields, defocus, seeds)
        else:
            signal = fourier_image(
                fields, defocus, c.microscope, c.voxel_size, (c.tilt_min, c.tilt_max), c.box,
                c.fourier_padding,
            )
            noise = _white_noise(seeds, c.box) if seeds is not None else None
        mask = mask_from_density(crop_centre(central, c.box), c.contour)
        return SimulatedBatch(signal.contiguous(), noise, mask.contiguous())

    def particle_density(self, plan: ParticlePlan, indices: np.ndarray) -> torch.Tensor:
        """The noise-free density of the central particles on the box grid (for checks)."""
        central = self.bank.render(
            plan.class_index[indices], plan.quaternions[indices], plan.shifts_voxels[indices],
            self.config.field,
        )
        return crop_centre(central, self.config.box)


def _white_noise(seeds: list[int], box: int) -> torch.Tensor:
    return torch.stack(
        [torch.randn((box, box, box), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )


@dataclass
class NoisyVolumes:
    """Subtomograms at one SNR (z-scored, float32) and the SNR measured in them."""

    volumes: torch.Tensor
    snr_measured: np.ndarray
    snr_measured_mask: np.ndarray


def add_noise(batch: SimulatedBatch, snr: float) -> NoisyVolumes:
    """Mix signal and noise at ``snr`` (= var(signal) / var(noise) over the box), then z-score.

    The measured SNR over the box equals ``snr`` by construction; the SNR inside the mask (signal
    variance there over noise variance there) is recorded too, since it is what a segmenter sees.
    """
    signal = batch.signal.flatten(1)
    masks = batch.mask.flatten(1)
    var_signal = _row_variance(signal)
    if math.isinf(snr):
        mixed = signal
        measured = np.full(len(signal), math.inf)
        measured_mask = np.full(len(signal), math.inf)
    else:
        if batch.noise is None:
            raise ValueError("a finite SNR needs the batch's noise response")
        noise = batch.noise.flatten(1)
        scale = torch.sqrt(var_signal / (snr * _row_variance(noise)))
        noise = noise * scale[:, None]
        mixed = signal + noise
        measured = (var_signal / _row_variance(noise)).numpy()
        measured_mask = (_masked_variance(signal, masks) / _masked_variance(noise, masks)).numpy()
    mean = mixed.mean(dim=1, keepdim=True)
    std = _row_variance(mixed).sqrt().clamp_min(1e-12)[:, None]
    volumes = ((mixed - mean) / std).view_as(batch.signal)
    return NoisyVolumes(volumes, measured, measured_mask)


def _row_variance(values: torch.Tensor) -> torch.Tensor:
    """Sample variance of each row, two-pass (5-10× faster than ``Tensor.var`` on CPU)."""
    centred = values - values.mean(dim=1, keepdim=True)
    return (centred * centred).sum(dim=1) / (values.shape[1] - 1)


def _masked_variance(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-row sample variance of ``values`` over ``masks`` (NaN where a mask has < 2 voxels)."""
    weights = masks.to(values.dtype)
    count = weights.sum(dim=1)
    mean = (values * weights).sum(dim=1) / count.clamp_min(1)
    squares = (((values - mean[:, None]) ** 2) * weights).sum(dim=1)
    return torch.where(count >= 2, squares / (count - 1).clamp_min(1), torch.full_like(count, float("nan")))
