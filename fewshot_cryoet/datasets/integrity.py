"""Cheap integrity checks of a data set folder, run before every benchmark, training or tuning.

A full rehash of every volume (``fsc info --verify``) costs minutes on large data sets, so it is
not run every time. These checks cost well under a second per gigabyte of masks and catch what
silently corrupts results: a manifest edited after simulation (test classes moved into training
inflate scores), a truncated ``.npy`` file, missing label rows, damaged masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.layout import LABELS, MASKS, VOLUMES_DIR, file_blake2b


class SubtomogramDataset(Protocol):
    """What the checks read of a data set (``datasets.dataset.SubtomogramDataset`` has it all);
    a protocol, so the reader can run these checks without the two importing each other."""

    path: Path
    manifest: dict[str, Any]
    splits: dict[str, list[str]]
    content_hash: str
    box: int
    snr_labels: list[str]
    masks: np.ndarray | None
    labels: pd.DataFrame

    def __len__(self) -> int: ...

#: Masks are checked in chunks of this many particles (bounded memory).
MASK_CHUNK = 256


def check_dataset(dataset: SubtomogramDataset) -> None:
    """Raise a one-line :class:`FscError` naming the data set and the problem, or return."""
    _check_manifest_hash(dataset)
    _check_splits(dataset)
    _check_arrays(dataset)
    _check_labels(dataset)


def _check_manifest_hash(dataset: SubtomogramDataset) -> None:
    stored = dataset.manifest.get("content_hash")
    if "files_hash" in dataset.manifest and stored != dataset.content_hash:
        raise FscError(f"{dataset.path}: manifest.json was edited after the data set was written (it hashes to "
                       f"{dataset.content_hash}, not {stored}); re-run fsc simulate instead of editing it")


def _check_splits(dataset: SubtomogramDataset) -> None:
    """Splits name known classes, each class once, and agree with the manifest's class list."""
    classes = {c["name"]: c.get("split") for c in dataset.manifest["classes"]}
    seen: dict[str, str] = {}
    for split, names in dataset.splits.items():
        for name in names:
            if name not in classes:
                raise FscError(f"{dataset.path}: split {split!r} lists class {name!r}, which the data set does not have")
            if name in seen:
                raise FscError(f"{dataset.path}: class {name!r} is in both the {seen[name]} and the {split} split; "
                               "splits must be class-disjoint")
            seen[name] = split
            if classes[name] is not None and classes[name] != split:
                raise FscError(f"{dataset.path}: manifest puts class {name!r} in {split} in 'splits' but in "
                               f"{classes[name]} in 'classes'; re-run fsc simulate instead of editing it")


def _npy_shape(path, option_name: str, dataset: SubtomogramDataset) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` header, after checking the file holds all the data."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(handle)
            offset = handle.tell()
    except FileNotFoundError:
        raise FscError(f"{dataset.path}: {option_name} is missing; the data set is incomplete, re-run fsc simulate") from None
    except (ValueError, OSError, EOFError) as exc:
        raise FscError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]}); re-run fsc simulate") from None
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise FscError(f"{path}: holds {actual:,} bytes, its header promises {expected:,}; the file is truncated "
                       "or damaged, re-run fsc simulate")
    return tuple(shape), dtype


def _check_arrays(dataset: SubtomogramDataset) -> None:
    n, box = len(dataset), dataset.box
    expected = (n, box, box, box)
    recorded = dataset.manifest.get("files", {})
    for relative, kind in [(MASKS, np.uint8)] + [(f"{VOLUMES_DIR}/snr_{label}.npy", np.float32)
                                                 for label in dataset.snr_labels]:
        path = dataset.path / relative
        shape, dtype = _npy_shape(path, relative, dataset)
        if shape != expected or dtype != np.dtype(kind):
            raise FscError(f"{path}: holds {dtype} {shape}, the manifest describes {np.dtype(kind)} {expected}; "
                           "re-run fsc simulate")
        size = recorded.get(relative, {}).get("bytes")
        if size is not None and size != path.stat().st_size:
            raise FscError(f"{path}: is {path.stat().st_size:,} bytes, the manifest recorded {size:,}; re-run fsc simulate")
    masks = dataset.masks
    for start in range(0, n, MASK_CHUNK):
        chunk = np.asarray(masks[start:start + MASK_CHUNK])
        if chunk.size and chunk.max() > 1:
            bad = start + int(np.flatnonzero(chunk.reshape(len(chunk), -1).max(axis=1) > 1)[0])
            raise FscError(f"{dataset.path / MASKS}: mask of particle {bad} holds values other than 0 and 1; "
                           "the file is damaged, re-run fsc simulate")


def _check_labels(dataset: SubtomogramDataset) -> None:
    path = dataset.path / LABELS
    if not path.is_file():
        raise FscError(f"{path}: is missing; the data set is incomplete, re-run fsc simulate")
    stored = dataset.manifest.get("labels_blake2b")
    if stored is not None and file_blake2b(path) != stored:
        raise FscError(f"{path}: changed since the data set was written; re-run fsc simulate instead of editing it")
    try:
        labels = dataset.labels
        counts = labels.groupby("volume_file").size()
        splits = labels.groupby("class")["split"].unique()
    except (KeyError, ValueError) as exc:
        raise FscError(f"{path}: damaged labels table ({exc}); re-run fsc simulate") from None
    for label in dataset.snr_labels:
        rows = int(counts.get(f"volumes/snr_{label}.npy", 0))
        if rows != len(dataset):
            raise FscError(f"{path}: has {rows} rows for SNR {label}, the data set has {len(dataset)} particles; "
                           "rows are missing, re-run fsc simulate")
    manifest_split = {name: split for split, names in dataset.splits.items() for name in names}
    for name, found in splits.items():
        if len(found) != 1 or manifest_split.get(str(name)) != found[0]:
            raise FscError(f"{dataset.path}: manifest puts class {name!r} in {manifest_split.get(str(name))} but its "
                           f"labels say {', '.join(map(str, found))}; the manifest was edited, re-run fsc simulate")
