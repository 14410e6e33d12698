"""Build a data set on disk: plan particles, simulate in fixed-size chunks, write atomically.

Chunks have a fixed size so the numbers do not depend on how many workers ran them; each worker
process writes its chunks straight into the memory-mapped output files and sends back only the
measured SNRs. Any error or Ctrl-C removes the partial output.
"""

from __future__ import annotations

import hashlib
import math
import platform
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.spatial.transform import Rotation

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.core.version import __version__
from fewshot_cryoet.datasets.dataset import DatasetWriter, SubtomogramDataset, now_iso, snr_label
from fewshot_cryoet.datasets.simulate import ParticlePlan, SimulationConfig, Simulator, add_noise, make_plan
from fewshot_cryoet.datasets.splits import DEFAULT_FRACTIONS, assign_splits
from fewshot_cryoet.datasets.templates import Template

CHUNK = 16


@dataclass(frozen=True)
class _Job:
    """What a worker needs to simulate chunks into the temporary output files."""

    templates: list[Template]
    config: SimulationConfig
    plan: ParticlePlan
    snrs: list[float]
    masks_path: Path
    volume_paths: dict[float, Path]


_worker_state: dict = {}


def _init_worker(job: _Job, threads: int) -> None:
    torch.set_num_threads(threads)
    _worker_state["job"] = job
    _worker_state["simulator"] = Simulator(job.templates, job.config)
    _worker_state["masks"] = np.load(job.masks_path, mmap_mode="r+")
    _worker_state["volumes"] = {s: np.load(p, mmap_mode="r+") for s, p in job.volume_paths.items()}


def _run_chunk(start: int, stop: int) -> tuple[int, int, dict[float, tuple[np.ndarray, np.ndarray]]]:
    job: _Job = _worker_state["job"]
    simulator: Simulator = _worker_state["simulator"]
    indices = np.arange(start, stop)
    needs_noise = any(not math.isinf(s) for s in job.snrs)
    batch = simulator.simulate(job.plan, indices, with_noise=needs_noise)
    _worker_state["masks"][start:stop] = batch.mask.numpy().astype(np.uint8)
    measured = {}
    for snr in job.snrs:
        noisy = add_noise(batch, snr)
        _worker_state["volumes"][snr][start:stop] = noisy.volumes.numpy()
        measured[snr] = (noisy.snr_measured, noisy.snr_measured_mask)
    return start, stop, measured


#: Most classes one data set may hold, and most particles: beyond them a count was mistyped, and
#: the plan alone (rotations, shifts, seeds per particle) would fill the memory.
MAX_CLASSES = 10_000
MAX_PARTICLES = 5_000_000


def check_size(classes: int, per_class: int, box: int, levels: int, out: Path) -> None:
    """Refuse, before anything is drawn or written, a data set that is too large to mean or to fit:
    more than :data:`MAX_CLASSES` classes or :data:`MAX_PARTICLES` particles, or more bytes (every
    level's volumes and the masks) than the disk holding ``out`` has free."""
    if not 1 <= classes <= MAX_CLASSES:
        raise SettingError("classes", f"classes must be 1 to {MAX_CLASSES:,}, got {classes:,}")
    particles = classes * per_class
    if per_class < 1 or particles > MAX_PARTICLES:
        raise SettingError("per_class", f"per_class {per_class:,} × {classes:,} classes = {particles:,} particles; a "
                                        f"data set holds 1 to {MAX_PARTICLES:,}")
    need = particles * box**3 * (4 * levels + 1)
    place = out.absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    free = shutil.disk_usage(place).free if place.is_dir() else None
    if free is not None and need > free:
        raise SettingError("per_class", f"{particles:,} particles of {box}³ voxels at {levels} SNR level(s) need "
                                        f"{need / 2**30:.1f} GiB, and {place} has {free / 2**30:.1f} GiB free")


def simulate_dataset(
    templates: list[Template],
    out: str | Path,
    snrs: list[float],
    per_class: int = 200,
    config: SimulationConfig | None = None,
    seed: int = 0,
    workers: int = 1,
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    explicit_splits: dict[str, list[str]] | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    extra_manifest: dict | None = None,
) -> SubtomogramDataset:
    """Simulate ``per_class`` particles of every template at every SNR in ``snrs`` into ``out``.

    ``reporter`` receives progress (see ``fewshot_cryoet.core.reporting``); ``workers`` > 1 simulates chunks in
    that many processes (one torch thread each).
    """
    config = config or SimulationConfig()
    if not templates:
        raise FscError("no templates to simulate")
    if not snrs:
        raise SettingError("snr", "give at least one snr level")
    labels = [snr_label(s) for s in snrs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SettingError("snr", f"snr {', '.join(repeated)} given twice; give each level once")
    check_size(len(templates), per_class, config.box, len(snrs), Path(out))
    snrs = sorted(snrs, key=lambda s: -s)
    names = [t.name for t in templates]
    splits = assign_splits(names, seed, split_fractions, explicit_splits)
    simulator = Simulator(templates, config)  # validates templates against the config early
    plan = make_plan(templates, per_class, config, seed)
    n = len(plan)
    writer = DatasetWriter(out, n, config.box, snrs, overwrite)
    job = _Job(templates, config, plan, snrs, writer.tmp / "masks.npy",
               {s: writer.tmp / "volumes" / f"snr_{snr_label(s)}.npy" for s in snrs})
    measured = {s: (np.zeros(n), np.zeros(n)) for s in snrs}
    chunks = [(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]
    task = as_reporter(reporter).task("simulating", total=n)
    pool: ProcessPoolExecutor | None = None
    try:
        if workers <= 1:
            _worker_state.update(job=job, simulator=simulator, masks=writer.masks, volumes=writer.volumes)
            results = (_run_chunk(a, b) for a, b in chunks)
        else:
            pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(job, 1))
            futures = [pool.submit(_run_chunk, a, b) for a, b in chunks]
            results = (f.result() for f in as_completed(futures))
        for start, stop, chunk_measured in results:
            for snr, (box_snr, mask_snr) in chunk_measured.items():
                measured[snr][0][start:stop] = box_snr
                measured[snr][1][start:stop] = mask_snr
            task.advance(stop - start)
        if pool is not None:
            pool.shutdown()
            pool = None
        _worker_state.clear()
        _warn_clipped(writer.masks, plan, names, config, as_reporter(reporter))
        labels = _labels_table(templates, plan, splits, snrs, measured, config)
        manifest = _manifest(templates, config, splits, snrs, per_class, seed, n, extra_manifest)
        path = writer.commit(labels, manifest, overwrite)
    except BaseException:
        if pool is not None:  # stop queued chunks instead of finishing them
            pool.shutdown(wait=True, cancel_futures=True)
        _worker_state.clear()
        writer.abort()
        raise
    return SubtomogramDataset(path)


def _warn_clipped(masks: np.ndarray, plan: ParticlePlan, names: list[str], config: SimulationConfig,
                  reporter: Reporter) -> None:
    """Say which classes have particles cut by the box (mask on a face of the box), and how many:
    a complex larger than the box is imaged and segmented only in part."""
    faces = np.zeros(len(plan), dtype=bool)
    for axis in (1, 2, 3):
        for index in (0, -1):
            faces |= np.take(masks, index, axis=axis).reshape(len(plan), -1).any(axis=1)
    for c, name in enumerate(names):
        of_class = plan.class_index == c
        count = int(faces[of_class].sum())
        if count:
            reporter.log(f"warning: {name}: {count} of {int(of_class.sum())} particles reach the edge of the "
                         f"{config.box}³ box ({config.box * config.voxel_size:g} Å) and are clipped; use a larger --box "
                         "to image them whole")


def _labels_table(
    templates: list[Template],
    plan: ParticlePlan,
    splits: dict[str, str],
    snrs: list[float],
    measured: dict[float, tuple[np.ndarray, np.ndarray]],
    config: SimulationConfig,
) -> pd.DataFrame:
    names = np.array([t.name for t in templates])
    q = plan.quaternions
    euler = Rotation.from_quat(q).as_euler("ZYZ", degrees=True)
    base = pd.DataFrame(
        {
            "particle": np.arange(len(plan)),
            "class": names[plan.class_index],
            "class_index": plan.class_index,
            "split": [splits[n] for n in names[plan.class_index]],
            "quat_x": q[:, 0], "quat_y": q[:, 1], "quat_z": q[:, 2], "quat_w": q[:, 3],
            "euler_zyz_1": euler[:, 0], "euler_zyz_2": euler[:, 1], "euler_zyz_3": euler[:, 2],
            "shift_x_A": plan.shifts_voxels[:, 0] * config.voxel_size,
            "shift_y_A": plan.shifts_voxels[:, 1] * config.voxel_size,
            "shift_z_A": plan.shifts_voxels[:, 2] * config.voxel_size,
            "defocus_um": plan.defocus_um,
            "n_neighbours": [len(nb) for nb in plan.neighbours],
            "neighbours": [";".join(names[i] for i, _, _ in nb) for nb in plan.neighbours],
            **plan.variations,  # per-particle draws of settings given as ranges (none by default)
        }
    )
    tables = []
    for snr in snrs:
        table = base.copy()
        table["snr"] = snr
        table["snr_measured"] = measured[snr][0]
        table["snr_measured_mask"] = measured[snr][1]
        table["volume_file"] = f"volumes/snr_{snr_label(snr)}.npy"
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _manifest(
    templates: list[Template],
    config: SimulationConfig,
    splits: dict[str, str],
    snrs: list[float],
    per_class: int,
    seed: int,
    n: int,
    extra: dict | None,
) -> dict:
    classes = []
    for i, t in enumerate(templates):
        classes.append(
            {
                "name": t.name,
                "index": i,
                "split": splits[t.name],
                "source": t.source,
                "source_sha256": _file_sha256(t.source),
                "extent_angstrom": round(t.extent_angstrom, 2),
                "template_size": t.size,
            }
        )
    return {
        "created": now_iso(),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "seed": seed,
        "particles": n,
        "per_class": per_class,
        "snr_levels": [snr_label(s) for s in snrs],
        "simulation": config.to_dict(),
        "tilt_angles": config.tilts.tolist() if config.route == "tilt-series" else None,
        "field": config.field,
        "classes": classes,
        "splits": {s: [c["name"] for c in classes if c["split"] == s] for s in ("train", "val", "test")},
        **(extra or {}),
    }


def _file_sha256(source: str) -> str | None:
    path = Path(source)
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()
