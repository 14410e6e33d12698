"""``fsc combine``: several data set folders become one, so that a model trains on all their classes.

Why: learned methods generalise to unseen complexes with many training classes (512 synthetic
classes beside a few real maps lifted protonet from 0.856 to 0.947 on unseen maps), and a user's
imported particles are one folder while the synthetic classes are another. Combining works on
finished folders of any origin (simulated, imported, combined):

- **One grid.** Every folder must have the same box and voxel size; a difference is refused naming
  both folders (resample on import with ``fsc import --box/--voxel-size``, or simulate again).
- **Common SNR levels.** The combined set holds the levels every folder has (those that only some
  have are named and left out); none in common is refused naming the two folders. ``levels``
  instead takes one named level of each folder (e.g. an imported folder's ``recorded`` beside a
  simulated ``0.5``) into one level, called ``recorded`` (its SNR is then not one known number)
  unless all the named levels are the same.
- **Classes keep their split.** A class name found in two folders is one class only when both
  describe the same map (same template checksum, or the same synthetic generator seed) with the
  same split; otherwise it is refused naming both folders, because two complexes under one name
  would be scored as one.
- **Hashed and traceable.** Each particle's row keeps its folder (``source``) and its number there
  (``source_particle``); the manifest records every folder's content hash (part of the combined
  hash) and path (not part of it: moving a folder changes nothing).
- **Masks.** Where some folders have no masks (imported data without them), the combined set has
  none, so nothing reports a Dice against empty masks.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.core.version import __version__
from fewshot_cryoet.datasets.dataset import (
    RECORDED,
    DatasetWriter,
    SubtomogramDataset,
    check_output_folder,
    now_iso,
    parse_snr,
    snr_label,
)
from fewshot_cryoet.datasets.layout import VOLUMES_DIR

#: Relative difference of voxel sizes below which two folders share a grid.
VOXEL_TOLERANCE = 1e-4


def combine_datasets(folders: Sequence[str | Path | SubtomogramDataset], out: str | Path, *,
                     levels: Sequence[str] | None = None, overwrite: bool = False,
                     reporter: Reporter | None = None) -> SubtomogramDataset:
    """Write one data set at ``out`` holding every particle of ``folders`` (see the module
    docstring); everything is checked before anything is written."""
    reporter = as_reporter(reporter)
    out = Path(out)
    sources = [f if isinstance(f, SubtomogramDataset) else SubtomogramDataset(f) for f in folders]
    if len(sources) < 2:
        raise FscError("combine needs at least two data set folders")
    seen: dict[str, Path] = {}
    for source in sources:
        if source.content_hash in seen:
            raise FscError(f"{source.path} and {seen[source.content_hash]} are the same data set; give it once")
        seen[source.content_hash] = source.path
        source.check()
    check_output_folder(out, overwrite)
    first = sources[0]
    for other in sources[1:]:
        if other.box != first.box:
            raise FscError(f"{other.path} has {other.box}³ boxes but {first.path} has {first.box}³; combine folders "
                           "of one box size (fsc import --box, or simulate again with --box)")
        if abs(other.voxel_size - first.voxel_size) > VOXEL_TOLERANCE * first.voxel_size:
            raise FscError(f"{other.path} has {other.voxel_size:g} Å voxels but {first.path} has "
                           f"{first.voxel_size:g} Å; combine folders of one voxel size (fsc import --voxel-size, "
                           "or simulate again with --voxel-size)")
    taken = _taken_levels(sources, levels, out, reporter)  # per folder: its levels, in the combined order
    names = list(taken[0]) if levels is None else \
        [taken[0][0] if len({t[0] for t in taken}) == 1 else RECORDED]
    classes = _merged_classes(sources)
    has_masks = all(s.has_masks for s in sources)
    if not has_masks:
        reporter.log(f"{', '.join(str(s.path) for s in sources if not s.has_masks)}: no masks; {out} has none")

    total = sum(len(s) for s in sources)
    writer = DatasetWriter(out, total, first.box, [parse_snr(label) for label in names], overwrite)
    try:
        task = reporter.task(f"combine into {out.name}", total=len(sources))
        tables, offset = [], 0
        for number, source in enumerate(sources):
            for label, array in zip(taken[number], writer.volumes.values()):
                array[offset:offset + len(source)] = source.volumes(label)
            writer.masks[offset:offset + len(source)] = source.masks if has_masks else 0
            own = source.labels["snr"].map(_label)
            table = pd.concat([source.labels[own == label].assign(snr=parse_snr(name), source_snr=label,
                                                                 volume_file=f"{VOLUMES_DIR}/snr_{name}.npy")
                               for label, name in zip(taken[number], names)], ignore_index=True)
            table.insert(1, "source", number)
            table.insert(2, "source_particle", table["particle"])
            table["particle"] = table["particle"] + offset
            tables.append(table)
            offset += len(source)
            task.advance()
        labels = pd.concat(tables, ignore_index=True)
        index = {c["name"]: i for i, c in enumerate(classes)}
        labels["class_index"] = labels["class"].map(index)
        labels["split"] = labels["class"].map({c["name"]: c["split"] for c in classes})
        manifest = {
            "created": now_iso(), "package_version": __version__, "python": platform.python_version(),
            "particles": total, "snr_levels": names, "has_masks": has_masks,
            "simulation": {"box": first.box, "voxel_size": first.voxel_size, "route": "combined"},
            "sources": [{"content_hash": s.content_hash, "particles": len(s), "snr_levels": list(t)}
                        for s, t in zip(sources, taken)],
            "source_path": [str(s.path.resolve()) for s in sources],
            "classes": [dict(c, index=i, particles=int((labels["class"] == c["name"]).sum()) // len(names))
                        for i, c in enumerate(classes)],
            "splits": {split: [c["name"] for c in classes if c["split"] == split] for split in ("train", "val", "test")},
        }
        path = writer.commit(labels, manifest, overwrite)
    except BaseException:
        writer.abort()
        raise
    return SubtomogramDataset(path)


def _taken_levels(sources: list[SubtomogramDataset], levels: Sequence[str] | None, out: Path,
                  reporter) -> list[tuple[str, ...]]:
    """The level labels taken from each folder: those all share (``levels`` None), or the one
    named per folder; a missing or unshared level is refused naming the folders."""
    first = sources[0]
    if levels is not None:
        if len(levels) != len(sources):
            raise SettingError("levels", f"levels: {len(levels)} given for {len(sources)} folders; name one SNR "
                                         "level per folder")
        chosen = []
        for source, level in zip(sources, levels):
            label = snr_label(parse_snr(level))
            if label not in source.snr_labels:
                raise FscError(f"{source.path} has no SNR {label} (it has {', '.join(source.snr_labels)})")
            chosen.append((label,))
        return chosen
    common = [label for label in first.snr_labels if all(label in s.snr_labels for s in sources[1:])]
    if not common:
        other = next(s for s in sources[1:] if not set(s.snr_labels) & set(first.snr_labels))
        raise FscError(f"{first.path} (SNR {', '.join(first.snr_labels)}) and {other.path} (SNR "
                       f"{', '.join(other.snr_labels)}) share no SNR level; combine folders with a level in "
                       "common, or name one level per folder (--levels)")
    dropped = sorted({label for s in sources for label in s.snr_labels} - set(common))
    if dropped:
        reporter.log(f"SNR {', '.join(dropped)}: not in every folder, left out of {out}")
    return [tuple(common)] * len(sources)


def _label(value) -> str:
    """A labels table's SNR value (a number, or text such as "inf") as the level's label."""
    return snr_label(parse_snr(value) if isinstance(value, str) else float(value))


def _merged_classes(sources: list[SubtomogramDataset]) -> list[dict]:
    """Every folder's classes, a name found twice kept once when both describe the same map with
    the same split, and refused naming both folders otherwise."""
    merged: dict[str, tuple[dict, Path]] = {}
    for source in sources:
        for entry in source.manifest["classes"]:
            name = entry["name"]
            kept = {k: v for k, v in entry.items() if k not in ("index", "particles")}
            if name not in merged:
                merged[name] = (kept, source.path)
                continue
            earlier, where = merged[name]
            identity = _identity(entry)
            if identity is None or identity != _identity(earlier):
                raise FscError(f"class {name!r} is in {where} and in {source.path} as different complexes (or "
                               "ones whose maps are not recorded); rename it in one (fsc import --class-map) "
                               "or leave one folder out")
            if earlier["split"] != entry["split"]:
                raise FscError(f"class {name!r} is a {earlier['split']} class in {where} but a {entry['split']} "
                               f"class in {source.path}; a class must be in one split")
    return [entry for entry, _ in merged.values()]


def _identity(entry: dict) -> str | None:
    """What makes two class entries the same complex: the template file's checksum, or the
    synthetic generator's description; None when the folder does not record it (imported data)."""
    if entry.get("source_sha256"):
        return f"sha256:{entry['source_sha256']}"
    source = entry.get("source")
    return source if isinstance(source, str) and source.startswith("synthetic:") else None


__all__ = ["combine_datasets", "VOXEL_TOLERANCE"]
