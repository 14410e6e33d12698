"""Data sets on disk: lazily loaded, memory-mapped, self-describing, written atomically.

Layout of a data set folder::

    manifest.json          every parameter, seed, classes, splits, package version, content hash
    labels.csv             one row per (particle, SNR level): class, split, rotation, shift,
                           defocus, neighbours, nominal and measured SNR (pandas reads it as is)
    masks.npy              (n, box, box, box) uint8 ground-truth masks
    volumes/snr_<S>.npy    (n, box, box, box) float32 subtomograms at SNR S (``inf`` = noise-free)

Storage choice: plain ``.npy`` files opened with ``numpy.memmap``. Subtomograms are small
fixed-size arrays read at random by episode samplers; a memory map gives zero-copy random access
from many processes (data-loader workers, Optuna workers) with no extra dependency, no file
locking and no chunk cache to tune, and every tool in the field can read it. HDF5 and Zarr pay
off for compression or huge, ragged or remote data, none of which applies to 32³ float boxes.

Writes go to a hidden sibling folder that is renamed into place only after the manifest (written
last, with the content hash) is on disk, so an interrupted run never leaves a folder that looks
like a complete data set.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.outputs import write_json
from fewshot_cryoet.datasets.layout import LABELS, MANIFEST, MASKS, VOLUMES_DIR, feed, file_blake2b

FORMAT = "fewshot-cryoet-dataset"
FORMAT_VERSION = 1


#: The one level of data imported from a microscope (``fsc import``): its SNR is unknown, so it is
#: NaN as a number and ``recorded`` as a label, in file names, stores and leaderboards.
RECORDED = "recorded"


def snr_label(snr: float) -> str:
    """File-name-safe label of an SNR level: ``inf``, ``1000``, ``0.5``, or ``recorded``."""
    if math.isnan(snr):
        return RECORDED
    return "inf" if math.isinf(snr) else f"{snr:g}"


def parse_snr(text: str | float) -> float:
    """Parse an SNR level: a positive number, or ``inf`` / ``∞`` for noise-free data."""
    if isinstance(text, (int, float)):
        value = float(text)
        if math.isnan(value):  # the recorded level of imported data
            return math.nan
    else:
        cleaned = text.strip().lower()
        if cleaned == RECORDED:
            return math.nan
        value = math.inf if cleaned in ("inf", "infinity", "∞", "none") else None
        if value is None:
            try:
                value = float(cleaned)
            except ValueError:
                raise FscError(f"SNR {text!r} is not a number; use e.g. 1000, 0.5 or inf") from None
    if not value > 0:
        raise FscError(f"SNR must be positive (or inf), got {text}")
    return value


#: Manifest fields that describe the environment or the file itself, not the data: left out of
#: the data set's hash (the data files' own hash already captures any numerical difference).
NOT_DEFINING = ("content_hash", "created", "package_version", "torch_version", "python", "complete", "source_path")
#: Manifest fields every data set must have.
REQUIRED = ("particles", "snr_levels", "simulation", "classes", "splits")


def data_files(folder: Path) -> list[Path]:
    return [folder / LABELS, folder / MASKS] + sorted((folder / VOLUMES_DIR).glob("*.npy"))


def files_hash(folder: Path) -> str:
    """BLAKE2b over labels, masks and every volume file (the manifest itself excluded)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in data_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode())
        feed(digest, path)
    return digest.hexdigest()


def definition_hash(manifest: dict) -> str:
    """The data set's hash: everything that defines it (splits, seed, simulation settings,
    classes and their template checksums, the data files' hash), and nothing about where or when
    it was made. Editing any defining field of a manifest changes it."""
    defining = {k: v for k, v in manifest.items() if k not in NOT_DEFINING}
    defining["classes"] = [{k: v for k, v in c.items() if k != "source"} for c in manifest.get("classes", [])]
    text = json.dumps(defining, sort_keys=True, default=_json_default)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class DatasetWriter:
    """Creates a data set in a temporary sibling folder and moves it into place on ``commit``."""

    def __init__(self, out: str | Path, count: int, box: int, snrs: list[float], overwrite: bool = False,
                 resume_key: str | None = None) -> None:
        from fewshot_cryoet.core.outputs import AtomicFolder

        self.out = Path(out)
        # The manifest is this kind's marker (written last, in commit), so no separate marker file.
        # With ``resume_key`` the partial folder survives an interruption and is reopened by the
        # same import run again (``resumed``): its arrays are opened for update, not recreated.
        self.folder = AtomicFolder(self.out, "dataset", overwrite, marker=False, resume_key=resume_key)
        self.tmp = self.folder.tmp
        self.resumed = self.folder.resumed
        (self.tmp / VOLUMES_DIR).mkdir(exist_ok=True)
        shape = (count, box, box, box)

        def array(path: Path, dtype) -> np.ndarray:
            if self.resumed and path.exists():
                return np.lib.format.open_memmap(path, mode="r+")
            return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

        self.masks = array(self.tmp / MASKS, np.uint8)
        self.volumes = {snr: array(self.tmp / VOLUMES_DIR / f"snr_{snr_label(snr)}.npy", np.float32) for snr in snrs}

    def commit(self, labels: pd.DataFrame, manifest: dict, overwrite: bool = False) -> Path:
        """Flush arrays, write labels and the manifest (last), then rename into place."""
        self.masks.flush()
        for volume in self.volumes.values():
            volume.flush()
        del self.masks, self.volumes
        labels.to_csv(self.tmp / LABELS, index=False)
        manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION)
        manifest["files_hash"] = files_hash(self.tmp)
        manifest["files"] = {p.relative_to(self.tmp).as_posix(): {"bytes": p.stat().st_size}
                             for p in data_files(self.tmp)}
        manifest["labels_blake2b"] = file_blake2b(self.tmp / LABELS)
        manifest["content_hash"] = definition_hash(manifest)
        manifest["complete"] = True
        write_json(self.tmp / MANIFEST, manifest, default=_json_default)
        return self.folder.commit()

    def abort(self) -> None:
        """Remove the temporary folder (called on any error or interruption)."""
        for attr in ("masks", "volumes"):
            if hasattr(self, attr):
                delattr(self, attr)
        self.folder.abort()


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse, before simulating, an --out that is not ours to write or replace (see ``outputs``)."""
    from fewshot_cryoet.core.outputs import check_output_folder as check

    check(out, overwrite, "dataset")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a manifest")


class SubtomogramDataset:
    """A data set on disk, opened lazily: arrays are memory maps, nothing is read until used."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not self.path.is_dir():
            raise FscError(f"{self.path}: no such data set folder")
        if not manifest_path.exists():
            raise FscError(
                f"{self.path}: not a complete data set (no {MANIFEST}); it may be partly written, "
                "re-run fsc simulate"
            )
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FscError(f"{manifest_path}: corrupt manifest ({exc}); re-run fsc simulate") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT \
                or not self.manifest.get("complete"):
            raise FscError(f"{manifest_path}: not a complete fewshot-cryoet data set")
        version = self.manifest.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise FscError(f"{manifest_path}: format_version {str(version)[:20]!r} is not a version number; "
                           "re-run fsc simulate")
        if version > FORMAT_VERSION:
            raise FscError(
                f"{self.path}: data set format {self.manifest['format_version']} is newer than this "
                f"fewshot-cryoet understands ({FORMAT_VERSION}); upgrade the package"
            )
        missing = [k for k in REQUIRED if k not in self.manifest]
        missing += [f"simulation.{k}" for k in ("box", "voxel_size") if k not in self.manifest.get("simulation", {})]
        if missing:
            raise FscError(f"{manifest_path}: damaged manifest, missing {', '.join(missing)}; re-run fsc simulate")
        self._labels: pd.DataFrame | None = None
        self._hash = definition_hash(self.manifest)
        self._checked = False

    def __repr__(self) -> str:
        return f"SubtomogramDataset({str(self.path)!r}, {len(self)} particles, SNR {self.snr_labels})"

    def __len__(self) -> int:
        return int(self.manifest["particles"])

    @property
    def voxel_size(self) -> float:
        return float(self.manifest["simulation"]["voxel_size"])

    @property
    def box(self) -> int:
        return int(self.manifest["simulation"]["box"])

    @property
    def classes(self) -> list[str]:
        return [c["name"] for c in self.manifest["classes"]]

    @property
    def splits(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.manifest["splits"].items()}

    @property
    def snr_levels(self) -> list[float]:
        return [parse_snr(s) for s in self.manifest["snr_levels"]]

    @property
    def snr_labels(self) -> list[str]:
        return list(self.manifest["snr_levels"])

    def mask_snr(self, snr: float | str) -> float | None:
        """Median over particles of the measured SNR inside the particle masks at level ``snr``
        (the nominal SNR is over the whole box, mostly solvent); None for a noise-free level."""
        label = snr if isinstance(snr, str) else snr_label(snr)
        rows = self.labels[self.labels["volume_file"] == f"volumes/snr_{label}.npy"]
        values = rows["snr_measured_mask"].astype(float) if "snr_measured_mask" in rows else pd.Series([], dtype=float)
        if values.empty or not math.isfinite(values.median()):
            return None
        return float(values.median())

    @property
    def content_hash(self) -> str:
        """The data set's hash, computed from the manifest as it is now (see :func:`definition_hash`):
        results record it, so a manifest edited after simulation never passes for the original."""
        return self._hash

    @property
    def labels(self) -> pd.DataFrame:
        """The full labels table (one row per particle and SNR level)."""
        if self._labels is None:
            labels = pd.read_csv(self.path / LABELS, dtype={"neighbours": str, "class": str})
            labels["neighbours"] = labels["neighbours"].fillna("")
            self._labels = labels
        return self._labels

    @property
    def particles(self) -> pd.DataFrame:
        """One row per particle (the labels of the first SNR level, without its SNR columns)."""
        first = self.labels[self.labels["snr"].map(snr_label) == self.snr_labels[0]]
        return first.drop(columns=["snr", "snr_measured", "snr_measured_mask", "volume_file"]).reset_index(drop=True)

    def volumes(self, snr: float | str) -> np.ndarray:
        """Memory map ``(n, box, box, box)`` float32 of the subtomograms at ``snr``."""
        label = snr_label(parse_snr(snr))
        if label not in self.snr_labels:
            raise FscError(f"{self.path}: no SNR {label} in this data set (it has {', '.join(self.snr_labels)})")
        return np.load(self.path / VOLUMES_DIR / f"snr_{label}.npy", mmap_mode="r")

    @property
    def has_masks(self) -> bool:
        """Simulated data always have masks; imported data only where the source had them
        (otherwise ``masks`` is all zeros and episodes carry none, so nothing reports Dice)."""
        return bool(self.manifest.get("has_masks", True))

    @property
    def masks(self) -> np.ndarray:
        """Memory map ``(n, box, box, box)`` uint8 of the ground-truth masks."""
        return np.load(self.path / MASKS, mmap_mode="r")

    def indices(self, split: str | None = None, class_name: str | None = None) -> np.ndarray:
        """Particle indices, optionally restricted to a split and/or a class."""
        table = self.particles
        keep = np.ones(len(table), dtype=bool)
        if split is not None:
            keep &= (table["split"] == split).to_numpy()
        if class_name is not None:
            keep &= (table["class"] == class_name).to_numpy()
        return table.loc[keep, "particle"].to_numpy()

    def check(self) -> None:
        """Cheap checks before every benchmark, training or tuning run (seconds, no volume is
        read): the manifest still hashes to what was written, its splits are class-disjoint and
        agree with the labels, every array file has the size its header promises, the labels
        table is unchanged and complete, and the masks hold only 0 and 1."""
        from fewshot_cryoet.datasets.integrity import check_dataset

        if not self._checked:
            check_dataset(self)
            self._checked = True

    def verify(self) -> None:
        """:meth:`check`, then rehash every data file; raise if any changed since it was written."""
        self.check()
        stored = self.manifest.get("files_hash", self.manifest.get("content_hash"))  # older data sets
        actual = files_hash(self.path)
        if actual != stored:
            raise FscError(
                f"{self.path}: data files hash to {actual}, the manifest says {stored}; "
                "the data set was modified or damaged, re-run fsc simulate"
            )


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
