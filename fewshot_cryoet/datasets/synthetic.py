"""Procedurally generated macromolecule-like densities: the embedded default data set.

Each class is an assembly of globular domains (ellipsoids of uniform protein density with edges
softened to the chosen resolution, as a domain looks at 10-30 Å) arranged with cyclic (Cn) or dihedral (Dn) point-group symmetry,
6-30 nm across. Everything about a class follows from its integer seed and is rendered
analytically in Å, so the same class looks the same at any voxel size and any number of
distinct classes can be made without files (also useful as extra training classes for domain
randomisation).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation

from fewshot_cryoet.datasets.templates import Template, prepare_density

MIN_DIAMETER_NM = 6.0
MAX_DIAMETER_NM = 30.0


def _symmetry_operators(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """Pick a point group common among complexes and return its rotation matrices."""
    kind = rng.choice(["C", "D"], p=[0.65, 0.35])
    order = int(rng.choice([1, 2, 3, 4, 5, 6, 7, 8])) if kind == "C" else int(rng.integers(2, 7))
    about_z = [Rotation.from_rotvec([0.0, 0.0, 2 * math.pi * k / order]) for k in range(order)]
    ops = list(about_z)
    if kind == "D":
        flip = Rotation.from_rotvec([math.pi, 0.0, 0.0])
        ops += [flip * r for r in about_z]
    return f"{kind}{order}", np.stack([r.as_matrix() for r in ops])


def synthetic_blobs(seed: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(symmetry, centres_A, shapes_A2, weights)`` of every domain of class ``seed``.

    Coordinates are (x, y, z) in Å around the origin; ``shapes`` are the ellipsoids' matrices
    O·diag(semi-axes²)·Oᵀ; the assembly is scaled so its diameter is drawn log-uniformly from
    6-30 nm.
    """
    rng = np.random.default_rng([seed, 20201015])
    symmetry, ops = _symmetry_operators(rng)
    n_domains = int(rng.integers(1, 5))
    # Asymmetric unit in units of the final radius: domains off the symmetry axis, varied sizes.
    radial = rng.uniform(0.15, 0.7, n_domains) * (1.0 if len(ops) > 1 else 0.5)
    phase = rng.uniform(0, 2 * math.pi, n_domains)
    height = rng.uniform(-0.5, 0.5, n_domains) * (0.6 if symmetry.startswith("D") else 1.0)
    if symmetry.startswith("D"):
        height = np.abs(height) + 0.1  # keep the unit above the 2-fold plane
    centres = np.stack([radial * np.cos(phase), radial * np.sin(phase), height], axis=1)
    sizes = rng.uniform(0.2, 0.45, (n_domains, 3))  # semi-axes, anisotropic
    orientations = Rotation.random(n_domains, random_state=rng).as_matrix()
    covs = np.einsum("nij,nj,nkj->nik", orientations, sizes**2, orientations)
    weights = rng.uniform(0.7, 1.0, n_domains)  # domain densities differ a little (RNA, lipid…)

    all_centres = np.einsum("oij,nj->oni", ops, centres).reshape(-1, 3)
    all_covs = np.einsum("oij,njk,olk->onil", ops, covs, ops).reshape(-1, 3, 3)
    all_weights = np.tile(weights, len(ops))

    # Scale so the assembly's outer surface spans the drawn diameter.
    reach = np.sqrt(np.linalg.eigvalsh(all_covs).max(axis=1))
    current_radius = float((np.linalg.norm(all_centres, axis=1) + reach).max())
    diameter_a = 10.0 * math.exp(rng.uniform(math.log(MIN_DIAMETER_NM), math.log(MAX_DIAMETER_NM)))
    scale = (diameter_a / 2) / current_radius
    return symmetry, all_centres * scale, all_covs * scale**2, all_weights


def render_blobs(
    centres: np.ndarray, shapes: np.ndarray, weights: np.ndarray, voxel_size: float, resolution: float
) -> np.ndarray:
    """Union of soft-edged uniform ellipsoids on a ``(z, y, x)`` grid.

    Each ellipsoid's edge is an error function whose width is the Gaussian blur of resolution R
    (B = 4R², σ = √(B / 8π²)), so the map is band-limited like a map at that resolution but keeps
    the flat interior of real protein density. Overlapping domains take the maximum, not the sum.
    """
    from scipy.special import erfc

    sigma = math.sqrt(4 * resolution**2 / (8 * math.pi**2))
    reach = float(np.sqrt(np.linalg.eigvalsh(shapes).max())) + 4 * sigma
    half = float(np.abs(centres).max()) + reach
    n = int(2 * math.ceil(half / voxel_size) + 2)
    axis = (np.arange(n) - (n - 1) / 2.0) * voxel_size
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    points = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    density = np.zeros(len(points))
    for centre, shape, weight in zip(centres, shapes, weights):
        d = points - centre
        rho = np.sqrt(np.einsum("pi,ij,pj->p", d, np.linalg.inv(shape), d))
        mean_axis = float(np.linalg.det(shape) ** (1 / 6))
        edge = 0.5 * erfc((rho - 1.0) * mean_axis / (math.sqrt(2) * sigma))
        density = np.maximum(density, weight * edge)
    return density.reshape(n, n, n).astype(np.float32)


def synthetic_name(seed: int) -> str:
    """The class name of the synthetic class fixed by ``seed`` (``syn007``)."""
    return f"syn{seed:03d}"


def synthetic_template(seed: int, voxel_size: float = 10.0, resolution: float | None = None) -> Template:
    """The synthetic class fixed by ``seed``, as a template at ``voxel_size`` (Å)."""
    resolution = float(resolution or 2.0 * voxel_size)
    symmetry, centres, shapes, weights = synthetic_blobs(seed)
    density = render_blobs(centres, shapes, weights, voxel_size, resolution)
    name = synthetic_name(seed)
    prepared = prepare_density(density, voxel_size, voxel_size, name)
    return Template(name, prepared, float(voxel_size), f"synthetic:seed={seed},symmetry={symmetry}")


def synthetic_templates(
    n_classes: int, voxel_size: float = 10.0, first_seed: int = 0, resolution: float | None = None
) -> list[Template]:
    """``n_classes`` distinct synthetic classes with seeds ``first_seed, first_seed + 1, ...``."""
    return [synthetic_template(first_seed + i, voxel_size, resolution) for i in range(n_classes)]
