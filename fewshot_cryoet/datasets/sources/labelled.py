"""Labelled subtomograms: a folder with one sub-folder of MRC files per class, or a table (RELION
STAR of versions 3.0 to 5, or CSV) with an image column and a class column.

Each file is read with its header's voxel size, resampled to the data set's voxel size with the
templates' resampler and padded or cropped around its centre to the box: the same preparation
``fsc predict`` applies (``datasets.user_files``), so a subtomogram means the same in a benchmark
and in a prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.mrc_io import read_volume
from fewshot_cryoet.datasets.sources.base import (
    ParticleSource,
    ReadParticle,
    SourceOptions,
    SourceParticle,
    class_mapper,
)
from fewshot_cryoet.datasets.templates import resample
from fewshot_cryoet.datasets.user_files import (
    CLASS_COLUMNS,
    PATH_COLUMNS,
    _column,
    _read_table,
    _resolve,
    fit_box,
    read_support,
)

#: Header voxel size override, named in errors about files whose header says 0.
VOXEL_OPTION = "source_voxel_size"
#: Table columns naming each particle's mask file.
MASK_COLUMNS = ("fscMaskName", "rlnMaskName", "mask")


def onto_grid(volume: np.ndarray, voxel: float, box: int, voxel_size: float, mask: bool = False) -> np.ndarray:
    """``volume`` at ``voxel`` Å resampled to ``voxel_size`` and fitted to ``box``³ around its centre."""
    if abs(voxel - voxel_size) > 1e-3 * voxel_size:
        volume = resample(volume.astype(np.float32), voxel, voxel_size)
    volume = fit_box(volume, (box,) * 3)
    return (volume > 0.5).astype(np.uint8) if mask else volume.astype(np.float32)


class _FileSource(ParticleSource):
    """Sources whose particles are one MRC file each."""

    def __init__(self, path: Path, options: SourceOptions) -> None:
        super().__init__(path, options)
        self._paths, self._classes = self._list()
        self._grid: tuple[int, float] | None = None

    def _list(self) -> tuple[list[Path], list[str]]:
        raise NotImplementedError

    def particles(self) -> list[SourceParticle]:
        return [SourceParticle(c, {"source_file": str(p)}) for p, c in zip(self._paths, self._classes)]

    def grid(self) -> tuple[int, float]:
        if self._grid is None:
            if not self._paths:
                raise FscError(f"{self.path}: holds no particles")
            first, voxel = read_volume(self._paths[0], None, VOXEL_OPTION)
            self._grid = (self.options.box or max(first.shape), self.options.voxel_size or voxel)
        return self._grid

    def read(self, index: int) -> ReadParticle:
        box, voxel_size = self.grid()
        volume, voxel = read_volume(self._paths[index], None, VOXEL_OPTION)
        mask = None
        if self.has_masks:
            mask_volume, mask_voxel = read_volume(self._mask_path(self._paths[index], index), None, VOXEL_OPTION)
            mask = onto_grid(mask_volume, mask_voxel, box, voxel_size, mask=True)
        return ReadParticle(onto_grid(volume, voxel, box, voxel_size), mask)

    def input_files(self) -> list[Path]:
        files = list(self._paths)
        if self.has_masks:
            files += [self._mask_path(p, i) for i, p in enumerate(self._paths)]
        return files

    @property
    def has_masks(self) -> bool:
        return self.options.masks is not None

    def _mask_path(self, path: Path, index: int) -> Path:
        try:
            relative = path.relative_to(self.path if self.path.is_dir() else self.path.parent)
        except ValueError:
            relative = Path(path.name)
        mask = self.options.masks / relative
        if not mask.exists():
            raise FscError(f"{mask}: mask of {path} not found (masks mirror the particles' layout under {self.options.masks})")
        return mask


class FolderSource(_FileSource):
    name: ClassVar[str] = "folder"
    description: ClassVar[str] = "a folder with one sub-folder of MRC subtomograms per class"

    @classmethod
    def accepts(cls, path: Path, options: SourceOptions) -> bool:
        return path.is_dir() and not (path / "manifest.json").exists() and any(
            p.is_dir() and not p.name.startswith(".") for p in path.iterdir())

    def _list(self) -> tuple[list[Path], list[str]]:
        support = read_support(self.path)
        return support.paths, support.classes


class TableSource(_FileSource):
    name: ClassVar[str] = "table"
    description: ClassVar[str] = ("a RELION STAR (3.0–5) or CSV table with an image column (rlnImageName, path) "
                                  "and a class column (rlnClassNumber, class, or --class-column)")
    suffixes: ClassVar[tuple[str, ...]] = (".star", ".csv")

    @classmethod
    def accepts(cls, path: Path, options: SourceOptions) -> bool:
        if not cls.named_like(path):
            return False
        try:
            table = _read_table(path)
        except FscError:
            return False
        return any(c in table.columns for c in PATH_COLUMNS)

    @property
    def has_masks(self) -> bool:
        return self.options.masks is not None or self._mask_paths is not None

    def _mask_path(self, path: Path, index: int) -> Path:
        """A table's own mask column (``fscMaskName``, as ``fsc export`` writes, or ``rlnMaskName``)
        wins over a mirrored --masks folder."""
        if self._mask_paths is not None:
            return self._mask_paths[index]
        return super()._mask_path(path, index)

    def _list(self) -> tuple[list[Path], list[str]]:
        table = _read_table(self.path)
        mask_column = next((c for c in MASK_COLUMNS if c in table.columns), None)
        self._mask_paths = None if mask_column is None else [
            _resolve(self.path.parent, v, self.path, i) for i, v in enumerate(table[mask_column])]
        path_column = _column(table, PATH_COLUMNS, self.path, "image path")
        class_column = _column(table, (self.options.class_column,) if self.options.class_column else CLASS_COLUMNS,
                               self.path, "class")
        name = class_mapper(self.options)
        paths = [_resolve(self.path.parent, v, self.path, i) for i, v in enumerate(table[path_column])]
        return paths, [name(v, f"{self.path}: particle {i + 1}") for i, v in enumerate(table[class_column])]
