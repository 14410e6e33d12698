"""Finished models' results as plain files that git can keep, and back into a results store.

Why: a store and its checkpoints resume a run only on the machine that holds them. A run longer
than the jobs that carry it (the `paper` profile's Table-1 run needs about 9 h on 2 CPU cores;
batch jobs, CI runners and cloud sessions are often shorter, and their disks are not kept) loses
every finished model with the machine. A finished model's test episodes, though, are small and
final. ``fsc bench --archive DIR`` copies each model's cells into DIR as soon as all of them are
scored, and loads DIR's cells into the store before it starts, so a run continues on any machine
from a committed DIR: ``--resume`` then finds those cells complete and neither trains nor scores
them again. Checkpoints are not archived (a `paper` profile model is 70 MB); a model whose cells
are not all scored is trained again from the start.

Layout: ``DIR/fsc-results-archive.json`` marks a folder this package made (nothing is written into
a folder without it that holds anything); one sub-folder per cell, named by its key, holds
``cell.json`` (what it is, its row counts and each file's SHA-256) and one gzipped JSON-lines file
per table. Files are written once, atomically (a whole cell folder is renamed into place), and
byte-for-byte reproducibly (gzip without a time stamp), so committing an archive again after a
run adds only the new cells. JSON keeps what CSV would blur: NULL against "", integers against
floats, and doubles exactly.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import uuid
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from fewshot_cryoet.core import strict_json
from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.results.store import Cell, ResultsStore
from fewshot_cryoet.results.validation import check_rows

MARKER = "fsc-results-archive.json"
FORMAT = "fsc-results-archive"
VERSION = 1
TABLES = ResultsStore.CELL_TABLES
#: A cell folder's name: its key. Anything else in the folder (our own staging folders left by a
#: killed process, ``.{key}.{8 hex}.tmp``, or files someone added) is not a cell and is passed over.
CELL_NAME = re.compile(r"[0-9a-f]{20}")
#: Bounds on what one cell may make us read, checked before reading or decompressing: a gzip of
#: spaces can inflate a thousandfold. 600 episodes of a 6-way cell take about 3 MB inflated.
MAX_CELL_JSON = 1 << 20
MAX_FILE = 256 << 20
MAX_ROWS = 5_000_000
MAX_BYTES_PER_ROW = 4096
#: What every episode row of one cell shares: the cell's identity and the model that scored it.
IDENTITY = tuple(f.name for f in fields(Cell)) + ("checkpoint",)


@dataclass
class ArchiveReport:
    """What one pass did: cells written to (or loaded from) the archive, and those already there."""

    added: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)


class ResultsArchive:
    """A folder of finished cells (see the module docstring). Opening one checks it before any
    work: a folder this package did not make is refused unless it does not exist or is empty."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        marker = self.folder / MARKER
        if self.folder.is_symlink() and not self.folder.exists():
            raise SettingError("archive", f"archive {self.folder}: is a link to {os.readlink(self.folder)}, which does "
                                          "not exist; give a folder")
        if self.folder.exists() and not self.folder.is_dir():
            raise SettingError("archive", f"archive {self.folder}: is a file; give a folder")
        if marker.exists() or marker.is_symlink():
            header = _json_file(marker, 1 << 16)
            if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
                said = header if not isinstance(header, dict) else f"{header.get('format')!r} version {header.get('version')!r}"
                raise SettingError("archive", f"archive {marker}: not a version-{VERSION} {FORMAT} (it says {said})")
        elif self.folder.is_dir() and any(self.folder.iterdir()):
            raise SettingError("archive", f"archive {self.folder}: holds files but no {MARKER}, so fewshot-cryoet did not "
                                          "make it (left untouched); give a new or empty folder")

    def cells(self) -> list[str]:
        """Keys of the archived cells, sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if CELL_NAME.fullmatch(p.name)
                      and (p.is_symlink() or p.is_dir()))

    # -- writing -------------------------------------------------------------------------------
    def save_finished(self, store: ResultsStore) -> ArchiveReport:
        """Copy every finished model's cells (:meth:`ResultsStore.finished_models`) that the archive
        lacks. Safe with several processes at once: a cell folder appears whole or not at all."""
        report = ArchiveReport()
        have = set(self.cells())
        for group in store.finished_models():
            for cell in group:
                if cell in have:
                    report.already.append(cell)
                else:
                    self._write_cell(cell, store.cell_rows(cell))
                    report.added.append(cell)
        return report

    def _write_cell(self, cell: str, tables: dict[str, list[dict]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / MARKER
        if not marker.exists():
            _write_new(marker, (json.dumps({"format": FORMAT, "version": VERSION}, indent=2) + "\n").encode())
        staging = self.folder / f".{cell}.{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir()
        try:
            files = {}
            for name in TABLES:
                if tables[name]:
                    data = gzip.compress("".join(json.dumps(row, sort_keys=True) + "\n" for row in tables[name]).encode(),
                                         mtime=0)
                    (staging / f"{name}.jsonl.gz").write_bytes(data)
                    files[f"{name}.jsonl.gz"] = {"rows": len(tables[name]), "sha256": hashlib.sha256(data).hexdigest()}
            first = tables["episodes"][0]
            header = {"format": FORMAT, "version": VERSION, "cell": cell, "label": first["label"],
                      "dataset": first["dataset"], "snr": first["snr"], "n_way": first["n_way"],
                      "k_shot": first["k_shot"], "checkpoint": first["checkpoint"], "files": files,
                      "planned_cells": tables["planned_cells"], "snr_levels": tables["snr_levels"]}
            (staging / "cell.json").write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
            try:
                os.rename(staging, self.folder / cell)  # atomic; fails if another process archived it first
            except OSError:
                if not (self.folder / cell / "cell.json").exists():
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging)  # our own staging folder, never anything else

    # -- reading -------------------------------------------------------------------------------
    def load_into(self, store: ResultsStore, check_model: Callable[[dict[str, Any]], None] | None = None
                  ) -> ArchiveReport:
        """Insert every archived cell the store lacks, each in one transaction, after checking all
        of them (so a damaged or crafted archive adds nothing): every row against the store's
        schema and ranges (:mod:`~fewshot_cryoet.results.validation`) and against its cell, and
        ``check_model(first episode row)`` for what only the method itself can say (its label and
        parameter hash; it raises :class:`FscError`). A cell the store holds with the same number
        of episodes is skipped; one it holds partly (scored by another training) is refused, and
        so is a level whose in-mask SNR differs from the store's."""
        report = ArchiveReport()
        loaded = [(cell, self._read_cell(cell)) for cell in self.cells()]
        for cell, tables in loaded:
            if check_model is not None:
                try:
                    check_model(tables["episodes"][0])
                except FscError as exc:
                    raise SettingError("archive", f"archive {self.folder / cell}: {exc}") from None
            for level in tables["snr_levels"]:
                known = store.snr_level(level["dataset_hash"], level["snr"])
                if known is not None and known != level["mask_snr"]:
                    raise SettingError("archive", f"archive {self.folder / cell}: gives SNR {level['snr']} of data set "
                                                  f"{level['dataset_hash']} an in-mask SNR of {level['mask_snr']}, and "
                                                  f"{store.name} holds {known}; load it into a new store")
            stored = store.stored_episodes(cell)
            wanted = len(tables["episodes"])
            if stored == wanted:
                report.already.append(cell)
            elif stored:
                raise SettingError("archive", f"archive {self.folder / cell}: {store.name} holds {stored} of this "
                                              f"cell's episodes and the archive {wanted}, scored by another training; "
                                              "load the archive into a new store")
        for cell, tables in loaded:
            if cell not in report.already:
                store.add_cell_rows(tables, checked=True)
                report.added.append(cell)
        return report

    def _read_cell(self, cell: str) -> dict[str, list[dict]]:
        """A cell's rows, after checking every file (no links, bounded sizes, hash, row count), every
        row (schema and ranges) and that the rows are one model's complete cell, the one the folder
        is named after: an edited, moved or crafted file is refused, naming it."""
        folder = self.folder / cell
        if folder.is_symlink() or not folder.is_dir():
            raise SettingError("archive", f"archive {folder}: is a link or not a folder; a cell must be a folder inside "
                                          "the archive")
        header = _json_file(folder / "cell.json", MAX_CELL_JSON)
        where = folder / "cell.json"
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("cell") != cell:
            raise SettingError("archive", f"archive {where}: not the description of cell {cell}")
        files = header.get("files")
        if not isinstance(files, dict) or set(files) - {f"{n}.jsonl.gz" for n in TABLES} or not all(
                isinstance(v, dict) and isinstance(v.get("rows"), int) and not isinstance(v.get("rows"), bool)
                and 0 <= v["rows"] <= MAX_ROWS and isinstance(v.get("sha256"), str) for v in files.values()):
            raise SettingError("archive", f"archive {where}: its 'files' must map {', '.join(TABLES)} files to "
                                          f"their rows (0 to {MAX_ROWS:,}) and SHA-256")
        tables: dict[str, list[dict]] = {name: [] for name in TABLES}
        for name in TABLES:
            path = folder / f"{name}.jsonl.gz"
            expected = files.get(path.name)
            if expected is None:
                continue
            data = _bounded_read(path, MAX_FILE)
            if hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise SettingError("archive", f"archive {path}: {'missing' if not data else 'changed since it was written'} "
                                              "(its SHA-256 differs from cell.json's); restore it from git")
            tables[name] = _json_lines(path, _inflate(path, data, expected["rows"]))
            if len(tables[name]) != expected["rows"]:
                raise SettingError("archive", f"archive {path}: {len(tables[name])} rows, cell.json says {expected['rows']}")
            try:
                check_rows(name, tables[name], f"archive {path}")
            except FscError as exc:
                raise SettingError("archive", str(exc)) from None
        for name in ("planned_cells", "snr_levels"):
            tables[name] = header.get(name, [])
            try:
                check_rows(name, tables[name], f"archive {where}")
            except FscError as exc:
                raise SettingError("archive", str(exc)) from None
        _check_cell(cell, header, tables, folder)
        return tables


def _check_cell(cell: str, header: dict, tables: dict[str, list[dict]], folder: Path) -> None:
    """The rows are one model's complete cell, the one ``folder`` is named after."""
    def refuse(text: str) -> None:
        raise SettingError("archive", f"archive {folder}: {text}")

    episodes = tables["episodes"]
    if not episodes:
        refuse("holds no episodes")
    first = episodes[0]
    for i, row in enumerate(episodes):
        differs = [k for k in IDENTITY if row.get(k) != first.get(k)]
        if row["cell"] != cell or differs:
            refuse(f"episode row {i + 1} is not of this cell and model (it differs in {', '.join(differs) or 'cell'})")
    if Cell(**{k: first.get(k) for k in IDENTITY if k != "checkpoint"}).key != cell:
        refuse(f"its episodes are not those of cell {cell} (their identity hashes to another key)")
    for key in ("label", "dataset", "snr", "n_way", "k_shot", "checkpoint"):
        if header.get(key) != first[key]:
            refuse(f"cell.json says {key} {header.get(key)!r}, its episodes {first[key]!r}")
    numbers = [row["episode"] for row in episodes]
    if len(set(numbers)) != len(numbers):
        refuse("holds an episode twice")
    planned = tables["planned_cells"]
    seed = first["train_seed"] if first["train_seed"] is not None else first["seed"]
    if len(planned) != 1 or any(planned[0][k] != v for k, v in dict(
            cell=cell, label=first["label"], dataset=first["dataset"], snr=first["snr"], n_way=first["n_way"],
            k_shot=first["k_shot"], train_seed=seed, episodes=len(episodes)).items()):
        refuse("its planned_cells row is not this complete cell's plan")
    if max(numbers) >= len(episodes):
        refuse(f"episode {max(numbers)} is beyond the {len(episodes)} planned")
    queries, known = first["n_way"] * first["q_query"], set(numbers)
    for name in TABLES[1:]:
        seen = set()
        for i, row in enumerate(tables[name]):
            place = (row["episode"], row["query"])
            if row["cell"] != cell or row["episode"] not in known or row["query"] >= queries or place in seen:
                refuse(f"{name} row {i + 1} is not a query of this cell's episodes, or repeats one")
            seen.add(place)
    levels = tables["snr_levels"]
    if len(levels) > 1 or any((r["dataset_hash"], r["snr"]) != (first["dataset_hash"], first["snr"]) for r in levels):
        refuse("its snr_levels row is not this cell's level")


def _bounded_read(path: Path, limit: int) -> bytes:
    """A regular file's bytes (b"" when missing); a link, a device or a file over ``limit`` is
    refused before it is read."""
    if path.is_symlink():
        raise SettingError("archive", f"archive {path}: is a link; archives hold plain files")
    if not path.exists():
        return b""
    if not path.is_file():
        raise SettingError("archive", f"archive {path}: is not a plain file")
    size = path.stat().st_size
    if size > limit:
        raise SettingError("archive", f"archive {path}: {size:,} bytes, more than the {limit:,} an archive file may have")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingError("archive", f"archive {path}: unreadable ({exc.strerror or exc})") from None


def _inflate(path: Path, data: bytes, rows: int) -> bytes:
    """Decompress one gzip member, never to more than the rows can take (a gzip bomb is refused
    after reading at most that much)."""
    limit = MAX_BYTES_PER_ROW * max(rows, 1) + (1 << 16)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise SettingError("archive", f"archive {path}: not gzip data ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise SettingError("archive", f"archive {path}: inflates to more than {limit:,} bytes for {rows} rows")
    if not inflater.eof or inflater.unused_data:
        raise SettingError("archive", f"archive {path}: the gzip data are truncated or followed by other bytes")
    return out


def _json_lines(path: Path, data: bytes) -> list[Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingError("archive", f"archive {path}: not UTF-8 text (byte {exc.start})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            rows.append(strict_json.loads(line))
        except ValueError as exc:
            raise SettingError("archive", f"archive {path}: line {number} is not JSON ({exc})") from None
    return rows


def _json_file(path: Path, limit: int) -> Any:
    data = _bounded_read(path, limit)
    try:
        return strict_json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SettingError("archive", f"archive {path}: unreadable ({exc})") from None


def _write_new(path: Path, data: bytes) -> None:
    """Write a file that must not exist yet (another process may create it at the same moment)."""
    try:
        with open(path, "xb") as handle:
            handle.write(data)
    except FileExistsError:
        pass
