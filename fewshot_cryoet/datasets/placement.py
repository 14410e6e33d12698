"""Where particles go: random rotations, shifts, crowding neighbours, and rendering into a field.

Rotations are drawn from the Haar measure on SO(3) (scipy's ``Rotation.random``, i.e. uniform unit
quaternions; never uniform Euler angles). A rotation R and shift s (Å, (x, y, z)) place a template
so that the field holds ``template(Rᵀ(p − s))``: R maps template coordinates to field coordinates.
Rendering uses torch's trilinear ``grid_sample`` for a whole batch at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from fewshot_cryoet.datasets.templates import Template

#: Gap (voxels) left between the bounding spheres of touching particles.
CONTACT_GAP = 1.0


def random_rotations(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` unit quaternions (x, y, z, w), uniform on SO(3)."""
    return Rotation.random(count, random_state=rng).as_quat()


def random_unit_vectors(count: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(count, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def place_neighbours(
    radius_centre: float,
    radii_candidates: np.ndarray,
    count: int,
    rng: np.random.Generator,
    attempts: int = 50,
) -> list[tuple[int, np.ndarray]]:
    """Choose up to ``count`` neighbours touching the central particle without overlapping it or
    each other (bounding spheres, radii in voxels). Returns ``(candidate index, centre (x, y, z)
    in voxels)`` per placed neighbour; fewer than ``count`` when no free spot is found."""
    placed: list[tuple[int, np.ndarray, float]] = []
    for _ in range(count):
        for _ in range(attempts):
            choice = int(rng.integers(len(radii_candidates)))
            r = float(radii_candidates[choice])
            centre = random_unit_vectors(1, rng)[0] * (radius_centre + r + CONTACT_GAP)
            if all(np.linalg.norm(centre - c) >= r + rc + CONTACT_GAP for _, c, rc in placed):
                placed.append((choice, centre, r))
                break
    return [(i, c) for i, c, _ in placed]


class TemplateBank:
    """Templates stacked in one tensor of equal cubes, ready for batched rendering."""

    def __init__(self, templates: list[Template]) -> None:
        self.templates = templates
        size = max(t.size for t in templates)  # templates are even cubes (see centre_on_mass)
        cubes = [np.pad(t.density, [((size - t.size) // 2,) * 2] * 3) for t in templates]
        self.size = size
        self.volumes = torch.from_numpy(np.stack(cubes)).unsqueeze(1)  # (n, 1, S, S, S)
        self.radii = np.array([t.radius_voxels() for t in templates])

    def render(
        self,
        indices: np.ndarray,
        quaternions: np.ndarray,
        shifts_voxels: np.ndarray,
        field: int,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """Render templates ``indices`` rotated by ``quaternions`` and moved by ``shifts_voxels``
        ((x, y, z), template voxels from the field centre) into fields ``(B, field, field, field)``
        whose voxels are ``scale`` × the templates' (a particle imaged at another pixel size)."""
        rot = torch.from_numpy(Rotation.from_quat(quaternions).as_matrix()).to(torch.float32)
        shift = torch.from_numpy(np.asarray(shifts_voxels, dtype=np.float64)).to(torch.float32)
        # Field point p (voxels from the centre) samples the template at Rᵀ(p − s) + offset;
        # grid_sample wants normalised coordinates, (n − 1) / 2 voxels per unit.
        half_field = (field - 1) / 2.0
        half_bank = (self.size - 1) / 2.0
        rot_t = rot.transpose(1, 2)
        linear = rot_t * (half_field * scale / half_bank)
        translation = -(rot_t @ shift.unsqueeze(-1)).squeeze(-1) / half_bank
        theta = torch.cat([linear, translation.unsqueeze(-1)], dim=2)
        grid = F.affine_grid(theta, [len(indices), 1, field, field, field], align_corners=True)
        volumes = self.volumes[torch.as_tensor(indices)]
        return F.grid_sample(volumes, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


def mask_from_density(density: torch.Tensor, contour: float) -> torch.Tensor:
    """Ground-truth mask: noise-free density above ``contour`` × the template maximum (1)."""
    return density > contour


def field_size(box: int, max_neighbours: int) -> int:
    """Size of the imaged field: the box alone, or twice the box when neighbours crowd in."""
    return box if max_neighbours == 0 else int(2 * math.ceil(box))
