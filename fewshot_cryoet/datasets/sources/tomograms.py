"""Tomograms plus particle coordinates: subtomograms are cut out at the data set's box and voxel size.

Coordinates come from
- RELION STAR: ``rlnCoordinateX/Y/Z`` in tomogram voxels (RELION 3/4 and picking tools), or
  RELION 5's ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram's centre, voxel size/2 being
  the centre as in RELION 5), with ``rlnTomoName`` (or ``rlnMicrographName``) naming the tomogram;
- CSV with columns ``x, y, z`` (voxels) and optionally ``tomogram`` and ``class``;
- IMOD ``model2point`` / Dynamo-style text: whitespace-separated ``x y z`` or ``x y z class`` per
  line; without a class column the file's name is the class (one file per class).
Voxel coordinates count from 0 at the first voxel's centre, x along the tomogram's fastest axis.

Tomograms (``--tomograms``: one MRC file, or a folder holding ``<name>.mrc``) are memory-mapped, so
only the regions around particles are ever read. Each region is resampled from the tomogram
header's voxel size to the data set's, then fitted to the box; a particle whose box crosses the
tomogram's border is padded with its region's mean and counted. Masks, where given (``--masks``:
label volumes named like the tomograms), are the voxels of the particle's class label, the value
of its class column.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.datasets.mrc_io import MAX_VOXEL_SIZE, MIN_VOXEL_SIZE, MRC_SUFFIXES, check_regular_file
from fewshot_cryoet.datasets.sources.base import (
    ParticleSource,
    ReadParticle,
    SourceOptions,
    SourceParticle,
    class_mapper,
)
from fewshot_cryoet.datasets.sources.labelled import onto_grid
from fewshot_cryoet.datasets.user_files import CLASS_COLUMNS

VOXEL_COLUMNS = (("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"), ("x", "y", "z"), ("X", "Y", "Z"))
CENTRED_COLUMNS = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
TOMOGRAM_COLUMNS = ("rlnTomoName", "rlnMicrographName", "tomogram", "tomo", "tomo_name")
TEXT_SUFFIXES = (".txt", ".coords", ".point", ".pts")
#: Subtomograms of this edge (voxels) when neither --box nor the source says.
DEFAULT_BOX = 32


def read_coordinates(path: Path) -> pd.DataFrame:
    """The coordinate table of ``path`` with columns ``x, y, z`` (voxels) or ``x_A, y_A, z_A``
    (RELION 5, centred Å), and ``tomogram`` and ``class`` where the file has them."""
    suffix = path.suffix.lower()
    if suffix == ".star":
        import starfile

        tables = starfile.read(path, always_dict=True)
        frames = [t for t in tables.values() if isinstance(t, pd.DataFrame)]
        table = next((t for t in frames if CENTRED_COLUMNS[0] in t or VOXEL_COLUMNS[0][0] in t), None)
        if table is None:
            raise FscError(f"{path}: no table with rlnCoordinateX/Y/Z or rlnCenteredCoordinateX/Y/ZAngst")
    elif suffix == ".csv":
        table = pd.read_csv(path)
    else:
        try:
            values = np.loadtxt(path, ndmin=2)
        except ValueError as exc:
            raise FscError(f"{path}: not a whitespace table of numbers x y z [class] ({exc})") from None
        if values.shape[1] < 3:
            raise FscError(f"{path}: needs at least 3 columns (x y z), found {values.shape[1]}")
        table = pd.DataFrame(values[:, :3], columns=["x", "y", "z"])
        table["class"] = values[:, 3] if values.shape[1] > 3 else path.stem
    out = pd.DataFrame(index=table.index)
    if CENTRED_COLUMNS[0] in table:
        for axis, column in zip("xyz", CENTRED_COLUMNS):
            out[f"{axis}_A"] = table[column].astype(float)
    else:
        columns = next((c for c in VOXEL_COLUMNS if all(k in table for k in c)), None)
        if columns is None:
            raise FscError(f"{path}: no coordinate columns (rlnCoordinateX/Y/Z, x/y/z or RELION 5 centred Å)")
        for axis, column in zip("xyz", columns):
            out[axis] = table[column].astype(float)
    tomogram = next((c for c in TOMOGRAM_COLUMNS if c in table), None)
    if tomogram is not None:
        out["tomogram"] = table[tomogram].astype(str)
    for column in ("class", *CLASS_COLUMNS):
        if column in table:
            out["class_value"] = table[column]
            break
    return out


#: Largest region cut out of a tomogram for one subtomogram (voxels per edge).
MAX_CUT_OUT = 512


class Tomogram:
    """A memory-mapped MRC tomogram: ``data`` is ``(z, y, x)`` and read only where sliced."""

    def __init__(self, path: Path) -> None:
        import mrcfile

        check_regular_file(path)
        try:
            self._mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except (OSError, ValueError) as exc:
            raise FscError(f"{path}: not a readable MRC tomogram ({exc})") from None
        self.data = self._mrc.data
        if self.data is None or self.data.ndim != 3:
            raise FscError(f"{path}: expected a 3D tomogram")
        self.voxel_size = float(self._mrc.voxel_size.x)
        if not MIN_VOXEL_SIZE <= self.voxel_size <= MAX_VOXEL_SIZE:
            raise SettingError("voxel_size", f"{path}: header voxel size is {self.voxel_size:g} Å; fix the header")


def region(array, centre_zyx: np.ndarray, size: int, fill: float | None = None) -> tuple[np.ndarray, bool]:
    """The ``size``³ region of ``array`` (anything sliceable, e.g. a memory map or a zarr array)
    centred on ``centre_zyx`` (voxels); parts outside are padded with the region's mean (or
    ``fill``), and the flag says whether any were."""
    shape = np.array(array.shape)
    low = np.round(centre_zyx).astype(int) - size // 2
    high = low + size
    inside_low, inside_high = np.maximum(low, 0), np.minimum(high, shape)
    if np.any(inside_high <= inside_low):
        centre = ", ".join(f"{float(c):.1f}" for c in centre_zyx)
        raise FscError(f"particle at voxel (z, y, x) ({centre}) lies outside the tomogram "
                       f"({', '.join(str(int(n)) for n in shape)})")
    part = np.asarray(array[inside_low[0]:inside_high[0], inside_low[1]:inside_high[1],
                            inside_low[2]:inside_high[2]], dtype=np.float32)
    padded = bool(np.any(low < 0) or np.any(high > shape))
    if padded:
        before, after = inside_low - low, high - inside_high
        value = float(part.mean()) if fill is None else fill
        part = np.pad(part, list(zip(before, after)), constant_values=value)
    return part, padded


def cut_out(array, voxel: float, centre_zyx: np.ndarray, box: int, voxel_size: float,
            mask_label: float | None = None) -> tuple[np.ndarray, bool]:
    """A ``box``³ subtomogram at ``voxel_size`` around ``centre_zyx`` of a tomogram at ``voxel``
    Å; with ``mask_label``, the mask of that label in a label volume instead."""
    size = math.ceil(box * voxel_size / voxel) + 2
    if size > MAX_CUT_OUT:
        raise FscError(f"a {box}³ box at {voxel_size:g} Å needs a {size}³ region of a tomogram at {voxel:g} Å (at most "
                       f"{MAX_CUT_OUT}³); one of the two voxel sizes is wrong")
    part, padded = region(array, centre_zyx, size, fill=0.0 if mask_label is not None else None)
    if mask_label is not None:
        part = (part == mask_label).astype(np.float32)
    return onto_grid(part, voxel, box, voxel_size, mask=mask_label is not None), padded


class TomogramSource(ParticleSource):
    name: ClassVar[str] = "tomograms"
    description: ClassVar[str] = ("coordinates (STAR, CSV or x y z text) plus --tomograms; subtomograms are cut out "
                                  "at --box and --voxel-size")
    suffixes: ClassVar[tuple[str, ...]] = (".star", ".csv", *TEXT_SUFFIXES)

    @classmethod
    def accepts(cls, path: Path, options: SourceOptions) -> bool:
        if not cls.named_like(path):
            return False
        try:
            read_coordinates(path)
        except (FscError, ValueError, KeyError, OSError):
            return False
        return True

    def __init__(self, path: Path, options: SourceOptions) -> None:
        super().__init__(path, options)
        if options.tomograms is None:
            raise SettingError("tomograms", f"{path}: coordinates need the tomograms they refer to; give tomograms "
                                            "(--tomograms: an MRC file or a folder of <name>.mrc)")
        self.table = read_coordinates(path)
        self._open: dict[Path, Tomogram] = {}
        self._labels: dict[Path, Tomogram] = {}
        name = class_mapper(options)
        if "class_value" not in self.table:
            raise FscError(f"{path}: no class column (class, rlnClassNumber, ...; --class-column names another)")
        self.table["class"] = [name(v, f"{path}: particle {i + 1}") for i, v in enumerate(self.table["class_value"])]
        self.table["tomogram_file"] = [str(self._tomogram_path(t)) for t in self.table.get(
            "tomogram", pd.Series([None] * len(self.table)))]

    def _tomogram_path(self, name: str | None) -> Path:
        where = self.options.tomograms
        if where.is_file():
            return where
        if name is None:
            raise SettingError("tomograms", f"{self.path}: has no tomogram column, so tomograms must name one MRC file")
        stem = Path(str(name))
        candidates = [where / stem, *(where / (stem.name + s) for s in MRC_SUFFIXES), *(where / (stem.stem + s) for s in MRC_SUFFIXES)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FscError(f"{where}: no tomogram for {name!r} (looked for {', '.join(c.name for c in candidates[:3])})")
        return found

    def _tomogram(self, path: Path, cache: dict) -> Tomogram:
        if path not in cache:
            cache[path] = Tomogram(path)
        return cache[path]

    def particles(self) -> list[SourceParticle]:
        columns = [c for c in ("x", "y", "z", "x_A", "y_A", "z_A", "tomogram_file") if c in self.table]
        return [SourceParticle(row["class"], {c: row[c] for c in columns}) for _, row in self.table.iterrows()]

    def grid(self) -> tuple[int, float]:
        first = self._tomogram(Path(self.table["tomogram_file"].iloc[0]), self._open)
        return self.options.box or DEFAULT_BOX, self.options.voxel_size or first.voxel_size

    def centre_zyx(self, index: int, tomogram: Tomogram) -> np.ndarray:
        row = self.table.iloc[index]
        if "x_A" in self.table:  # RELION 5: Å from the tomogram's centre (size / 2 in voxels)
            size_xyz = np.array(tomogram.data.shape[::-1], dtype=float)
            xyz = np.array([row["x_A"], row["y_A"], row["z_A"]]) / tomogram.voxel_size + size_xyz / 2
        else:
            xyz = np.array([row["x"], row["y"], row["z"]], dtype=float)
        return xyz[::-1]

    def read(self, index: int) -> ReadParticle:
        box, voxel_size = self.grid()
        path = Path(self.table["tomogram_file"].iloc[index])
        tomogram = self._tomogram(path, self._open)
        centre = self.centre_zyx(index, tomogram)
        volume, padded = cut_out(tomogram.data, tomogram.voxel_size, centre, box, voxel_size)
        mask = None
        if self.has_masks:
            labels = self._tomogram(self._mask_path(path), self._labels)
            label = float(self.table["class_value"].iloc[index])
            mask, _ = cut_out(labels.data, labels.voxel_size, centre, box, voxel_size, mask_label=label)
        return ReadParticle(volume, mask, padded)

    @property
    def has_masks(self) -> bool:
        return self.options.masks is not None

    def _mask_path(self, tomogram: Path) -> Path:
        masks = self.options.masks
        path = masks if masks.is_file() else masks / tomogram.name
        if not path.is_file():
            raise FscError(f"{path}: label volume for {tomogram.name} not found")
        return path

    def input_files(self) -> list[Path]:
        files = [self.path, *map(Path, self.table["tomogram_file"].unique())]
        if self.has_masks:
            files += [self._mask_path(Path(t)) for t in self.table["tomogram_file"].unique()]
        return files
