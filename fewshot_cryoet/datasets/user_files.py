"""The user's own files: particle tables and class folders, and volumes mapped onto a model grid.

``fsc predict`` reads supports and queries through this module, and ``fsc import`` (and every
``--dataset`` that names a user source) reads labelled subtomograms through it, so a volume is
resampled, padded or cropped, normalised and inverted the same way whether it is classified or
benchmarked.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.mrc_io import MRC_SUFFIXES, read_volume
from fewshot_cryoet.datasets.templates import resample

PATH_COLUMNS = ("rlnImageName", "rlnSubtomogramName", "path", "file", "filename", "image")
CLASS_COLUMNS = ("class", "label", "fscClass", "rlnClassName", "rlnClassNumber")
VOXEL_SIZE_SETTING = "voxel_size"  # named in the error for files whose header voxel size is 0

# -- input tables ----------------------------------------------------------------------------------
def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".star":
            import starfile

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = starfile.read(path, always_dict=True)
            tables = [t for t in data.values() if isinstance(t, pd.DataFrame)]
            with_paths = [t for t in tables if any(c in t.columns for c in PATH_COLUMNS)]
            if not with_paths:
                raise FscError(f"{path}: no STAR table with an image column ({', '.join(PATH_COLUMNS[:2])})")
            return with_paths[0].reset_index(drop=True)
        return pd.read_csv(path)
    except FscError:
        raise
    except Exception as exc:
        raise FscError(f"{path}: cannot read table ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _column(table: pd.DataFrame, candidates: tuple[str, ...], path: Path, what: str) -> str:
    for name in candidates:
        if name in table.columns:
            return name
    raise FscError(f"{path}: no {what} column; expected one of {', '.join(candidates)}")


def _resolve(base: Path, value, table: Path, row: int) -> Path:
    """A table's path entry, relative to the table's folder. RELION's ``N@stack.mrcs`` names one 2D
    image of a particle stack, not a subtomogram: refused with the row."""
    text = str(value).strip()
    if re.fullmatch(r"\d+@.+", text):
        raise FscError(f"{table}: row {row + 2} names image {text.split('@')[0]} of the stack {text.split('@', 1)[1]}; "
                       "fsc needs one 3D subtomogram per MRC file (extract subtomograms, e.g. RELION's "
                       "pseudo-subtomograms are not supported)")
    p = Path(text)
    return p if p.is_absolute() else base / p


def _readable_folder(folder: Path) -> None:
    if not os.access(folder, os.R_OK | os.X_OK):
        raise FscError(f"{folder}: cannot read the folder (permission denied); check its permissions")


def _mrc_files(folder: Path) -> list[Path]:
    _readable_folder(folder)
    try:
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in MRC_SUFFIXES and p.is_file())
    except OSError as exc:
        raise FscError(f"{folder}: cannot list the folder ({exc.strerror or exc}); check it") from None


@dataclass
class SupportSet:
    paths: list[Path]
    classes: list[str]  # class of each path

    @property
    def class_names(self) -> list[str]:
        return list(dict.fromkeys(self.classes))


def read_support(source: Path) -> SupportSet:
    """A folder with one sub-folder per class holding MRC files, or a CSV/STAR table with a path
    column and a class column (1 to K examples per class)."""
    source = Path(source)
    if source.is_dir():
        _readable_folder(source)
        folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise FscError(f"{source}: expected one sub-folder per class holding MRC files, found none")
        paths, classes = [], []
        for folder in folders:
            files = _mrc_files(folder)
            if not files:
                raise FscError(f"{folder}: class {folder.name!r} has no support example (no MRC file)")
            paths += files
            classes += [folder.name] * len(files)
        return _unique_support(SupportSet(paths, classes), source)
    if not source.exists():
        raise FscError(f"{source}: support not found")
    table = _read_table(source)
    path_column = _column(table, PATH_COLUMNS, source, "path")
    class_column = _column(table, CLASS_COLUMNS, source, "class")
    empty = table[class_column].isna() | (table[class_column].astype(str).str.strip() == "")
    if empty.any():
        raise FscError(f"{source}: rows {', '.join(str(i + 2) for i in np.flatnonzero(empty)[:10])} have no class")
    paths = [_resolve(source.parent, v, source, i) for i, v in enumerate(table[path_column])]
    classes = [str(v) for v in table[class_column]]
    if len(set(classes)) < 2:
        raise FscError(f"{source}: support needs at least 2 classes, found {len(set(classes))}")
    return _unique_support(SupportSet(paths, classes), source)


def _unique_support(support: SupportSet, source: Path) -> SupportSet:
    """Refuse a support file listed twice: in two classes it contradicts itself, in one it
    silently counts as two examples."""
    seen: dict[Path, str] = {}
    for path, class_name in zip(support.paths, support.classes):
        key = Path(os.path.abspath(path))
        if key in seen:
            where = f"classes {seen[key]!r} and {class_name!r}" if seen[key] != class_name else f"class {class_name!r} twice"
            raise FscError(f"{source}: support example {path} is listed in {where}; list each example once")
        seen[key] = class_name
    return support


# -- volume preparation ------------------------------------------------------------------------------
@dataclass
class Geometry:
    """How a file's volume was mapped onto the model grid, to map a segmentation back."""

    shape: tuple[int, int, int]
    voxel_size: float
    resampled_shape: tuple[int, int, int]


@dataclass
class Preparer:
    """Reads a file and maps it onto the model grid: resample to ``voxel_size`` (with the templates'
    resampler: cubic, low-passed first when downsampling), pad/crop to ``box`` around the centre,
    normalise (zero mean, unit variance), optionally invert contrast."""

    box: int
    voxel_size: float
    voxel_override: float | None = None
    invert: bool = False
    warn: Callable[[str], None] = print
    _warned: set = field(default_factory=set)

    def __call__(self, path: Path) -> tuple[np.ndarray, Geometry]:
        volume, voxel = read_volume(path, self.voxel_override, VOXEL_SIZE_SETTING)
        shape = volume.shape
        if abs(voxel - self.voxel_size) > 1e-3 * self.voxel_size:
            volume = resample(volume, voxel, self.voxel_size)
            self._warn_once("resample", f"resampling volumes from {voxel:g} Å to the model's {self.voxel_size:g} Å voxels")
        resampled = volume.shape
        if resampled != (self.box,) * 3:
            self._warn_once("box", f"{path.name} and others: box {_box_text(resampled)} padded/cropped "
                                   f"around the centre to the model's {self.box}³")
            volume = fit_box(volume, (self.box,) * 3)
        volume = volume - volume.mean()
        std = volume.std()
        if not std > 0:
            raise FscError(f"{path}: the volume is constant after resampling; nothing to classify")
        volume = volume / std
        if self.invert:
            volume = -volume
        return volume.astype(np.float32), Geometry(shape, voxel, resampled)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message)


def _box_text(shape) -> str:
    return "×".join(map(str, shape))


def fit_box(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Pad (with the volume's mean) or crop each axis around the centre to ``shape``."""
    out = volume
    for axis, target in enumerate(shape):
        size = out.shape[axis]
        if size > target:
            start = (size - target) // 2
            out = np.take(out, range(start, start + target), axis=axis)
        elif size < target:
            before = (target - size) // 2
            pad = [(0, 0)] * 3
            pad[axis] = (before, target - size - before)
            out = np.pad(out, pad, constant_values=float(volume.mean()))
    return out
