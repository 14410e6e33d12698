"""The results store: a SQLite file with one row per evaluated episode.

Each row is committed in its own transaction (WAL journal), so a run killed at any moment, even
with ``kill -9``, keeps every finished episode and ``fsc bench --resume`` continues with the first
missing one. A *cell* is one (method, variant, hyper-parameters, budget, data set, SNR, N, K, Q,
seed) combination; its episodes are numbered, so resuming never duplicates or skips one.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from fewshot_cryoet.errors import FscError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY,
    cell TEXT NOT NULL,
    method TEXT NOT NULL, variant TEXT NOT NULL, label TEXT NOT NULL,
    params_hash TEXT NOT NULL, params TEXT NOT NULL, profile TEXT, budget TEXT,
    dataset TEXT NOT NULL, dataset_hash TEXT NOT NULL,
    snr TEXT NOT NULL, n_way INTEGER NOT NULL, k_shot INTEGER NOT NULL, q_query INTEGER NOT NULL,
    seed INTEGER NOT NULL, episode INTEGER NOT NULL,
    accuracy REAL NOT NULL, dice REAL, dice_crf REAL,
    predict_seconds REAL NOT NULL, fit_seconds REAL, fit_episodes INTEGER, val_accuracy REAL,
    device TEXT NOT NULL, package_version TEXT NOT NULL, plugin TEXT NOT NULL, created TEXT NOT NULL,
    UNIQUE (cell, episode)
);
CREATE TABLE IF NOT EXISTS query_dice (
    cell TEXT NOT NULL, episode INTEGER NOT NULL, query INTEGER NOT NULL,
    class TEXT NOT NULL, dice REAL NOT NULL, dice_crf REAL,
    PRIMARY KEY (cell, episode, query)
);
CREATE INDEX IF NOT EXISTS episodes_by_cell ON episodes (cell);
"""


@dataclass(frozen=True)
class Cell:
    """Identity of one leaderboard cell's worth of episodes."""

    method: str
    variant: str
    label: str
    params_hash: str
    params: str
    profile: str
    budget: str
    dataset: str
    dataset_hash: str
    snr: str
    n_way: int
    k_shot: int
    q_query: int
    seed: int

    @property
    def key(self) -> str:
        identity = {k: v for k, v in asdict(self).items() if k not in ("label", "params", "dataset")}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class EpisodeResult:
    episode: int
    accuracy: float
    predict_seconds: float
    dice: float | None = None
    dice_crf: float | None = None
    query_dice: list[tuple[int, str, float, float | None]] | None = None


class ResultsStore:
    """Open (or create) a results database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.connection = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            raise FscError(f"{self.path}: cannot open results store ({exc}); choose another --store") from None
        try:
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=NORMAL")
            version = self._schema_version()
        except sqlite3.DatabaseError as exc:
            raise FscError(f"{self.path}: not a results store ({exc}); choose another --store") from None
        if version is None:
            with self.connection:
                self.connection.executescript(SCHEMA)
                self.connection.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif version != SCHEMA_VERSION:
            raise FscError(
                f"{self.path}: results store has schema version {version}, this fewshot-cryoet uses "
                f"{SCHEMA_VERSION}; use another --store or the matching version"
            )

    def _schema_version(self) -> int | None:
        tables = {r[0] for r in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if tables:
                raise FscError(f"{self.path}: SQLite file is not a fewshot-cryoet results store")
            return None
        row = self.connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        self.connection.close()

    def done_episodes(self, cell: Cell) -> set[int]:
        rows = self.connection.execute("SELECT episode FROM episodes WHERE cell = ?", (cell.key,))
        return {r[0] for r in rows}

    def add(self, cell: Cell, result: EpisodeResult, *, fit_seconds: float | None, fit_episodes: int | None,
            val_accuracy: float | None, device: str, package_version: str, plugin: str) -> None:
        """Write one episode (and its per-query Dice) in a single transaction."""
        row = asdict(cell)
        row.update(
            cell=cell.key, episode=result.episode, accuracy=result.accuracy, dice=result.dice,
            dice_crf=result.dice_crf, predict_seconds=result.predict_seconds, fit_seconds=fit_seconds,
            fit_episodes=fit_episodes, val_accuracy=val_accuracy, device=device,
            package_version=package_version, plugin=plugin,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.connection:
            self.connection.execute(f"INSERT INTO episodes ({columns}) VALUES ({marks})", tuple(row.values()))
            if result.query_dice:
                self.connection.executemany(
                    "INSERT INTO query_dice VALUES (?, ?, ?, ?, ?, ?)",
                    [(cell.key, result.episode, q, c, d, dc) for q, c, d, dc in result.query_dice],
                )

    def frame(self) -> pd.DataFrame:
        """Every episode row as a DataFrame."""
        return pd.read_sql_query("SELECT * FROM episodes ORDER BY id", self.connection)

    def query_dice_frame(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT q.*, e.label, e.snr, e.n_way, e.k_shot, e.dataset FROM query_dice q "
            "JOIN episodes e ON e.cell = q.cell AND e.episode = q.episode", self.connection)


def snr_text(snr: float) -> str:
    return "inf" if math.isinf(snr) else f"{snr:g}"
