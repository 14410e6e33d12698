"""``fsc simulate --scene``: a crowded tomogram with known truth, in the files users bring.

Particles of several classes are placed at random positions (non-overlapping bounding spheres,
some near the border) and Haar-random orientations in a slab (default 256 × 256 × 128 voxels at
10 Å), imaged by the tilt-series route of the subtomogram simulator (ray-sum projections about y,
CTF, white noise per projection pixel, weighted back-projection; ``imaging._projection_matrices``
over the whole slab), and written as:

- ``tomogram.mrc``: the reconstruction at the requested SNR (var signal / var noise over the
  slab), voxel size in the header; ``labels.mrc``: the class label map (0 background, class k is
  label k, the noise-free density above the contour);
- ``particles_relion5.star`` (``rlnTomoName``, ``rlnCenteredCoordinateX/Y/ZAngst``) and
  ``particles_relion4.star`` (``rlnTomoName``, ``rlnCoordinateX/Y/Z`` in voxels), both with
  ``rlnClassNumber``; ``classes.csv`` (``value,name``) maps class numbers to names;
- ``copick/`` plus ``copick.json``: a copick project of the same scene (one run, the tomogram as
  ``wbp`` at the voxel size, picks per object, the label map as a multilabel segmentation).

So every importer of ``fsc import`` can be checked against the same truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.spatial.transform import Rotation

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.datasets.imaging import (
    Microscope,
    _projection_matrices,
    _ramp_filter,
    fft_friendly_size,
    particle_transfer,
    radial_frequency,
)
from fewshot_cryoet.datasets.mrc_io import write_volume
from fewshot_cryoet.datasets.placement import TemplateBank
from fewshot_cryoet.datasets.templates import Template

TOMOGRAM_NAME = "scene"


@dataclass(frozen=True)
class SceneConfig:
    """A scene's size (x, y, z voxels), voxel size, particles, imaging and noise."""

    shape_xyz: tuple[int, int, int] = (256, 256, 128)
    voxel_size: float = 10.0
    particles: int = 120
    snr: float = 0.5
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    tilt_step: float = 2.0
    defocus_um: float = 4.0
    contour: float = 0.1
    seed: int = 0


def place(templates: list[Template], config: SceneConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Random non-overlapping positions (voxels, x y z) and rotations; the bounding spheres may
    reach past the slab's faces, so some particles are cut by the border, as in real tomograms."""
    radii = np.array([t.radius_voxels() for t in templates])
    shape = np.array(config.shape_xyz, dtype=float)
    rows, attempts = [], 0
    while len(rows) < config.particles and attempts < config.particles * 200:
        attempts += 1
        k = int(rng.integers(len(templates)))
        centre = rng.uniform(0, shape)
        if rows:
            others = np.array([[r["x"], r["y"], r["z"]] for r in rows])
            reach = np.array([r["radius"] for r in rows]) + radii[k]
            if np.any(np.linalg.norm(others - centre, axis=1) < reach):
                continue
        rows.append({"class": templates[k].name, "class_number": k + 1, "x": centre[0], "y": centre[1],
                     "z": centre[2], "radius": radii[k]})
    if len(rows) < config.particles:
        raise FscError(f"scene: only {len(rows)} of {config.particles} particles fit without overlap; "
                       "ask for fewer particles or a larger scene")
    table = pd.DataFrame(rows)
    table[["quat_x", "quat_y", "quat_z", "quat_w"]] = Rotation.random(len(table), random_state=rng).as_quat()
    return table


def render(templates: list[Template], table: pd.DataFrame, config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(density, labels) ``(z, y, x)``: rotated templates added at their positions (sub-voxel
    offsets included), and each particle's class label where its density passes the contour."""
    bank = TemplateBank(templates)
    nx, ny, nz = config.shape_xyz
    density = np.zeros((nz, ny, nx), np.float32)
    labels = np.zeros((nz, ny, nx), np.uint8)
    size = bank.size
    # The rendered particle's centre is at index (size − 1) / 2 + shift of its cube; the cube is
    # placed from ⌊position⌋ − size // 2, so this shift puts the centre exactly at the position.
    half = size // 2 - (size - 1) / 2
    for row in table.itertuples():
        whole = np.floor([row.x, row.y, row.z]).astype(int)
        offset = np.array([row.x, row.y, row.z]) - whole + half
        cube = bank.render(np.array([row.class_number - 1]), np.array([[row.quat_x, row.quat_y, row.quat_z, row.quat_w]]),
                           offset[None], size)[0].numpy()
        low = whole[::-1] - size // 2  # z, y, x of the cube's first voxel
        target = tuple(slice(max(lo, 0), min(lo + size, n)) for lo, n in zip(low, (nz, ny, nx)))
        source = tuple(slice(t.start - lo, t.stop - lo) for t, lo in zip(target, low))
        part = cube[source]
        density[target] += part
        labels[target][part > config.contour] = row.class_number
    return density, labels


def image(density: np.ndarray, config: SceneConfig, optics: Microscope | None = None,
          seed: int = 0) -> np.ndarray:
    """The tilt-series route over the whole slab: ray sums about y, −CTF and ramp filter, white
    noise per projection pixel (ramp-filtered), back-projection; noise scaled to ``config.snr``."""
    optics = optics or Microscope()
    nz, ny, nx = density.shape
    tilts = np.arange(config.tilt_min, config.tilt_max + 1e-9, config.tilt_step)
    detector = int(math.ceil(math.hypot(nx, nz))) + 3
    project, backproject = _projection_matrices(nx, nx, tuple(tilts.tolist()), detector, depth=nz)
    columns = torch.from_numpy(density).permute(0, 2, 1).reshape(nz * nx, ny)  # (z·x, y)
    projections = torch.sparse.mm(project, columns).view(len(tilts), detector, ny).permute(0, 2, 1)  # (t, y, u)
    filter_shape = (fft_friendly_size(ny + 16), fft_friendly_size(detector + 16))
    ramp = _ramp_filter(filter_shape[1])
    defocus = torch.tensor([config.defocus_um * 1e4])
    transfer = particle_transfer(radial_frequency(filter_shape, config.voxel_size), defocus, optics,
                                 config.voxel_size, None)[0] * ramp
    signal = torch.fft.irfft2(torch.fft.rfft2(projections, s=filter_shape) * transfer, s=filter_shape)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(tilts), ny, detector), generator=generator)
    noise = torch.fft.irfft2(torch.fft.rfft2(noise, s=filter_shape) * ramp, s=filter_shape)

    def reconstruct(filtered: torch.Tensor) -> torch.Tensor:
        columns = filtered[:, :ny, :detector].permute(0, 2, 1).reshape(len(tilts) * detector, ny)
        return torch.sparse.mm(backproject, columns).view(nz, nx, ny).permute(0, 2, 1)

    signal_volume, noise_volume = reconstruct(signal), reconstruct(noise)
    scale = math.sqrt(float(signal_volume.var()) / (config.snr * float(noise_volume.var())))
    return (signal_volume + scale * noise_volume).numpy().astype(np.float32)


def simulate_scene(templates: list[Template], out: str | Path, config: SceneConfig = SceneConfig(),
                   reporter: Reporter | None = None) -> Path:
    """Write a scene (see the module docstring) into the new folder ``out``; returns it."""
    from fewshot_cryoet.core.outputs import AtomicFolder

    reporter = as_reporter(reporter)
    for t in templates:
        if abs(t.voxel_size - config.voxel_size) > 1e-6:
            raise FscError(f"template {t.name} is at {t.voxel_size:g} Å, the scene at {config.voxel_size:g} Å")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 31]))
    table = place(templates, config, rng)
    reporter.log(f"scene: {len(table)} particles of {len(templates)} classes in {'×'.join(map(str, config.shape_xyz))} "
                 f"voxels at {config.voxel_size:g} Å, SNR {config.snr:g}")
    density, labels = render(templates, table, config)
    tomogram = image(density, config, seed=config.seed)
    with AtomicFolder(Path(out), "scene") as folder:
        write_volume(folder.tmp / "tomogram.mrc", tomogram, config.voxel_size)
        write_volume(folder.tmp / "labels.mrc", labels.astype(np.float32), config.voxel_size)
        _write_tables(folder.tmp, table, templates, config)
        _write_copick(folder.tmp, folder.out.resolve(), tomogram, labels, table, templates, config)
        return folder.commit({"scene": {**config.__dict__, "shape_xyz": list(config.shape_xyz)}})


def _write_tables(folder: Path, table: pd.DataFrame, templates: list[Template], config: SceneConfig) -> None:
    import starfile

    nx, ny, nz = config.shape_xyz
    common = {"rlnTomoName": TOMOGRAM_NAME, "rlnClassNumber": table["class_number"].to_numpy()}
    starfile.write(pd.DataFrame({**common, "rlnCoordinateX": table["x"], "rlnCoordinateY": table["y"],
                                 "rlnCoordinateZ": table["z"]}), folder / "particles_relion4.star")
    centred = {f"rlnCenteredCoordinate{a}Angst": (table[a.lower()] - n / 2) * config.voxel_size
               for a, n in zip("XYZ", (nx, ny, nz))}
    starfile.write(pd.DataFrame({**common, **centred}), folder / "particles_relion5.star")
    pd.DataFrame({"value": range(1, len(templates) + 1), "name": [t.name for t in templates]}).to_csv(
        folder / "classes.csv", index=False)


def _write_copick(folder: Path, final: Path, tomogram: np.ndarray, labels: np.ndarray, table: pd.DataFrame,
                  templates: list[Template], config: SceneConfig) -> None:
    """The same scene as a copick project on the local filesystem (config ``copick.json``),
    written in the partial ``folder`` and pointing at ``final``, where the folder will be."""
    from copick.models import PickableObject
    from copick.ops.open import new_config

    objects = [PickableObject(name=t.name, is_particle=True, label=i + 1, radius=float(t.radius_voxels() * config.voxel_size))
               for i, t in enumerate(templates)]
    root = new_config(str(folder / "copick.json"), str(folder / "copick"), "fsc scene", pickable_objects=objects)
    run = root.new_run(TOMOGRAM_NAME)
    spacing = run.new_voxel_spacing(config.voxel_size)
    spacing.new_tomogram("wbp").from_numpy(tomogram, levels=1)
    for i, t in enumerate(templates):
        mine = table[table["class_number"] == i + 1]
        if len(mine):
            picks = run.new_picks(t.name, session_id="0", user_id="fsc")
            picks.from_numpy(mine[["x", "y", "z"]].to_numpy() * config.voxel_size)
    segmentation = run.new_segmentation(voxel_size=config.voxel_size, name="labels", session_id="0",
                                        is_multilabel=True, user_id="fsc")
    segmentation.from_numpy(labels)
    config_path = folder / "copick.json"  # copick wrote the partial folder's path
    config_path.write_text(config_path.read_text().replace(str(folder / "copick"), str(final / "copick")))
