"""One base class for every place users' particles come from, and the options they share.

A source lists its particles cheaply (class and provenance, no voxels) and reads one particle at a
time onto the data set's grid, so importing never holds more than one tomogram region in memory.
Kinds of source register through the ``fsc_register_sources`` hook, built-ins included; ``fsc
import`` and every ``--dataset`` that names a user source find the kind by asking each whether it
``accepts`` the path.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fewshot_cryoet.core.errors import FscError, SettingError


@dataclass(frozen=True)
class SourceOptions:
    """How a source is read onto the data set's grid. ``box`` and ``voxel_size`` None: taken from
    the source (the first subtomogram's box and voxel size, or the tomogram's voxel size and 32).
    ``tomograms`` locates tomograms named by coordinate tables; ``class_column`` and ``class_map``
    name a table's class column and map its values (e.g. RELION class numbers) to names."""

    box: int | None = None
    voxel_size: float | None = None
    tomograms: Path | None = None
    class_column: str | None = None
    class_map: Path | None = None
    masks: Path | None = None
    voxel_spacing: float | None = None  # copick: which voxel spacing's tomograms to read
    tomo_type: str | None = None  # copick: which reconstruction
    objects: tuple[str, ...] = ()  # copick: which pickable objects become classes (default: all picked)
    user_id: str | None = None  # copick: whose picks
    segmentation: str | None = None  # copick: the multilabel segmentation whose labels become masks


@dataclass
class SourceParticle:
    """One particle: its class and where it comes from (columns carried into ``labels.csv``)."""

    class_name: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadParticle:
    """A particle on the data set's grid: volume ``(box, box, box)`` float32 as read (not yet
    normalised), its mask (None where the source has none), and whether the tomogram's border
    cut its box (the missing part is padded with the region's mean)."""

    volume: np.ndarray
    mask: np.ndarray | None = None
    padded: bool = False


class ParticleSource(ABC):
    """Base class of every source of user particles (see the module docstring)."""

    #: Registry name, also what ``fsc import --format`` takes.
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: File suffixes of single-file sources (for :meth:`named_like`).
    suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, options: SourceOptions) -> None:
        self.path = Path(path)
        self.options = options

    @classmethod
    @abstractmethod
    def accepts(cls, path: Path, options: SourceOptions) -> bool:
        """Whether ``path`` looks like this kind of source (cheap: names and headers only)."""

    @classmethod
    def named_like(cls, path: Path) -> bool:
        """Whether ``path`` is a file with one of this kind's ``suffixes`` (the cheap first test)."""
        return path.is_file() and path.suffix.lower() in cls.suffixes

    @abstractmethod
    def particles(self) -> list[SourceParticle]:
        """Every particle, in a fixed order (no voxels read)."""

    @abstractmethod
    def grid(self) -> tuple[int, float]:
        """(box, voxel size in Å) the particles are read onto: the options', else the source's own."""

    @abstractmethod
    def read(self, index: int) -> ReadParticle:
        """Particle ``index`` of :meth:`particles` on :meth:`grid`."""

    @abstractmethod
    def input_files(self) -> list[Path]:
        """Every file the particles are read from, for the source's content hash."""

    @property
    def has_masks(self) -> bool:
        return False

    def settings(self) -> dict[str, Any]:
        """What, besides the files, decides the imported voxels (goes into the data set's hash)."""
        box, voxel = self.grid()
        return {"kind": self.name, "box": box, "voxel_size": voxel,
                "class_column": self.options.class_column,
                "class_map": file_digest(self.options.class_map) if self.options.class_map else None}


def file_digest(path: Path, digest_size: int = 16) -> str:
    """BLAKE2b of a file's bytes, streamed (tomograms are large)."""
    digest = hashlib.blake2b(digest_size=digest_size)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_digest(paths: list[Path]) -> str:
    """One hash over several files' names and contents (folders: every file inside, sorted)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(dict.fromkeys(Path(p) for p in paths)):
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            digest.update(member.name.encode())
            digest.update(file_digest(member).encode())
    return digest.hexdigest()


def class_mapper(options: SourceOptions):
    """Maps a table's class values to names: through ``class_map`` (a CSV with columns ``value``
    and ``name``) where given, else the value as text (``3.0`` → ``3``). The map must give every
    value one name, and every name must be usable as a class (:func:`check_class_name`); the
    returned ``name(value, where)`` names ``where`` (the table and particle) when a value has none."""
    mapping = None
    if options.class_map is not None:
        import pandas as pd

        where = f"class_map {options.class_map}"
        try:
            table = pd.read_csv(options.class_map, dtype=str, keep_default_na=False)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise SettingError("class_map", f"{where}: cannot read it ({type(exc).__name__})") from None
        if not {"value", "name"} <= set(table.columns):
            raise SettingError("class_map", f"{where}: needs the columns value and name")
        mapping = {}
        for row, (value, name) in enumerate(zip(table["value"].map(_as_text), table["name"].str.strip()), 2):
            if not value or not name:
                raise SettingError("class_map", f"{where}: line {row} has an empty value or name")
            check_class_name(name, f"{where}: line {row}", "class_map")
            if mapping.get(value, name) != name:
                raise SettingError("class_map", f"{where}: value {value!r} is given two names, {mapping[value]!r} "
                                                f"and {name!r}")
            mapping[value] = name

    def name(value, where: str) -> str:
        text = _as_text(value)
        if not text or text.lower() == "nan":
            raise FscError(f"{where}: has no class (an empty cell)")
        if mapping is None:
            check_class_name(text, where, "class_column")
            return text
        if text not in mapping:
            raise SettingError("class_map", f"class_map {options.class_map}: no name for class value {text!r} ({where})")
        return mapping[text]

    return name


#: Longest class name: it becomes a folder name on export and a column in leaderboards.
MAX_CLASS_NAME = 100


def check_class_name(name: str, where: str, setting: str = "class_column") -> None:
    """A class name becomes file and folder names (``fsc export``), STAR labels and table columns:
    one line of at most :data:`MAX_CLASS_NAME` characters, no path separators or ``.``/``..``."""
    bad = (not name or len(name) > MAX_CLASS_NAME or name in (".", "..") or "/" in name or "\\" in name
           or any(ord(c) < 32 or ord(c) == 127 for c in name))
    if bad:
        raise SettingError(setting, f"{where}: class {name[:40]!r} cannot name a class (1–{MAX_CLASS_NAME} characters, "
                                    "one line, no '/', '\\', '.' or '..')")


def _as_text(value) -> str:
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def open_source(path: str | Path, options: SourceOptions | None = None, kind: str | None = None) -> ParticleSource:
    """The source at ``path``: of the registered ``kind``, or of the first kind that accepts it."""
    from fewshot_cryoet.plugins import get_plugins

    options = options or SourceOptions()
    path = Path(path)
    registry = get_plugins().sources
    if kind is not None:
        if kind not in registry:
            raise SettingError("format", f"format {kind!r}: use one of {', '.join(registry.names())}")
        return registry.get(kind)(path, options)
    if not path.exists():
        raise FscError(f"{path}: not found")
    if not (path.is_file() or path.is_dir()):
        raise FscError(f"{path}: is not a regular file or folder (a device, pipe or socket); give your particles' "
                       "folder or table")
    for name in registry.in_order():
        cls = registry.get(name)
        if cls.accepts(path, options):
            return cls(path, options)
    raise FscError(f"{path}: not a data set folder and not a source fsc can import ("
                   + "; ".join(f"{n}: {registry.get(n).description}" for n in registry.names()) + ")")
