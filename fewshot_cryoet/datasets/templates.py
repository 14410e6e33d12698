"""Density templates: the clean 3D maps that the simulator images.

A :class:`Template` is density ≥ 0 on a cubic ``(z, y, x)`` grid with its centre of mass on the
grid centre ``(n - 1) / 2`` (the rotation centre the simulator uses), scaled to a maximum of 1 so
that relative contours and neighbours from different sources are comparable (the shared maps'
absolute scales differ by 10×). Templates come from MRC maps, from atomic models (PDB / mmCIF,
through gemmi's electron scattering factors) or from the procedural generator in
:mod:`fewshot_cryoet.datasets.synthetic`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.imaging import fft_friendly_size
from fewshot_cryoet.datasets.mrc_io import MRC_SUFFIXES, read_volume, write_volume

ATOMIC_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
#: Densities below this fraction of the maximum are treated as empty space when sizing grids.
SUPPORT_LEVEL = 0.01
#: Contour used to report a molecule's extent (the simulator's default mask contour).
EXTENT_LEVEL = 0.1


@dataclass(frozen=True)
class Template:
    """A centred, max-normalised density map with its voxel size (Å)."""

    name: str
    density: np.ndarray
    voxel_size: float
    source: str

    @property
    def size(self) -> int:
        return int(self.density.shape[0])

    def radius_voxels(self, level: float = SUPPORT_LEVEL) -> float:
        """Largest distance from the centre to a voxel above ``level`` × max."""
        return _radius(self.density, level)

    @property
    def extent_angstrom(self) -> float:
        """Diameter (Å) of the sphere around the centre of mass enclosing the 0.1 × max contour."""
        return 2.0 * _radius(self.density, EXTENT_LEVEL) * self.voxel_size

    def save(self, path: str | Path) -> None:
        write_volume(path, self.density, self.voxel_size)


def _radius(density: np.ndarray, level: float) -> float:
    centre = (np.asarray(density.shape) - 1) / 2.0
    idx = np.argwhere(density > level * float(density.max()))
    if len(idx) == 0:
        return 0.0
    return float(np.sqrt(((idx - centre) ** 2).sum(axis=1)).max())


def prepare_density(
    density: np.ndarray, voxel_size: float, target_voxel_size: float, name: str
) -> np.ndarray:
    """Resample to ``target_voxel_size``, clip negatives, centre on the centre of mass in a cube
    large enough for any rotation, and scale to max 1."""
    density = resample(density, voxel_size, target_voxel_size)
    density = np.clip(density, 0.0, None)
    peak = float(density.max())
    if not peak > 0:
        raise FscError(f"{name}: template has no positive density after resampling")
    density = density / peak
    return centre_on_mass(density)


#: Most a grid is resampled by (either way), and the largest result: beyond these one of the two
#: voxel sizes is wrong, and the low-pass or the new grid alone would run for minutes or fill memory.
MAX_RESAMPLING = 64.0
MAX_RESAMPLED_VOXELS = 512**3


def resample(density: np.ndarray, voxel_size: float, target_voxel_size: float) -> np.ndarray:
    """Resample a map to another voxel size.

    Downsampling first low-passes with a Gaussian of σ = 0.5 × the size ratio (in source
    voxels) so the coarser grid does not alias; cubic splines do the interpolation.
    """
    ratio = target_voxel_size / voxel_size
    if abs(ratio - 1.0) < 1e-6:
        return density.astype(np.float32, copy=True)
    shape = [max(1, round(n / ratio)) for n in density.shape]
    if not 1 / MAX_RESAMPLING <= ratio <= MAX_RESAMPLING or math.prod(shape) > MAX_RESAMPLED_VOXELS:
        raise FscError(f"resampling {voxel_size:g} Å voxels to {target_voxel_size:g} Å changes the grid {ratio:.3g}-fold "
                       f"({'×'.join(map(str, density.shape))} → {'×'.join(map(str, shape))} voxels); give the real "
                       "voxel size of the input (one of the two is wrong)")
    work = density.astype(np.float64)
    if ratio > 1.0:
        work = ndimage.gaussian_filter(work, sigma=0.5 * ratio, mode="constant")
    out = ndimage.zoom(work, 1.0 / ratio, order=3, mode="grid-constant", grid_mode=True)
    return out.astype(np.float32)


def centre_on_mass(density: np.ndarray) -> np.ndarray:
    """Shift density so its centre of mass sits on the centre of an even cube that holds every
    voxel above ``SUPPORT_LEVEL`` of the maximum with a 2-voxel margin."""
    weights = np.clip(density, 0.0, None)
    com = np.asarray(ndimage.center_of_mass(weights))
    idx = np.argwhere(weights > SUPPORT_LEVEL * weights.max())
    radius = float(np.sqrt(((idx - com) ** 2).sum(axis=1)).max())
    size = int(2 * math.ceil(radius + 2))
    centre = (size - 1) / 2.0
    # Place the input into the cube, then shift by the sub-voxel remainder.
    cube = np.zeros((size, size, size), dtype=np.float64)
    offset = np.round(centre - com).astype(int)
    src_lo = np.maximum(0, -offset)
    dst_lo = np.maximum(0, offset)
    span = np.minimum(np.asarray(density.shape) - src_lo, size - dst_lo)
    cube[
        dst_lo[0] : dst_lo[0] + span[0],
        dst_lo[1] : dst_lo[1] + span[1],
        dst_lo[2] : dst_lo[2] + span[2],
    ] = weights[
        src_lo[0] : src_lo[0] + span[0],
        src_lo[1] : src_lo[1] + span[1],
        src_lo[2] : src_lo[2] + span[2],
    ]
    residual = centre - (com + offset)
    if np.abs(residual).max() > 1e-6:
        cube = ndimage.shift(cube, residual, order=3, mode="constant")
    cube = np.clip(cube, 0.0, None)
    return (cube / cube.max()).astype(np.float32)


def template_from_map(
    path: str | Path,
    target_voxel_size: float,
    voxel_size_override: float | None = None,
    name: str | None = None,
) -> Template:
    """Load a density map (MRC) as a template."""
    path = Path(path)
    density, voxel_size = read_volume(path, voxel_size_override)
    if density.max() <= 0:
        raise FscError(f"{path}: map has no positive density (is protein negative? invert it)")
    prepared = prepare_density(density, voxel_size, target_voxel_size, str(path))
    return Template(name or path.stem, prepared, float(target_voxel_size), str(path))


def template_from_atomic_model(
    path: str | Path,
    target_voxel_size: float,
    resolution: float | None = None,
    name: str | None = None,
) -> Template:
    """Compute a template from an atomic model (PDB or mmCIF).

    Atoms are summed with gemmi's electron scattering factors on a fine grid (≤ 2.5 Å, a whole
    fraction of the target voxel size) with an extra Gaussian blur B = 4R² so the map's transform
    falls to 1/e at 1/R (R = ``resolution``, default 2 × voxel size), then binned to the target
    grid: blur plus binning keep the coarse grid free of aliasing.
    """
    import gemmi

    path = Path(path)
    resolution = float(resolution or 2.0 * target_voxel_size)
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise FscError(f"{path}: cannot read atomic model ({str(exc).splitlines()[0]})") from None
    if len(structure) == 0:
        raise FscError(f"{path}: atomic model holds no models")
    structure.setup_entities()  # entity types are needed to tell polymer from ligand and water
    structure.remove_ligands_and_waters()
    structure.remove_hydrogens()
    model = structure[0]
    positions = np.array([atom.pos.tolist() for chain in model for res in chain for atom in res])
    if len(positions) == 0:
        raise FscError(f"{path}: atomic model holds no protein or nucleic-acid atoms")

    binning = max(1, math.ceil(target_voxel_size / 2.5))
    fine = target_voxel_size / binning
    blur_sigma = math.sqrt(4 * resolution**2 / (8 * math.pi**2))
    span = float((positions.max(0) - positions.min(0)).max()) + 2 * 3 * blur_sigma + 4 * fine
    n_coarse = int(math.ceil(span / target_voxel_size)) + 2
    n_coarse += n_coarse % 2
    # gemmi sizes FFT grids to products of 2, 3 and 5; choose a cell where that is exact.
    while fft_friendly_size(n_coarse * binning) != n_coarse * binning:
        n_coarse += 2
    cell = n_coarse * target_voxel_size
    shift = cell / 2 - (positions.max(0) + positions.min(0)) / 2
    for chain in model:
        for res in chain:
            for atom in res:
                atom.pos = gemmi.Position(*(np.array(atom.pos.tolist()) + shift))
    structure.cell = gemmi.UnitCell(cell, cell, cell, 90, 90, 90)
    structure.spacegroup_hm = "P 1"

    calculator = gemmi.DensityCalculatorE()
    calculator.grid.setup_from(structure, fine)
    calculator.blur = 4 * resolution**2
    calculator.put_model_density_on_grid(model)
    grid = np.array(calculator.grid, copy=True)  # gemmi indexes (x, y, z)
    n_fine = grid.shape[0]
    if grid.shape != (n_fine,) * 3 or n_fine != n_coarse * binning:
        raise FscError(f"{path}: unexpected density grid {grid.shape}; report this as a bug")
    density = grid.transpose(2, 1, 0)
    density = density.reshape(n_coarse, binning, n_coarse, binning, n_coarse, binning).mean(
        axis=(1, 3, 5)
    )
    prepared = prepare_density(density, target_voxel_size, target_voxel_size, str(path))
    return Template(name or path.stem, prepared, float(target_voxel_size), str(path))


def load_template(
    path: str | Path,
    target_voxel_size: float,
    voxel_size_override: float | None = None,
    resolution: float | None = None,
) -> Template:
    """Load a map or an atomic model, chosen by file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return template_from_map(path, target_voxel_size, voxel_size_override)
    if suffix in ATOMIC_MODEL_SUFFIXES:
        return template_from_atomic_model(path, target_voxel_size, resolution)
    raise FscError(
        f"{path}: unknown template type '{suffix}'; use MRC maps "
        f"({', '.join(MRC_SUFFIXES)}) or atomic models ({', '.join(ATOMIC_MODEL_SUFFIXES)})"
    )


def find_template_files(paths: list[str | Path]) -> list[Path]:
    """Expand folders into their template files (sorted); keep files as given."""
    found: list[Path] = []
    suffixes = MRC_SUFFIXES + ATOMIC_MODEL_SUFFIXES
    for entry in map(Path, paths):
        if entry.is_dir():
            try:
                files = sorted(p for p in entry.iterdir() if p.suffix.lower() in suffixes)
            except OSError as exc:
                raise FscError(f"{entry}: cannot read the templates folder ({exc.strerror or exc}); "
                               "check its permissions") from None
            if not files:
                raise FscError(f"{entry}: folder holds no template files ({', '.join(suffixes)})")
            found.extend(files)
        elif entry.exists():
            found.append(entry)
        else:
            raise FscError(f"{entry}: no such file or folder")
    names = [p.stem for p in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FscError(
            f"two templates share the class name(s) {', '.join(duplicates)}; give each class one file"
        )
    return found
