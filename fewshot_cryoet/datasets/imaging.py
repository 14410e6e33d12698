"""Image formation: CTF, missing wedge, tilt-series projection and weighted back-projection.

All operators are batched torch code. Geometry: beam along z, tilt axis y; a tilt by θ projects
along (x, z) = (sin θ, cos θ) onto the detector coordinate u = x cos θ − z sin θ, so the central
slice of tilt θ holds the frequency direction (k_x, k_z) = (cos θ, −sin θ). The sampled
frequencies therefore form a double cone around k_x, and the missing wedge lies along k_z.

The tilt-series projector and back-projector are sparse matrices (linear interpolation along u),
one the transpose of the other; a projection of a whole batch is then a single sparse-dense
product, which is what makes 60+ tilts per subtomogram affordable on a CPU.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass(frozen=True)
class Microscope:
    """Optics of the CTF. Defaults: 300 kV, Cs 2.7 mm, 7% amplitude contrast, Gaussian envelope
    exp(−(k / (σ·k_Nyquist))²) with σ = 0.4."""

    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    envelope_sigma: float = 0.4


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å."""
    volts = voltage_kv * 1e3
    return 12.2643 / math.sqrt(volts * (1 + 0.978476e-6 * volts))


def ctf(k: torch.Tensor, defocus_angstrom: torch.Tensor, optics: Microscope, voxel_size: float,
        amplitude_contrast: torch.Tensor | None = None, envelope_sigma: torch.Tensor | None = None) -> torch.Tensor:
    """CTF at spatial frequency magnitude ``k`` (1/Å) for underfocus ``defocus_angstrom`` > 0.

    ``defocus_angstrom`` (and per-particle ``amplitude_contrast`` / ``envelope_sigma``, which
    override the microscope's) broadcast against ``k``. CTF(k) = −[√(1−A²)·sin χ + A·cos χ]·E(k),
    χ = π·λ·Δf·k² − (π/2)·Cs·λ³·k⁴: negative at low k, so protein appears dark, as in real data.
    """
    lam = electron_wavelength(optics.voltage_kv)
    cs = optics.cs_mm * 1e7
    k2 = k * k
    chi = math.pi * lam * defocus_angstrom * k2 - 0.5 * math.pi * cs * lam**3 * k2 * k2
    a = optics.amplitude_contrast if amplitude_contrast is None else amplitude_contrast
    root = math.sqrt(1 - a * a) if amplitude_contrast is None else torch.sqrt(1 - a * a)
    sigma = optics.envelope_sigma if envelope_sigma is None else envelope_sigma
    k_nyquist = 0.5 / voxel_size
    envelope = torch.exp(-((k / (sigma * k_nyquist)) ** 2))
    return -(root * torch.sin(chi) + a * torch.cos(chi)) * envelope


@dataclass
class ParticleOptics:
    """Imaging settings drawn per particle from ranges, each ``(B,)`` or None (then the microscope's
    value, or no low-pass): amplitude contrast, CTF envelope σ (fraction of Nyquist) and an extra
    Gaussian low-pass given as the resolution in Å where it halves the amplitude."""

    amplitude_contrast: torch.Tensor | None = None
    envelope_sigma: torch.Tensor | None = None
    lowpass_angstrom: torch.Tensor | None = None


def lowpass(k: torch.Tensor, resolution_angstrom: torch.Tensor | float) -> torch.Tensor:
    """Gaussian low-pass exp(−ln 2·(k·d)²): 1/2 at k = 1/d."""
    return torch.exp(-math.log(2) * (k * resolution_angstrom) ** 2)


def particle_transfer(k: torch.Tensor, defocus_angstrom: torch.Tensor, optics: Microscope | None,
                      voxel_size: float, particle: ParticleOptics | None = None) -> torch.Tensor | None:
    """The per-particle transfer (−CTF, so protein is positive, times any low-pass) at ``k``, or
    None when there is neither CTF nor low-pass. Per-particle values broadcast as ``(B, 1, 1, 1)``."""
    def per_particle(values):
        return None if values is None else values.view(-1, 1, 1, 1)

    particle = particle or ParticleOptics()
    transfer = None
    if optics is not None:
        transfer = -ctf(k, defocus_angstrom.view(-1, 1, 1, 1), optics, voxel_size,
                        per_particle(particle.amplitude_contrast), per_particle(particle.envelope_sigma))
    if particle.lowpass_angstrom is not None:
        attenuation = lowpass(k, per_particle(particle.lowpass_angstrom))
        transfer = attenuation if transfer is None else transfer * attenuation
    return transfer


def ctf_zeros(defocus_angstrom: float, optics: Microscope, k_max: float) -> np.ndarray:
    """Spatial frequencies (1/Å) ≤ ``k_max`` where the CTF (without envelope) is zero."""
    k = torch.linspace(1e-5, k_max, 200001, dtype=torch.float64)
    value = ctf(k, torch.tensor(defocus_angstrom, dtype=torch.float64), Microscope(
        optics.voltage_kv, optics.cs_mm, optics.amplitude_contrast, 1e9), 1.0)
    sign_change = torch.nonzero(torch.sign(value[1:]) != torch.sign(value[:-1])).flatten()
    k0, k1 = k[sign_change], k[sign_change + 1]
    v0, v1 = value[sign_change], value[sign_change + 1]
    return (k0 - v0 * (k1 - k0) / (v1 - v0)).numpy()


def tilt_angles(tilt_min: float, tilt_max: float, tilt_step: float) -> np.ndarray:
    """Tilt angles in degrees, inclusive of both ends when the step divides the range."""
    count = int(math.floor((tilt_max - tilt_min) / tilt_step + 1e-6)) + 1
    return tilt_min + tilt_step * np.arange(count)


def wedge_mask(shape: tuple[int, int, int], tilt_min: float, tilt_max: float, rfft: bool = True) -> torch.Tensor:
    """1 where a frequency (k_z, k_y, k_x) lies in the sampled double cone, 0 in the missing wedge.

    A frequency is sampled when the angle atan2(−k_z, k_x), folded to (−90°, 90°], lies within
    the tilt range (the ``k_y`` axis, tilt axis, is always sampled).
    """
    kz = torch.fft.fftfreq(shape[0]).view(-1, 1, 1)
    kx = (torch.fft.rfftfreq(shape[2]) if rfft else torch.fft.fftfreq(shape[2])).view(1, 1, -1)
    angle = torch.rad2deg(torch.atan2(-kz, kx))
    angle = torch.where(angle > 90, angle - 180, angle)
    angle = torch.where(angle <= -90, angle + 180, angle)
    inside = (angle >= tilt_min - 1e-6) & (angle <= tilt_max + 1e-6)
    on_axis = (kz == 0) & (kx == 0)
    mask = (inside | on_axis).to(torch.float32)
    return mask.expand(shape[0], shape[1], mask.shape[-1]).contiguous()


def radial_frequency(shape: tuple[int, ...], voxel_size: float, rfft_last: bool = True) -> torch.Tensor:
    """|k| in 1/Å on an FFT grid of ``shape`` (last axis halved when ``rfft_last``)."""
    axes = []
    for i, n in enumerate(shape):
        last = i == len(shape) - 1
        f = torch.fft.rfftfreq(n, d=voxel_size) if (last and rfft_last) else torch.fft.fftfreq(n, d=voxel_size)
        view = [1] * len(shape)
        view[i] = -1
        axes.append(f.view(view) ** 2)
    total = axes[0]
    for a in axes[1:]:
        total = total + a
    return torch.sqrt(total)


def centred_radius(shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """Distance in voxels of every grid point from the grid centre ``(n − 1) / 2`` (the centre the
    simulator rotates about), float32 on ``device``."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2 for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))


def fourier_image(
    field: torch.Tensor,
    defocus_angstrom: torch.Tensor,
    optics: Microscope | None,
    voxel_size: float,
    tilt_range: tuple[float, float] | tuple[np.ndarray, np.ndarray],
    box: int,
    padding: float = 1.5,
    particle: ParticleOptics | None = None,
) -> torch.Tensor:
    """Fourier route: F⁻¹[F(v) · CTF(|k|) · W(k)] for a batch of fields ``(B, F, F, F)``;
    ``tilt_range`` is one (min, max) or per-particle arrays of both (one wedge each).

    The field is zero-padded to at least ``padding`` × ``box`` first so the CTF's point spread
    does not wrap around into the box; the result is cropped to ``box`` and made protein-positive.
    """
    size = field.shape[-1]
    padded_size = max(size, int(2 * math.ceil(box * padding / 2)))
    shape = (padded_size,) * 3
    spectrum = torch.fft.rfftn(field, s=shape, dim=(-3, -2, -1))
    low, high = tilt_range
    if np.ndim(low):
        transfer = torch.stack([wedge_mask(shape, float(a), float(b)) for a, b in zip(low, high)])
    else:
        transfer = wedge_mask(shape, low, high)
    particle_part = particle_transfer(radial_frequency(shape, voxel_size), defocus_angstrom, optics, voxel_size,
                                      particle)
    if particle_part is not None:
        transfer = transfer * particle_part  # −CTF: contrast flipped so protein is positive
    image = torch.fft.irfftn(spectrum * transfer, s=shape, dim=(-3, -2, -1))
    return crop_centre(image[..., :size, :size, :size], box)


def crop_centre(volumes: torch.Tensor, box: int) -> torch.Tensor:
    """Central ``box``³ of the last three axes (offset (n − box) // 2, matching the simulator)."""
    n = volumes.shape[-1]
    o = (n - box) // 2
    return volumes[..., o : o + box, o : o + box, o : o + box]


class TiltSeriesImager:
    """Tilt-series route for fields of ``field``³ voxels reconstructed into a central ``box``³.

    ``image(fields, defocus)`` returns the noise-free reconstruction and the reconstruction of
    unit white noise added to every projection pixel after the CTF: the whole pipeline is linear,
    so a subtomogram at any SNR is ``signal + k · noise`` with k set from the measured variances.
    """

    def __init__(
        self,
        field: int,
        box: int,
        tilts_deg: np.ndarray,
        voxel_size: float,
        optics: Microscope | None,
    ) -> None:
        self.field = field
        self.box = box
        self.tilts = np.asarray(tilts_deg, dtype=np.float64)
        self.voxel_size = voxel_size
        self.optics = optics
        self.detector = int(math.ceil(field * math.sqrt(2))) + 3
        self.project_matrix, self.backproject_matrix = _projection_matrices(
            field, box, tuple(self.tilts.tolist()), self.detector
        )
        # Zero padding so neither the CTF's point spread (≲ 6 pixels at 6 µm, 10 Å) nor the
        # ramp's kernel wraps around; sizes rounded to FFT-friendly lengths.
        self._filter_shape = (fft_friendly_size(field + 16), fft_friendly_size(self.detector + 16))
        ramp = _ramp_filter(self._filter_shape[1])
        self._signal_filter = ramp.view(1, 1, 1, -1)
        self._k = radial_frequency(self._filter_shape, voxel_size)
        self._ramp = ramp

    def image(
        self, fields: torch.Tensor, defocus_angstrom: torch.Tensor, noise_seeds: list[int] | None,
        particle: ParticleOptics | None = None, tilt_weights: torch.Tensor | None = None,
        misalignment: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reconstruct ``fields`` ``(B, F, F, F)`` and, when ``noise_seeds`` (one per field) are
        given, the reconstruction of unit white noise added to every projection pixel after the
        CTF. Returns ``(signal, noise_response)``, each ``(B, box, box, box)``.

        ``tilt_weights`` ``(B, T)`` (0 or 1) keeps only each particle's own tilts of the imager's
        grid; ``misalignment`` ``(B, T, 2)`` shifts each projection by (y, u) voxels before
        back-projection, as a residual error of tilt-series alignment does."""
        batch, f = fields.shape[0], self.field
        t, u = len(self.tilts), self.detector
        columns = fields.permute(1, 3, 0, 2).reshape(f * f, batch * f)  # (z·x, b·y)
        projections = torch.sparse.mm(self.project_matrix, columns)  # (t·u, b·y)
        projections = projections.view(t, u, batch, f).permute(2, 0, 3, 1)  # (b, t, y, u)
        # CTF and ramp in one 2D filter; the minus sign flips contrast so protein is positive.
        particle_part = particle_transfer(self._k, defocus_angstrom, self.optics, self.voxel_size, particle)
        transfer = self._signal_filter if particle_part is None else particle_part * self._ramp
        spectrum = torch.fft.rfft2(projections, s=self._filter_shape)
        if misalignment is not None:
            transfer = transfer * self._shift_phase(misalignment)
        filtered = torch.fft.irfft2(spectrum * transfer, s=self._filter_shape)
        lo = (f - self.box) // 2
        filtered = filtered[:, :, lo : lo + self.box, :u]
        if noise_seeds is not None:
            filtered = torch.cat([filtered, self._filtered_noise(noise_seeds)], dim=0)
        if tilt_weights is not None:
            weights = tilt_weights if noise_seeds is None else torch.cat([tilt_weights, tilt_weights])
            filtered = filtered * weights[:, :, None, None]
        volumes = self._backproject(filtered)
        if noise_seeds is None:
            return volumes, None
        return volumes[:batch], volumes[batch:]

    def _shift_phase(self, offsets: torch.Tensor) -> torch.Tensor:
        """``(B, T, Fy, Fu)`` Fourier phase that shifts each projection by its (y, u) offset."""
        ky = torch.fft.fftfreq(self._filter_shape[0]).view(1, 1, -1, 1)
        ku = torch.fft.rfftfreq(self._filter_shape[1]).view(1, 1, 1, -1)
        dy, du = offsets[..., 0, None, None], offsets[..., 1, None, None]
        return torch.polar(torch.ones(()), -2 * math.pi * (ky * dy + ku * du))

    def _filtered_noise(self, seeds: list[int]) -> torch.Tensor:
        """Ramp-filtered unit white noise on the box rows of every projection, drawn directly in
        Fourier space (a white spectrum times the ramp), one generator per particle."""
        n = self._filter_shape[1]
        shape = (len(self.tilts), self.box, n // 2 + 1, 2)
        spectra = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(int(seed))
            spectra.append(torch.randn(shape, generator=generator))
        spectrum = torch.view_as_complex(torch.stack(spectra)) * (self._ramp * math.sqrt(n / 2))
        return torch.fft.irfft(spectrum, n=n, dim=-1)[..., : self.detector]

    def _backproject(self, projections: torch.Tensor) -> torch.Tensor:
        batch, t, rows, u = projections.shape
        columns = projections.permute(1, 3, 0, 2).reshape(t * u, batch * rows)
        volumes = torch.sparse.mm(self.backproject_matrix, columns)  # (z·x, b·y)
        box = self.box
        return volumes.view(box, box, batch, rows).permute(2, 0, 3, 1).contiguous()


def fft_friendly_size(n: int) -> int:
    """Smallest length ≥ n whose prime factors are 2, 3 and 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _ramp_filter(padded_length: int) -> torch.Tensor:
    """|k| ramp along u for weighted back-projection, with a small weight at DC."""
    freqs = torch.fft.rfftfreq(padded_length)
    ramp = freqs.abs().clone()
    ramp[0] = 0.25 / padded_length
    return ramp


def _sparse_csr(indices: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "sparse CSR is beta" notice
        coo = torch.sparse_coo_tensor(indices, values.astype(np.float32), shape, check_invariants=False)
        return coo.coalesce().to_sparse_csr()


@lru_cache(maxsize=8)
def _projection_matrices(
    field: int, box: int, tilts: tuple[float, ...], detector: int, depth: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse (t·u, z·x) projector over the field and (z·x, t·u) back-projector onto the box.
    ``depth``: the z extent of a slab (a tomogram scene, ``field`` wide in x), back-projected
    whole; None for the cubic field of a subtomogram."""
    depth_ = field if depth is None else depth
    zz, xx = np.meshgrid(np.arange(depth_) - (depth_ - 1) / 2.0, np.arange(field) - (field - 1) / 2.0, indexing="ij")
    voxel = np.arange(depth_ * field)
    rows, cols, vals = [], [], []
    for ti, theta in enumerate(np.deg2rad(tilts)):
        u = (xx * math.cos(theta) - zz * math.sin(theta)).ravel() + (detector - 1) / 2.0
        u0 = np.floor(u).astype(np.int64)
        w1 = u - u0
        for offset, weight in ((0, 1.0 - w1), (1, w1)):
            rows.append(ti * detector + u0 + offset)
            cols.append(voxel)
            vals.append(weight)
    rows_a, cols_a, vals_a = (np.concatenate(x) for x in (rows, cols, vals))
    keep = (vals_a > 0) & (rows_a >= 0) & (rows_a < len(tilts) * detector)
    shape = (len(tilts) * detector, depth_ * field)
    forward = _sparse_csr(np.stack([rows_a[keep], cols_a[keep]]), vals_a[keep], shape)
    box_z = box if depth is None else depth_
    lo, lo_z = (field - box) // 2, (depth_ - box_z) // 2
    zi, xi = np.divmod(cols_a[keep], field)
    in_box = (zi >= lo_z) & (zi < lo_z + box_z) & (xi >= lo) & (xi < lo + box)
    box_voxel = (zi[in_box] - lo_z) * box + (xi[in_box] - lo)
    backward = _sparse_csr(
        np.stack([box_voxel, rows_a[keep][in_box]]), vals_a[keep][in_box], (box_z * box, shape[0])
    )
    return forward, backward
