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
import torch.nn.functional as F

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.datasets.direct_fourier import BACKGROUND_RADIUS, DirectFourierImager, blurred_mask
from fewshot_cryoet.datasets.imaging import (
    Microscope,
    ParticleOptics,
    TiltSeriesImager,
    crop_centre,
    fourier_image,
    tilt_angles,
)
from fewshot_cryoet.datasets.noise import (  # noqa: F401  (NoisyVolumes and add_noise: importable here, as before)
    NoisyVolumes,
    SimulatedBatch,
    add_noise,
    pink_noise,
    unit_variance,
    white_noise,
)
from fewshot_cryoet.datasets.placement import (
    TemplateBank,
    field_size,
    mask_from_density,
    place_neighbours,
    random_rotations,
)
from fewshot_cryoet.datasets.templates import Template

Route = Literal["tilt-series", "fourier", "direct-fourier"]


#: Settings that take a (min, max) range drawn per particle, besides defocus.
RANGED = ("amplitude_contrast", "envelope_sigma", "lowpass_angstrom", "tilt_min", "tilt_max", "tilt_step",
          "alignment_jitter", "acquisition_voxel_size")


#: Tilt settings drawn per particle; then angles and steps are whole degrees on a 1° grid.
TILT_SETTINGS = ("tilt_min", "tilt_max", "tilt_step")


#: Acquisition voxel sizes drawn per particle are rounded to this (Å), so that particles share
#: imaging operators (one per distinct size).
ACQUISITION_VOXEL_QUANTUM = 0.25


#: Settings added after data sets were first hashed: omitted from the manifest at their defaults.
LATER_SETTINGS = ("alignment_jitter", "acquisition_voxel_size")


ROUTES: tuple[str, ...] = ("tilt-series", "fourier", "direct-fourier")


#: The CTF envelope's default σ (a fraction of Nyquist).
ENVELOPE_DEFAULT = 0.4


#: Subtomogram edges simulated: 256³ float32 is 64 MiB a volume, and the tilt-series operators grow
#: with the square of the edge; anything larger is not a subtomogram.
MIN_BOX, MAX_BOX = 8, 256


#: Voxel sizes (Å) that describe a real microscope; outside them a setting was mistyped.
MIN_VOXEL_SIZE, MAX_VOXEL_SIZE = 0.1, 1000.0


@dataclass(frozen=True)
class SimulationConfig:
    """Every physical and geometric parameter of a simulated data set (recorded in its manifest)."""

    box: int = 32
    voxel_size: float = 10.0
    route: Route = "tilt-series"
    #: Tilt range and increment (degrees): values, or (min, max) ranges drawn per particle, which
    #: are then rounded to whole degrees (every particle's tilts lie on one 1° grid).
    tilt_min: float | tuple[float, float] = -60.0
    tilt_max: float | tuple[float, float] = 60.0
    tilt_step: float | tuple[float, float] = 2.0
    ctf: bool = True
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    #: A value, or a (min, max) range drawn uniformly per particle (as are envelope and low-pass).
    amplitude_contrast: float | tuple[float, float] = 0.07
    #: CTF envelope exp(−(k / (σ·k_Nyquist))²): σ as a fraction of Nyquist (smaller = stronger B-factor).
    envelope_sigma: float | tuple[float, float] = ENVELOPE_DEFAULT
    defocus_um: tuple[float, float] = (2.0, 6.0)
    max_shift: float = 1.0
    crowding: tuple[int, int] = (0, 0)
    contour: float = 0.1
    fourier_padding: float = 1.5
    #: Extra Gaussian low-pass of each particle, as the resolution (Å) where it halves the
    #: amplitude (a lower-resolution map or a stronger B-factor); None: none.
    lowpass_angstrom: float | tuple[float, float] | None = None
    #: "negative" images dark particles on a bright background, as raw tomograms show them.
    contrast: str = "positive"
    #: Share of the noise variance given to a structured 1/f (pink) background beside the
    #: reconstructed white noise, in [0, 1).
    background: float = 0.0
    #: Residual misalignment of the tilt series: each projection shifted by a random offset
    #: (voxels, standard deviation per axis) before back-projection; tilt-series route only.
    alignment_jitter: float | tuple[float, float] = 0.0
    #: The pixel size (Å) the particle is imaged at before it is resampled to ``voxel_size``, as a
    #: user's data taken at another magnification are; None: imaged at ``voxel_size``.
    acquisition_voxel_size: float | tuple[float, float] | None = None

    def __post_init__(self) -> None:
        problems = []
        if not MIN_BOX <= self.box <= MAX_BOX or self.box % 2:
            problems.append(("box", f"box must be an even number from {MIN_BOX} to {MAX_BOX}, got {self.box}"))
        if not MIN_VOXEL_SIZE <= self.voxel_size <= MAX_VOXEL_SIZE:
            problems.append(("voxel_size", f"voxel_size must be {MIN_VOXEL_SIZE:g}–{MAX_VOXEL_SIZE:g} Å, got "
                                           f"{self.voxel_size}"))
        if self.route not in ROUTES:
            problems.append(("route", f"route must be one of {', '.join(ROUTES)}, got {self.route!r}"))
        (min_lo, min_hi), (max_lo, max_hi), (step_lo, step_hi) = (_bounds(getattr(self, n)) for n in TILT_SETTINGS)
        if not (-90 < min_lo <= min_hi < max_lo <= max_hi <= 90) or not 0 < step_lo <= step_hi:
            problems.append(("tilt_range", f"tilt_range {self.tilt_min}..{self.tilt_max} step {self.tilt_step} must "
                                           "satisfy -90 < min < max ≤ 90 with a positive step (ranges: low ≤ high, "
                                           "every minimum below every maximum)"))
        elif self.tilt_ranged and step_lo < 0.5:
            problems.append(("tilt_step", f"tilt_step {self.tilt_step}: with tilts drawn per particle, steps are "
                                          "whole degrees; use at least 1"))
        lo, hi = self.defocus_um
        if not 0 < lo <= hi:
            problems.append(("defocus", f"defocus range must be 0 < min ≤ max µm, got {lo}..{hi}"))
        cmin, cmax = self.crowding
        if not 0 <= cmin <= cmax <= 4:
            problems.append(("crowding", f"crowding must lie within 0-4 neighbours, got {cmin}-{cmax}"))
        if not 0 < self.contour < 1:
            problems.append(("contour", f"contour {self.contour} leaves an empty or full mask; use a value in (0, 1)"))
        if not 0 <= self.max_shift <= self.box / 2:  # NaN fails too
            problems.append(("max_shift", f"max_shift must be 0 to half the box ({self.box / 2:g} voxels), got "
                                          f"{self.max_shift}"))
        for name, low, high, text in (("amplitude_contrast", 0.0, 1.0, "in [0, 1)"),
                                      ("envelope_sigma", 0.0, math.inf, "positive"),
                                      ("lowpass_angstrom", 0.0, math.inf, "positive"),
                                      ("alignment_jitter", 0.0, math.inf, "≥ 0 voxels"),
                                      ("acquisition_voxel_size", 0.0, math.inf, "positive (Å)")):
            value = getattr(self, name)
            if value is None:
                continue
            lo, hi = _bounds(value)
            inside = (low <= lo if name in ("amplitude_contrast", "alignment_jitter") else low < lo) and hi < high
            if lo > hi or not inside:
                problems.append((name, f"{name} must be a value or a min-max range with min ≤ max, {text}; "
                                       f"got {value}"))
        if self.contrast not in ("positive", "negative"):
            problems.append(("contrast", f"contrast must be positive or negative, got {self.contrast!r}"))
        if not 0 <= self.background < 1:
            problems.append(("background", f"background must be a share of the noise in [0, 1), got {self.background}"))
        if self.route != "tilt-series" and _bounds(self.alignment_jitter)[1] > 0:
            problems.append(("alignment_jitter", "alignment_jitter shifts the projections of a tilt series "
                                                 "before back-projection; use route tilt-series"))
        if self.route == "direct-fourier" and self.envelope_sigma != ENVELOPE_DEFAULT:
            problems.append(("envelope", "envelope applies to the tilt-series and fourier routes only; the "
                                         "direct-fourier route damps by radiation damage (an exposure filter)"))
        if self.acquisition_voxel_size is not None and _bounds(self.acquisition_voxel_size)[1] > 4 * self.voxel_size:
            problems.append(("acquisition_voxel_size", f"acquisition_voxel_size {self.acquisition_voxel_size} Å is "
                                                       f"over 4× the data set's {self.voxel_size} Å; nothing would be left"))
        if problems:  # every problem at once; the first names the setting the command line shows as its option
            raise SettingError(problems[0][0], "; ".join(text for _, text in problems))

    @property
    def microscope(self) -> Microscope | None:
        if not self.ctf:
            return None
        return Microscope(self.voltage_kv, self.cs_mm, _low(self.amplitude_contrast), _low(self.envelope_sigma))

    def ranged(self) -> dict[str, tuple[float, float]]:
        """The settings drawn per particle: those given as a range with min < max."""
        return {name: value for name in RANGED if isinstance(value := getattr(self, name), tuple)
                and value[0] < value[1]}

    @property
    def tilt_ranged(self) -> bool:
        """Whether the tilt scheme is drawn per particle."""
        return any(name in self.ranged() for name in TILT_SETTINGS)

    @property
    def tilts(self) -> np.ndarray:
        """The tilt angles; when they are drawn per particle, the 1° grid every particle's tilts
        are taken from (see :func:`tilt_weights`)."""
        if not self.tilt_ranged:
            return tilt_angles(_low(self.tilt_min), _low(self.tilt_max), _low(self.tilt_step))
        low, high = round(_bounds(self.tilt_min)[0]), round(_bounds(self.tilt_max)[1])
        return np.arange(low, high + 1, dtype=np.float64)

    @property
    def field(self) -> int:
        return field_size(self.box, self.crowding[1])

    def to_dict(self) -> dict:
        """The settings for the manifest; those added later are left out at their defaults, so a
        data set simulated as before keeps its hash."""
        data = asdict(self)
        for name in LATER_SETTINGS:
            if data[name] == type(self).__dataclass_fields__[name].default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SimulationConfig:
        data = dict(data)
        for key in ("defocus_um", "crowding", *RANGED):
            if isinstance(data.get(key), list):
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
    #: Per-particle draws of the settings given as ranges (``SimulationConfig.ranged``).
    variations: dict[str, np.ndarray] = field(default_factory=dict)

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
    # Drawn from a stream of their own, after everything else: a configuration without ranges
    # simulates exactly the bytes it did before ranges existed.
    extra = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    variations = {name: extra.uniform(lo, hi, size=n) for name, (lo, hi) in sorted(config.ranged().items())}
    if config.tilt_ranged:  # whole degrees, and every particle's full scheme recorded
        for name in TILT_SETTINGS:
            value = variations.get(name, np.full(n, float(_low(getattr(config, name)))))
            variations[name] = np.maximum(np.round(value), 1.0) if name == "tilt_step" else np.round(value)
    if "acquisition_voxel_size" in variations:
        q = ACQUISITION_VOXEL_QUANTUM
        variations["acquisition_voxel_size"] = np.round(variations["acquisition_voxel_size"] / q) * q
    return ParticlePlan(class_index, quaternions, shifts, defocus, noise_seeds, neighbours, variations)


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
        self._imagers: dict[float, TiltSeriesImager | DirectFourierImager] = {}

    def imager(self, voxel_size: float | None = None) -> TiltSeriesImager | DirectFourierImager:
        """The imager of the tilt-series or direct-Fourier route for particles imaged at
        ``voxel_size`` (default: the data set's), built once per size."""
        c = self.config
        voxel = c.voxel_size if voxel_size is None else voxel_size
        if voxel not in self._imagers:
            field, box = self._grid(voxel)
            kind = DirectFourierImager if c.route == "direct-fourier" else TiltSeriesImager
            self._imagers[voxel] = kind(field, box, c.tilts, voxel, c.microscope)
        return self._imagers[voxel]

    def _grid(self, voxel: float) -> tuple[int, int]:
        """(field, box) in voxels of ``voxel`` Å covering the data set's field and box, plus a
        margin of 2 voxels for resampling when ``voxel`` is not the data set's."""
        c = self.config
        if voxel == c.voxel_size:
            return c.field, c.box
        scale = c.voxel_size / voxel
        box = int(2 * math.ceil(c.box * scale / 2)) + 2
        return max(box, int(2 * math.ceil(c.field * scale / 2)) + 2), box

    def simulate(self, plan: ParticlePlan, indices: np.ndarray, with_noise: bool = True) -> SimulatedBatch:
        """Simulate the particles ``indices`` of ``plan``."""
        c = self.config
        indices = np.asarray(indices)
        voxels = plan.variations.get("acquisition_voxel_size")
        if voxels is None and c.acquisition_voxel_size is not None:
            voxels = np.full(len(plan), float(_low(c.acquisition_voxel_size)))
        if voxels is None:
            signal, noise = self._image(plan, indices, c.voxel_size, with_noise)
        else:  # each group of particles imaged at its own pixel size, then resampled to the data set's
            signal = torch.empty((len(indices),) + (c.box,) * 3)
            noise = torch.empty_like(signal) if with_noise else None
            for voxel in np.unique(voxels[indices]):
                rows = np.flatnonzero(voxels[indices] == voxel)
                part_signal, part_noise = self._image(plan, indices[rows], float(voxel), with_noise)
                signal[rows] = resample(part_signal, float(voxel) / c.voxel_size, c.box)
                if noise is not None:
                    noise[rows] = resample(part_noise, float(voxel) / c.voxel_size, c.box)
        seeds = [int(s) for s in plan.noise_seeds[indices]] if with_noise else None
        if noise is not None and c.background > 0:
            noise = unit_variance(noise) * math.sqrt(1 - c.background) + unit_variance(pink_noise(seeds, c.box)) * math.sqrt(c.background)
        if c.contrast == "negative":
            signal = -signal
        if c.route == "direct-fourier":  # its own mask and normalisation (see datasets.direct_fourier)
            mask = blurred_mask(self.particle_density(plan, indices), c.contour)
            return SimulatedBatch(signal.contiguous(), noise, mask.contiguous(), BACKGROUND_RADIUS)
        mask = mask_from_density(self.particle_density(plan, indices), c.contour)
        return SimulatedBatch(signal.contiguous(), noise, mask.contiguous())

    def _image(self, plan: ParticlePlan, indices: np.ndarray, voxel: float,
               with_noise: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Signal and unit-noise response of particles imaged at ``voxel`` Å on that size's grid."""
        c = self.config
        field, box = self._grid(voxel)
        scale = voxel / c.voxel_size
        fields = self.bank.render(plan.class_index[indices], plan.quaternions[indices], plan.shifts_voxels[indices],
                                  field, scale)
        for slot in range(c.crowding[1]):
            rows = [r for r, i in enumerate(indices) if len(plan.neighbours[i]) > slot]
            if not rows:
                break
            picks = [plan.neighbours[indices[r]][slot] for r in rows]
            fields[rows] += self.bank.render(
                np.array([p[0] for p in picks]), np.stack([p[2] for p in picks]), np.stack([p[1] for p in picks]),
                field, scale,
            )
        defocus = torch.from_numpy(plan.defocus_um[indices] * 1e4).to(torch.float32)
        seeds = [int(s) for s in plan.noise_seeds[indices]] if with_noise else None
        particle = self._particle_optics(plan, indices)
        tilts = self._tilt_schemes(plan, indices)
        if c.route in ("tilt-series", "direct-fourier"):  # the routes that image tilt by tilt
            imager = self.imager(voxel)
            weights = None if tilts is None else tilt_weights(imager.tilts, *tilts)
            if c.route == "direct-fourier":
                return imager.image(fields, defocus, seeds, particle, weights)
            return imager.image(fields, defocus, seeds, particle, weights, self._jitter(plan, indices, len(imager.tilts)))
        ranges = (_low(c.tilt_min), _low(c.tilt_max)) if tilts is None else (tilts[0], tilts[1])
        signal = fourier_image(fields, defocus, c.microscope, voxel, ranges, box, c.fourier_padding, particle)
        return signal, (white_noise(seeds, box) if seeds is not None else None)

    def _tilt_schemes(self, plan: ParticlePlan, indices: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """Per-particle (min, max, step) when the tilt scheme is drawn per particle."""
        if not self.config.tilt_ranged:
            return None
        return tuple(plan.variations[name][indices] for name in TILT_SETTINGS)

    def _jitter(self, plan: ParticlePlan, indices: np.ndarray, tilts: int) -> torch.Tensor | None:
        """``(B, T, 2)`` per-tilt (y, u) offsets in voxels, or None without misalignment; drawn
        from each particle's own stream, so batching never changes them."""
        c = self.config
        sigma = plan.variations.get("alignment_jitter")
        if sigma is None:
            if not _low(c.alignment_jitter) > 0:
                return None
            sigma = np.full(len(plan), float(_low(c.alignment_jitter)))
        offsets = [np.random.default_rng(np.random.SeedSequence([int(plan.noise_seeds[i]), 13])).normal(size=(tilts, 2))
                   * sigma[i] for i in indices]
        return torch.from_numpy(np.stack(offsets)).to(torch.float32)

    def _particle_optics(self, plan: ParticlePlan, indices: np.ndarray) -> ParticleOptics | None:
        """Per-particle amplitude contrast, envelope and low-pass, where the config asks for them."""
        c = self.config
        values = {name: torch.from_numpy(plan.variations[name][indices]).to(torch.float32)
                  for name in ParticleOptics.__dataclass_fields__ if name in plan.variations}
        if isinstance(c.lowpass_angstrom, (int, float)) or (
                isinstance(c.lowpass_angstrom, tuple) and "lowpass_angstrom" not in values):
            values["lowpass_angstrom"] = torch.full((len(indices),), float(_low(c.lowpass_angstrom)))
        return ParticleOptics(**values) if values else None

    def particle_density(self, plan: ParticlePlan, indices: np.ndarray) -> torch.Tensor:
        """The noise-free density of the central particles on the box grid (for checks)."""
        central = self.bank.render(plan.class_index[indices], plan.quaternions[indices], plan.shifts_voxels[indices],
                                   self.config.field)
        return crop_centre(central, self.config.box)


def _low(value):
    """A setting's value, or the lower end of a degenerate range."""
    return value[0] if isinstance(value, tuple) else value


def _bounds(value) -> tuple[float, float]:
    """(low, high) of a value or a range."""
    return (value[0], value[1]) if isinstance(value, tuple) else (value, value)


def tilt_weights(tilts: np.ndarray, tilt_min: np.ndarray, tilt_max: np.ndarray, tilt_step: np.ndarray) -> torch.Tensor:
    """``(B, T)``: 1 where grid tilt ``t`` belongs to particle ``b``'s scheme (from its minimum to
    its maximum in its step), else 0; whole degrees, as :func:`make_plan` draws them."""
    grid = np.asarray(tilts)[None, :]
    lo, hi, step = (np.asarray(v, dtype=np.float64)[:, None] for v in (tilt_min, tilt_max, tilt_step))
    offset = grid - lo
    inside = (offset >= -1e-6) & (grid <= hi + 1e-6) & (np.abs(offset - step * np.round(offset / step)) < 1e-6)
    return torch.from_numpy(inside.astype(np.float32))


def resample(volumes: torch.Tensor, scale: float, box: int) -> torch.Tensor:
    """Volumes ``(B, n, n, n)`` with voxels ``scale`` × the target size, trilinearly resampled onto
    the central ``box``³ of the target grid (both centred at (n − 1) / 2), as a user's data at
    another pixel size are rescaled to ours."""
    n = volumes.shape[-1]
    span = (box - 1) / 2.0 / scale / ((n - 1) / 2.0)  # target half-width in normalised input units
    theta = torch.zeros(len(volumes), 3, 4)
    theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = span
    grid = F.affine_grid(theta, [len(volumes), 1, box, box, box], align_corners=True)
    return F.grid_sample(volumes.unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]
