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
import shutil
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.results.store import Cell, ResultsStore

MARKER = "fsc-results-archive.json"
FORMAT = "fsc-results-archive"
VERSION = 1
TABLES = ResultsStore.CELL_TABLES


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
        if self.folder.exists() and not self.folder.is_dir():
            raise SettingError("archive", f"archive {self.folder}: is a file; give a folder")
        if marker.exists():
            try:
                header = json.loads(marker.read_text())
            except (OSError, ValueError) as exc:
                raise SettingError("archive", f"archive {marker}: unreadable ({exc})") from None
            if header.get("format") != FORMAT or header.get("version") != VERSION:
                raise SettingError("archive", f"archive {marker}: not a version-{VERSION} {FORMAT} "
                                              f"(it says {header.get('format')!r} version {header.get('version')!r})")
        elif self.folder.is_dir() and any(self.folder.iterdir()):
            raise SettingError("archive", f"archive {self.folder}: holds files but no {MARKER}, so fewshot-cryoet did not "
                                          "make it (left untouched); give a new or empty folder")

    def cells(self) -> list[str]:
        """Keys of the archived cells, sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir() and (p / "cell.json").exists())

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
    def load_into(self, store: ResultsStore) -> ArchiveReport:
        """Insert every archived cell the store lacks, each in one transaction, after checking all
        of them (so a damaged archive adds nothing). A cell the store holds with the same number of
        episodes is skipped; one it holds partly (scored by another training) is refused."""
        report = ArchiveReport()
        loaded = [(cell, self._read_cell(cell)) for cell in self.cells()]
        for cell, tables in loaded:
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
                store.add_cell_rows(tables)
                report.added.append(cell)
        return report

    def _read_cell(self, cell: str) -> dict[str, list[dict]]:
        """A cell's rows, after checking every file's hash and row count, and that the rows are the
        cell the folder is named after (an edited or moved file is refused, naming it)."""
        folder = self.folder / cell
        try:
            header = json.loads((folder / "cell.json").read_text())
        except (OSError, ValueError) as exc:
            raise SettingError("archive", f"archive {folder / 'cell.json'}: unreadable ({exc})") from None
        if header.get("format") != FORMAT or header.get("cell") != cell:
            raise SettingError("archive", f"archive {folder / 'cell.json'}: not the description of cell {cell}")
        tables: dict[str, list[dict]] = {name: [] for name in TABLES}
        for name in TABLES:
            path = folder / f"{name}.jsonl.gz"
            expected = header["files"].get(path.name)
            if expected is None:
                continue
            data = path.read_bytes() if path.exists() else b""
            if hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise SettingError("archive", f"archive {path}: {'missing' if not data else 'changed since it was written'} "
                                              "(its SHA-256 differs from cell.json's); restore it from git")
            tables[name] = [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]
            if len(tables[name]) != expected["rows"]:
                raise SettingError("archive", f"archive {path}: {len(tables[name])} rows, cell.json says {expected['rows']}")
        names = {f.name for f in fields(Cell)}
        for row in tables["episodes"][:1] + tables["episodes"][-1:]:
            if row.get("cell") != cell or Cell(**{k: row[k] for k in names}).key != cell:
                raise SettingError("archive", f"archive {folder}: its episodes are not those of cell {cell}")
        if any(row["cell"] != cell for name in TABLES for row in tables[name]):
            raise SettingError("archive", f"archive {folder}: holds rows of another cell")
        tables["planned_cells"] = header.get("planned_cells", [])
        tables["snr_levels"] = header.get("snr_levels", [])
        return tables


def _write_new(path: Path, data: bytes) -> None:
    """Write a file that must not exist yet (another process may create it at the same moment)."""
    try:
        with open(path, "xb") as handle:
            handle.write(data)
    except FileExistsError:
        pass
