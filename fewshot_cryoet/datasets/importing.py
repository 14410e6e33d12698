"""``fsc import``: users' particles become a data set every command reads like a simulated one.

Any registered source (class folders, STAR/CSV tables, tomograms with coordinates, copick
projects; ``datasets.sources``) is read one particle at a time onto one grid, normalised as
``fsc predict`` normalises (zero mean, unit variance per subtomogram, optional contrast inversion)
and written as one SNR level labelled ``recorded`` (the noise of real data is not known).

- **Lazy.** Only one particle's region is in memory at a time; tomograms are memory-mapped or read
  by zarr chunk, so a project of many tomograms is never loaded at once.
- **Resumable.** The partial data set is named after what it will hold (source content hash plus
  settings) and survives an interruption; the same command run again continues after the last
  saved particle instead of starting over.
- **Linked and hashed.** The manifest keeps the source's path (not part of the hash: moving the
  source changes nothing) and its content hash plus every setting (part of the hash).
- **Splits.** Class-disjoint, given (``test_classes``, ``val_classes``) or drawn from ``seed``, and
  saved with the data set, as for simulated data.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.outputs import write_json
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.core.version import __version__
from fewshot_cryoet.datasets.dataset import (
    RECORDED,
    DatasetWriter,
    SubtomogramDataset,
    check_output_folder,
    now_iso,
)
from fewshot_cryoet.datasets.sources.base import ParticleSource, files_digest
from fewshot_cryoet.datasets.splits import DEFAULT_FRACTIONS, assign_splits

#: Particles written between two saves of the progress (a resumed import redoes at most these).
SAVE_EVERY = 64
PROGRESS = "import-progress.json"


def import_source(source: ParticleSource, out: str | Path, *, invert: bool = False, seed: int = 0,
                  test_classes: Sequence[str] | None = None, val_classes: Sequence[str] | None = None,
                  split: Sequence[float] = DEFAULT_FRACTIONS, overwrite: bool = False,
                  reporter: Reporter | None = None) -> SubtomogramDataset:
    """Write ``source`` as a data set at ``out`` (see the module docstring); returns it."""
    reporter = as_reporter(reporter)
    out = Path(out)
    check_output_folder(out, overwrite)  # refuse before reading anything large
    particles = source.particles()
    classes = list(dict.fromkeys(sorted(p.class_name for p in particles)))
    if len(classes) < 3:
        raise FscError(f"{source.path}: {len(classes)} class(es) ({', '.join(classes)}); few-shot splits need at "
                       "least 3 (train, validation and test classes)")
    explicit = {k: list(v) for k, v in (("test", test_classes), ("val", val_classes)) if v}
    splits = assign_splits(classes, seed, tuple(split), explicit or None)
    files = source.input_files()
    missing = [str(f) for f in dict.fromkeys(files) if not Path(f).exists()]
    if missing:  # every missing file at once, before any work
        raise FscError(f"{source.path}: {len(missing)} listed file(s) not found: {', '.join(missing[:10])}"
                       + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    box, voxel_size = source.grid()
    reporter.log(f"importing {len(particles)} particles of {len(classes)} classes from {source.path} "
                 f"({source.name}) onto {box}³ at {voxel_size:g} Å; hashing the source first")
    settings = {**source.settings(), "invert": bool(invert), "normalisation": "z-score per subtomogram"}
    source_hash = files_digest(files)
    key = hashlib.blake2b(json.dumps([source_hash, settings, splits, seed], sort_keys=True).encode(),
                          digest_size=6).hexdigest()
    writer = DatasetWriter(out, len(particles), box, [math.nan], overwrite, resume_key=key)
    progress_file = writer.tmp / PROGRESS
    start = json.loads(progress_file.read_text())["done"] if writer.resumed and progress_file.exists() else 0
    padded = np.zeros(len(particles), dtype=bool)
    if start:
        padded[:start] = json.loads(progress_file.read_text())["padded"][:start]
        reporter.log(f"resuming an interrupted import of {out}: {start} of {len(particles)} particles already written")
    volumes, masks = writer.volumes[math.nan], writer.masks
    task = reporter.task(f"import {out.name}", total=len(particles), completed=start)
    done = start
    try:
        for index in range(start, len(particles)):
            try:
                read = source.read(index)
            except FscError as exc:  # every source's error says which particle: its file and number
                if str(exc).startswith(str(source.path)):
                    raise
                raise FscError(f"{source.path}: particle {index + 1}: {exc}") from None
            volume = read.volume - read.volume.mean()
            std = float(volume.std())
            if not std > 0:
                raise FscError(f"{source.path}: particle {index} ({particles[index].provenance}) is constant; "
                               "nothing to learn from it")
            volumes[index] = (-volume if invert else volume) / std
            masks[index] = read.mask if read.mask is not None else 0
            padded[index] = read.padded
            done = index + 1
            task.advance()
            if done % SAVE_EVERY == 0:
                _save_progress(writer, progress_file, done, padded)
    except BaseException:
        _save_progress(writer, progress_file, done, padded)
        reporter.log(f"import stopped after {done} of {len(particles)} particles; run the same command again to resume")
        raise
    if padded.any():
        reporter.log(f"{int(padded.sum())} of {len(particles)} particles lie within half a box of the tomogram's "
                     "border; their boxes were padded with the region's mean")
    labels = _labels(particles, classes, splits, padded)
    manifest = {
        "created": now_iso(), "package_version": __version__, "python": platform.python_version(),
        "seed": seed, "particles": len(particles), "snr_levels": [RECORDED],
        "simulation": {"box": box, "voxel_size": voxel_size, "route": "recorded"},
        "source": {**settings, "content_hash": source_hash}, "source_path": str(source.path.resolve()),
        "has_masks": source.has_masks, "padded_particles": int(padded.sum()),
        "classes": [{"name": c, "index": i, "split": splits[c], "particles": int((labels["class"] == c).sum())}
                    for i, c in enumerate(classes)],
        "splits": {s: [c for c in classes if splits[c] == s] for s in ("train", "val", "test")},
    }
    progress_file.unlink(missing_ok=True)
    path = writer.commit(labels, manifest, overwrite)
    return SubtomogramDataset(path)


def _save_progress(writer: DatasetWriter, path: Path, done: int, padded: np.ndarray) -> None:
    """Flush the arrays, then record how far they are written (in that order, so a crash between
    the two redoes particles instead of trusting unwritten ones)."""
    writer.masks.flush()
    for volume in writer.volumes.values():
        volume.flush()
    write_json(path, {"done": done, "padded": padded[:done].tolist()})


def _labels(particles, classes: list[str], splits: dict[str, str], padded: np.ndarray) -> pd.DataFrame:
    """One row per particle: class, split and provenance (file, or tomogram and coordinates)."""
    index = {c: i for i, c in enumerate(classes)}
    table = pd.DataFrame([{"particle": i, "class": p.class_name, "class_index": index[p.class_name],
                           "split": splits[p.class_name], "padded": bool(padded[i]),
                           **{f"source_{k}" if not k.startswith("source_") else k: v for k, v in p.provenance.items()}}
                          for i, p in enumerate(particles)])
    table["neighbours"] = ""
    table["snr"] = math.nan
    table["snr_measured"] = math.nan
    table["snr_measured_mask"] = math.nan
    table["volume_file"] = f"volumes/snr_{RECORDED}.npy"
    return table
