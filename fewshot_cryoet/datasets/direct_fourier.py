"""The direct-Fourier route: a third imaging model, written apart from the other two, so that the
project can test across simulators (train on one route, test on another; issue 34).

It differs from the tilt-series route (ray sums, CTF with a Gaussian envelope, white noise per
projection, weighted back-projection) and from the Fourier route (3D CTF × wedge, white noise in
the volume) wherever simulators and processing pipelines really differ:

- **Projection:** each tilt is a central slice of the field's 3D spectrum (the Fourier slice
  theorem), sampled by trilinear interpolation on a grid padded 2× so that it interpolates well.
- **Envelope:** no Gaussian envelope; radiation damage instead. Each slice is attenuated by the
  exposure accumulated before it in a dose-symmetric scheme, with the critical exposure of Grant
  & Grigorieff (2015), at :data:`DOSE_PER_TILT` e/Å² per tilt.
- **Detector and noise:** the signal is multiplied by a counting detector's MTF; the noise enters
  every projection and is coloured by the detector's noise transfer, a sinc (so the noise is not
  white, and its colour differs from the signal's attenuation).
- **CTF:** corrected by phase flipping, as tomograms usually are; ``ctf=False`` gives none.
- **Reconstruction:** direct Fourier inversion: slices inserted into a 3D grid with trilinear
  weights, divided by the accumulated weight; no ramp filter, no real-space back-projection.
- **Mask:** the noise-free density blurred to the imaging resolution (Gaussian, one voxel)
  above the contour, instead of the unblurred density above it.
- **Normalisation:** RELION's: mean 0 and standard deviation 1 in the background outside a
  sphere of :data:`BACKGROUND_RADIUS` × half the box, instead of over the whole box.

Geometry is the project's: beam along z, tilt axis y, and the slice of tilt θ holds the frequency
direction (k_x, k_z) = (cos θ, −sin θ), so the missing wedge lies along k_z.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import ndimage

from fewshot_cryoet.datasets.imaging import Microscope, ParticleOptics, electron_wavelength, fft_friendly_size

#: Electron exposure per tilt (e/Å²): 61 tilts make about 180 e/Å², a usual total.
DOSE_PER_TILT = 3.0
#: Critical exposure N_e(k) = a·k^b + c (k in 1/Å), Grant & Grigorieff (2015), eLife 4:e06980.
CRITICAL_EXPOSURE = (0.245, -1.665, 2.81)
#: Background for RELION-style normalisation: outside this fraction of half the box.
BACKGROUND_RADIUS = 0.8
#: Gaussian σ (voxels) that blurs the density before the mask's contour is taken.
MASK_BLUR = 1.0


def dose_symmetric_exposure(tilts: np.ndarray, dose: float = DOSE_PER_TILT) -> np.ndarray:
    """Exposure (e/Å²) received before each tilt when the series starts nearest 0° and alternates
    outwards (positive side first at equal angle), as dose-symmetric schemes do."""
    order = sorted(range(len(tilts)), key=lambda i: (abs(tilts[i]), -tilts[i]))
    exposure = np.empty(len(tilts))
    for rank, i in enumerate(order):
        exposure[i] = rank * dose
    return exposure


def exposure_attenuation(k: torch.Tensor, exposure: torch.Tensor) -> torch.Tensor:
    """Amplitude left at frequency ``k`` (1/Å) after ``exposure`` e/Å²: exp(−N / (2 N_e(k)))."""
    a, b, c = CRITICAL_EXPOSURE
    critical = a * k.clamp_min(1e-6) ** b + c
    return torch.exp(-exposure / (2 * critical))


def detector_transfer(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(signal MTF, noise transfer) of a counting detector at ``q`` = k / k_Nyquist: the pixel's
    sinc for both, and for the signal a further charge-spread term 1 / (1 + (q / 0.7)²)."""
    pixel = torch.sinc(q / 2)
    return pixel / (1 + (q / 0.7) ** 2), pixel


def phase_flipped_ctf(k: torch.Tensor, defocus_angstrom: torch.Tensor, optics: Microscope,
                      amplitude_contrast: torch.Tensor | float) -> torch.Tensor:
    """|CTF| (no envelope): what phase flipping leaves of the transfer, with the contrast made
    positive. The phase of the CTF, χ = π λ Δf k² − (π/2) Cs λ³ k⁴; the transfer sin χ + A′ cos χ
    with A′ = A / √(1 − A²), up to a constant."""
    lam = electron_wavelength(optics.voltage_kv)
    k2 = k * k
    chi = math.pi * lam * defocus_angstrom * k2 - 0.5 * math.pi * optics.cs_mm * 1e7 * lam**3 * k2 * k2
    a = torch.as_tensor(amplitude_contrast, dtype=k.dtype)
    return (torch.sqrt(1 - a * a) * torch.sin(chi) + a * torch.cos(chi)).abs()


class DirectFourierImager:
    """Images fields of ``field``³ voxels into ``box``³ subtomograms by the direct-Fourier route;
    like the other routes it returns the noise-free signal and the response to unit noise, since
    every step is linear (phase flipping multiplies by a fixed sign per frequency).

    Slicing and insertion are one sparse matrix and its transpose (trilinear weights between the
    slice points and the 3D grid), so a whole batch is sliced or inserted in one product."""

    def __init__(self, field: int, box: int, tilts_deg: np.ndarray, voxel_size: float,
                 optics: Microscope | None) -> None:
        self.field, self.box, self.voxel_size, self.optics = field, box, voxel_size, optics
        self.tilts = np.asarray(tilts_deg, dtype=np.float64)
        self.size = p = fft_friendly_size(2 * field)
        m = torch.fft.fftfreq(p, d=1 / p, dtype=torch.float64)  # frequency indices in FFT order
        ky, ku = torch.meshgrid(m, m, indexing="ij")
        theta = torch.from_numpy(np.deg2rad(self.tilts)).view(-1, 1, 1)
        kx, kz = ku * torch.cos(theta), -ku * torch.sin(theta)  # (T, P, P)
        index = torch.stack([kz, ky.expand_as(kx), kx], dim=-1).reshape(-1, 3)
        # (P³, T·P·P): slice points → grid, and its transpose: grid → slice points (interpolation)
        self._insert, self._sample = _trilinear_matrix(index, p)
        self._density = _spmm(self._insert, torch.ones(len(index), 1))  # sampling density per grid point
        k = torch.sqrt(ky**2 + ku**2).to(torch.float32) / (p * voxel_size)  # 1/Å, (P, P), every tilt alike
        self._k = k
        signal_mtf, noise_transfer = detector_transfer(k * 2 * voxel_size)
        exposure = torch.from_numpy(dose_symmetric_exposure(self.tilts)).to(torch.float32).view(-1, 1, 1)
        self._signal_transfer = signal_mtf * exposure_attenuation(k, exposure)  # (T, P, P)
        self._noise_transfer = noise_transfer
        # the field lies at P // 2 − F // 2, so its centre (F − 1) / 2 is at c = P // 2 − ½ (even
        # F): a phase moves it onto the grid origin before slicing (a smooth spectrum interpolates
        # well), and back after reconstruction, with no fftshift
        centre = p // 2 - (0.5 if field % 2 == 0 else 0.0)
        phase = torch.exp(2j * math.pi * centre * m / p).to(torch.complex64)
        self._phase = phase.view(-1, 1, 1) * phase.view(1, -1, 1) * phase.view(1, 1, -1)

    def image(self, fields: torch.Tensor, defocus_angstrom: torch.Tensor, noise_seeds: list[int] | None,
              particle: ParticleOptics | None = None,
              tilt_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(signal, noise_response)`` for fields ``(B, F, F, F)``, each ``(B, box, box, box)``;
        ``tilt_weights`` ``(B, T)`` keeps only each particle's own tilts."""
        batch = fields.shape[0]
        transfer = torch.stack([self._transfer(defocus_angstrom[b], particle, b) for b in range(batch)])
        slices = self._slices(fields) * (self._signal_transfer * transfer.unsqueeze(1))  # (B, T, P, P)
        if noise_seeds is not None:
            # phase flipping multiplies the noise by ±1 per frequency, which leaves white noise
            # white: only the detector colours it
            noise = torch.stack([self._noise(int(seed)) for seed in noise_seeds]) * self._noise_transfer
            slices = torch.cat([slices, noise])
        weights = None
        if tilt_weights is not None:
            weights = tilt_weights.to(torch.float32)
            weights = weights if noise_seeds is None else torch.cat([weights, weights])
        volumes = self._reconstruct(slices, weights)
        return volumes[:batch], (volumes[batch:] if noise_seeds is not None else None)

    def _transfer(self, defocus_angstrom: torch.Tensor, particle: ParticleOptics | None, b: int) -> torch.Tensor:
        """The per-particle part ``(P, P)``: |CTF| after phase flipping (1 without CTF) times any low-pass."""
        transfer = torch.ones_like(self._k)
        if self.optics is not None:
            contrast = self.optics.amplitude_contrast
            if particle is not None and particle.amplitude_contrast is not None:
                contrast = particle.amplitude_contrast[b]
            transfer = phase_flipped_ctf(self._k, defocus_angstrom, self.optics, contrast)
        if particle is not None and particle.lowpass_angstrom is not None:
            transfer = transfer * torch.exp(-math.log(2) * (self._k * particle.lowpass_angstrom[b]) ** 2)
        return transfer

    def _slices(self, fields: torch.Tensor) -> torch.Tensor:
        """The central slices ``(B, T, P, P)`` of each field's centred 3D spectrum."""
        p, f = self.size, self.field
        start = p // 2 - f // 2
        padded = torch.zeros((len(fields), p, p, p), dtype=torch.float32)
        padded[:, start:start + f, start:start + f, start:start + f] = fields
        axes = (-3, -2, -1)
        spectra = (torch.fft.fftn(padded, dim=axes) * self._phase).reshape(len(fields), -1)
        sampled = _spmm(self._sample, torch.cat([spectra.real, spectra.imag]).t())  # (T·P·P, 2B)
        shape = (len(fields), len(self.tilts), p, p)
        return torch.complex(sampled[:, :len(fields)].t().reshape(shape), sampled[:, len(fields):].t().reshape(shape))

    def _noise(self, seed: int) -> torch.Tensor:
        """Unit white noise in every projection pixel, as its centred 2D spectra ``(T, P, P)``."""
        generator = torch.Generator().manual_seed(seed ^ 0xD1F0)
        white = torch.randn((len(self.tilts), self.size, self.size), generator=generator)
        return torch.fft.fft2(white)

    def _reconstruct(self, slices: torch.Tensor, tilt_weights: torch.Tensor | None) -> torch.Tensor:
        """Direct Fourier inversion of ``slices`` ``(B, T, P, P)``, cropped to the box: the slices
        inserted with trilinear weights, divided by the sampling density (at least 1)."""
        p, f, box, count = self.size, self.field, self.box, len(slices)
        if tilt_weights is not None:
            slices = slices * tilt_weights[:, :, None, None]
        values = slices.reshape(count, -1)
        grid = _spmm(self._insert, torch.cat([values.real, values.imag]).t())  # (P³, 2B)
        if tilt_weights is None:
            density = self._density
        else:  # each particle's own tilts sample the grid at their own density
            density = _spmm(self._insert, tilt_weights.repeat_interleave(p * p, dim=1).t())
        density = density.clamp_min(1.0)
        spectra = torch.complex(grid[:, :count] / density, grid[:, count:] / density).t().reshape(count, p, p, p)
        axes = (-3, -2, -1)
        spectra = spectra * self._phase.conj()
        volumes = torch.fft.ifftn(spectra, dim=axes).real
        start = p // 2 - f // 2 + (f - box) // 2
        return volumes[:, start:start + box, start:start + box, start:start + box].contiguous()


def _spmm(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(matrix, dense.contiguous())


def _trilinear_matrix(index: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sparse ``(size³, N)`` matrix of trilinear weights from points at fractional frequency
    ``index`` ``(N, 3)`` as (z, y, x) to the flat grid in FFT order (periodic, so neighbours
    beyond ±Nyquist wrap around)."""
    low = index.floor()
    frac = (index - low).to(torch.float32)
    low = low.long()
    rows, columns, weights = [], [], []
    points = torch.arange(len(index))
    for corner in range(8):
        offset = [(corner >> axis) & 1 for axis in range(3)]
        at = low + torch.tensor(offset)
        w = torch.ones(len(index))
        for axis in range(3):
            w = w * (frac[:, axis] if offset[axis] else 1 - frac[:, axis])
        inside = w > 0
        at = at[inside] % size
        rows.append((at[:, 0] * size + at[:, 1]) * size + at[:, 2])
        columns.append(points[inside])
        weights.append(w[inside])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "sparse is beta" notices
        matrix = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(columns)]), torch.cat(weights),
                                         (size**3, len(index)), check_invariants=False).coalesce()
        return matrix.to_sparse_csr(), matrix.t().coalesce().to_sparse_csr()


def blurred_mask(density: torch.Tensor, contour: float) -> torch.Tensor:
    """This route's ground-truth mask: the density blurred by :data:`MASK_BLUR` voxels, above
    ``contour`` × the template maximum (1)."""
    blurred = ndimage.gaussian_filter(density.numpy(), sigma=(0, MASK_BLUR, MASK_BLUR, MASK_BLUR), mode="constant")
    return torch.from_numpy(blurred) > contour
