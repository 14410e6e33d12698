"""Template matching's search, shared by ``xcorr`` (training-free) and ``matched`` (learned filter):
the best correlation of a query with a support over an SO(3) grid of rotations and small shifts.

Volumes are binned ``bin``× first (32³ → 16³ at 2). Only voxels inside the box's inscribed sphere
count, so rotating a support never brings its corners into the comparison. Particles are centred
to within a few voxels, so translations are explicit shifts of the query within ±``max_shift``
voxels, not FFT correlations over every translation of the box (thousands of which can never win).
The search runs in two stages: every rotation at zero shift (one matrix product), then every
shift for the ``refine_top`` best rotations of each query-support pair only. Every step is
differentiable (sampling, products, maxima), so a learned method can train through it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fewshot_cryoet.datasets.imaging import centred_radius
from fewshot_cryoet.methods.so3 import rotation_grid


def sphere(size: int, device) -> torch.Tensor:
    """Boolean ``(size,)*3`` mask of the box's inscribed sphere: the voxels every search compares."""
    return centred_radius((size,) * 3, device) <= size / 2


def normalised(rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Rows (…, V) centred and scaled so that the dot product of two rows is their Pearson
    correlation; with ``weights`` (V,), non-negative, the weighted Pearson correlation (each
    voxel's deviation counted ``weight`` times, about the weighted mean)."""
    if weights is None:
        rows = rows - rows.mean(dim=-1, keepdim=True)
    else:
        rows = (rows - (rows * weights).sum(dim=-1, keepdim=True) / weights.sum().clamp_min(1e-12)) * weights.sqrt()
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-8)


class RotationSearch:
    """The rotation grid, the shifts and the two-stage search over them (see the module docstring)."""

    def __init__(self, angular_step: float, max_shift: int, bin: int, refine_top: int) -> None:
        self.rotations = torch.from_numpy(rotation_grid(float(angular_step))).float()
        self.bin, self.refine_top = int(bin), int(refine_top)
        self.reach = int(math.ceil(int(max_shift) / self.bin))  # in binned voxels
        self._grid: torch.Tensor | None = None
        self._grid_key: tuple = ()

    def binned(self, volumes: torch.Tensor, device) -> torch.Tensor:
        """``(n, 1, s, s, s)`` volumes averaged ``bin``× in each axis, as float on ``device``."""
        x = volumes.float().to(device)
        return F.avg_pool3d(x, self.bin) if self.bin > 1 else x

    def _rotation_grid(self, size: int, device) -> torch.Tensor:
        """Sampling points (rotations, masked voxels, 3) for grid_sample: for each rotation R,
        the masked output voxels p map to Rᵀp in the input (normalised coordinates)."""
        key = (size, str(device))
        if self._grid is None or self._grid_key != key:
            mask = sphere(size, device)
            axis = torch.linspace(-1, 1, size, device=device)
            z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
            points = torch.stack([x, y, z], dim=-1)[mask]  # (V, 3) in grid_sample's (x, y, z) order
            self._grid = torch.einsum("rji,vj->rvi", self.rotations.to(device), points)  # Rᵀ p per rotation
            self._grid_key = key
        return self._grid

    def rotated(self, binned: torch.Tensor) -> torch.Tensor:
        """``(n, rotations, masked voxels)``: each binned volume ``(n, 1, s, s, s)`` under every
        rotation of the grid, trilinearly sampled (not normalised)."""
        grid = self._rotation_grid(binned.shape[-1], binned.device)
        n_rot, n_vox, _ = grid.shape
        sampled = F.grid_sample(
            binned, grid.view(1, n_rot, 1, n_vox, 3).expand(len(binned), -1, -1, -1, -1),
            mode="bilinear", padding_mode="zeros", align_corners=True,
        )
        return sampled.view(len(binned), n_rot, n_vox)

    def shifted(self, binned: torch.Tensor) -> torch.Tensor:
        """``(n, shifts, masked voxels)``: each binned volume under every shift within the reach
        (circular, as ``torch.roll``), shift zero in the middle (not normalised)."""
        volumes = binned[:, 0]
        mask = sphere(volumes.shape[-1], volumes.device)
        steps = range(-self.reach, self.reach + 1)
        rows = [torch.roll(volumes, (dz, dy, dx), dims=(1, 2, 3))[:, mask] for dz in steps for dy in steps for dx in steps]
        return torch.stack(rows, dim=1)

    def best(self, queries: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
        """``(Q, S)`` best correlation of each query (``(Q, T, V)``, shifted rows) with each support
        (``(S, R, V)``, rotated rows), both :func:`normalised`."""
        n_support, n_rot, voxels = supports.shape
        n_query, n_shift, _ = queries.shape
        # Stage 1: every rotation at zero shift, one matrix product.
        coarse = (queries[:, n_shift // 2] @ supports.reshape(-1, voxels).T).view(n_query, n_support, n_rot)
        # Stage 2: every shift, for the best few rotations of each query-support pair only.
        top = coarse.detach().topk(min(self.refine_top, n_rot), dim=2).indices  # (Q, S, k)
        # index_select, not supports[arange, top]: the backward of advanced indexing adds the many
        # repeated rows with parallel atomic adds on CPUs, in an order that varies from run to run;
        # index_select's backward (index_add_) adds them in a fixed order, so training repeats bit for bit.
        rows = (torch.arange(n_support, device=supports.device)[None, :, None] * n_rot + top).flatten()
        candidates = supports.reshape(-1, voxels).index_select(0, rows).view(*top.shape, voxels)  # (Q, S, k, V)
        refined = torch.einsum("qtv,qskv->qtsk", queries, candidates)
        return torch.maximum(refined.amax(dim=(1, 3)), coarse.amax(dim=2))


def class_maxima(best: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """``(Q, n_way)``: each class's score is its best support's."""
    labels = support_labels.to(best.device)
    return torch.stack([best[:, labels == c].amax(dim=1) for c in range(n_way)], dim=1)
