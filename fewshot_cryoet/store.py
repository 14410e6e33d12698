"""The results store: a SQLite file with one row per evaluated episode.

Each row is committed in its own transaction (WAL journal), so a run killed at any moment, even
with ``kill -9``, keeps every finished episode and ``fsc bench --resume`` continues with the first
missing one. A *cell* is one (method, variant, hyper-parameters, budget, data set, SNR, N, K, Q,
seed) combination; its episodes are numbered, so resuming never duplicates or skips one.

Several processes may run the same grid on one store: a trainable fit is *claimed* in the ``fits``
table before training (one process trains, the others wait for its checkpoint; a heartbeat keeps
the claim, which lapses when the holder dies), an episode another process already stored is
skipped, and every row records the hash of the checkpoint that scored it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from fewshot_cryoet.errors import FscError, SettingError

SCHEMA_VERSION = 7

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
    checkpoint TEXT,
    train_dataset TEXT NOT NULL DEFAULT '', train_dataset_hash TEXT NOT NULL DEFAULT '',
    fit_examples INTEGER, train_seed INTEGER,
    UNIQUE (cell, episode)
);
CREATE TABLE IF NOT EXISTS query_dice (
    cell TEXT NOT NULL, episode INTEGER NOT NULL, query INTEGER NOT NULL,
    class TEXT NOT NULL, dice REAL NOT NULL, dice_crf REAL,
    PRIMARY KEY (cell, episode, query)
);
CREATE INDEX IF NOT EXISTS episodes_by_cell ON episodes (cell);
CREATE TABLE IF NOT EXISTS query_predictions (
    cell TEXT NOT NULL, episode INTEGER NOT NULL, query INTEGER NOT NULL,
    truth TEXT NOT NULL, predicted TEXT NOT NULL, confidence REAL,
    PRIMARY KEY (cell, episode, query)
);
""" + """
CREATE TABLE IF NOT EXISTS fits (
    identity TEXT PRIMARY KEY, state TEXT NOT NULL, owner TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, heartbeat REAL NOT NULL, checkpoint_hash TEXT, report TEXT
);
CREATE TABLE IF NOT EXISTS snr_levels (
    dataset_hash TEXT NOT NULL, snr TEXT NOT NULL, mask_snr REAL,
    PRIMARY KEY (dataset_hash, snr)
);
"""
#: What each older schema version lacks (added in place when such a store is opened).
MIGRATIONS = {
    1: "ALTER TABLE episodes ADD COLUMN checkpoint TEXT;",
    2: "ALTER TABLE episodes ADD COLUMN train_dataset TEXT NOT NULL DEFAULT ''; "
       "ALTER TABLE episodes ADD COLUMN train_dataset_hash TEXT NOT NULL DEFAULT '';",
    3: "ALTER TABLE episodes ADD COLUMN fit_examples INTEGER;",
    4: "ALTER TABLE episodes ADD COLUMN train_seed INTEGER;",
    5: "",  # the query_predictions table (created by the schema script that follows every migration)
    6: "",  # the snr_levels table
}
OUR_TABLES = {"meta", "episodes", "query_dice", "fits", "query_predictions", "snr_levels"}
#: A training claim whose heartbeat is older than this (seconds) is taken over by another process.
STALE_SECONDS = 120.0
HEARTBEAT_SECONDS = 15.0


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
    #: Cross-domain cells: the data set the method was trained and selected on ("" = ``dataset``).
    train_dataset: str = ""
    train_dataset_hash: str = ""
    #: The seed the model was trained with, when it differs from ``seed`` (which fixes the test
    #: episodes): several training seeds are scored on the same episodes. None: trained with ``seed``.
    train_seed: int | None = None

    @property
    def key(self) -> str:
        identity = {k: v for k, v in asdict(self).items() if k not in ("label", "params", "dataset", "train_dataset")}
        if not self.train_dataset_hash:  # in-domain cells keep the keys they had before cross-domain runs
            identity.pop("train_dataset_hash")
        if self.train_seed is None:  # so do cells trained with the episode seed, as every cell was before
            identity.pop("train_seed")
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class EpisodeResult:
    episode: int
    accuracy: float
    predict_seconds: float
    dice: float | None = None
    dice_crf: float | None = None
    query_dice: list[tuple[int, str, float, float | None]] | None = None
    #: (query, true class, predicted class, confidence) per query: per-class accuracy, confusion
    #: matrices and calibration.
    query_classes: list[tuple[int, str, str, float]] | None = None


@dataclass
class Claim:
    """The state of one trainable fit in the store: ``mine`` (this process trains it), ``done``
    (trained; ``checkpoint_hash`` and ``report`` say by whom and how) or ``busy`` (another live
    process is training it)."""

    state: str
    owner: str = ""
    host: str = ""
    pid: int = 0
    age: float = 0.0
    checkpoint_hash: str | None = None
    report: dict | None = None


class ResultsStore:
    """Open (or create) a results database at ``path``.

    Nothing is written to a file that is not already a results store: the schema is checked
    first, and only then is the journal switched to WAL. A store we cannot write to is refused
    here, before any training.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise SettingError("store", f"store {self.path}: is a folder; give a file such as fsc-results.sqlite")
        if not self.path.exists():
            from fewshot_cryoet.outputs import check_writable_parent

            check_writable_parent(self.path, "store")
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        try:
            self.connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise SettingError("store", f"store {self.path}: cannot open results store ({exc}); choose another store") from None
        try:
            version = self._schema_version()
        except sqlite3.DatabaseError as exc:
            self.connection.close()
            raise SettingError("store", f"store {self.path}: not a results store ({exc}); choose another store") from None
        except FscError:
            self.connection.close()
            raise
        try:
            if version is None:  # OR IGNORE: another process may have created it while this one waited
                self.connection.executescript("BEGIN IMMEDIATE;" + SCHEMA
                                              + f"INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); "
                                                "COMMIT;")
            elif version in MIGRATIONS:
                steps = "".join(MIGRATIONS[v] for v in range(version, SCHEMA_VERSION))
                if version < 5:  # rows so far were written before training seeds were stored
                    steps += ("INSERT OR IGNORE INTO meta SELECT 'rows_before_training_seeds', "
                              "COALESCE(MAX(id), 0) FROM episodes;")
                self.connection.executescript("BEGIN IMMEDIATE;" + steps + SCHEMA
                                              + f"UPDATE meta SET value = '{SCHEMA_VERSION}' "
                                                "WHERE key = 'schema_version'; COMMIT;")
            elif version != SCHEMA_VERSION:
                raise SettingError(
                    "store", f"store {self.path}: results store has schema version {version}, this fewshot-cryoet uses "
                    f"{SCHEMA_VERSION}; use another store or the matching version"
                )
            else:
                with self.transaction():  # probe: a read-only file fails now, not after training
                    self.connection.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            if "duplicate column" in str(exc) and self._schema_version() == SCHEMA_VERSION:
                # another process migrated the same store while this one waited for the lock
                self.connection.execute("PRAGMA journal_mode=WAL")
                self.connection.execute("PRAGMA synchronous=NORMAL")
                return
            self.connection.close()
            raise SettingError("store", f"store {self.path}: cannot write to the results store ({exc}); check its permissions "
                           "or choose another --store") from None

    @contextmanager
    def transaction(self):
        """One write transaction, taken at once (``BEGIN IMMEDIATE``), so read-then-write is atomic
        across processes."""
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def _schema_version(self) -> int | None:
        tables = {r[0] for r in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables or not tables <= OUR_TABLES:
            if tables:
                raise SettingError("store", f"store {self.path}: SQLite file is not a fewshot-cryoet results store "
                               "(left unchanged); choose another store")
            return None
        row = self.connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        self.connection.close()

    def done_episodes(self, cell: Cell) -> set[int]:
        rows = self.connection.execute("SELECT episode FROM episodes WHERE cell = ?", (cell.key,))
        return {r[0] for r in rows}

    def add(self, cell: Cell, result: EpisodeResult, *, fit_seconds: float | None, fit_episodes: int | None,
            val_accuracy: float | None, device: str, package_version: str, plugin: str,
            checkpoint: str | None = None, fit_examples: int | None = None) -> bool:
        """Write one episode (and its per-query Dice) in a single transaction; False when another
        process already stored that episode (the same fit gives the same numbers)."""
        row = asdict(cell)
        row.update(
            cell=cell.key, episode=result.episode, accuracy=result.accuracy, dice=result.dice,
            dice_crf=result.dice_crf, predict_seconds=result.predict_seconds, fit_seconds=fit_seconds,
            fit_episodes=fit_episodes, fit_examples=fit_examples, val_accuracy=val_accuracy, device=device,
            package_version=package_version, plugin=plugin, checkpoint=checkpoint,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.transaction() as db:
            inserted = db.execute(f"INSERT INTO episodes ({columns}) VALUES ({marks}) "
                                  "ON CONFLICT (cell, episode) DO NOTHING", tuple(row.values())).rowcount
            if inserted and result.query_dice:
                db.executemany(
                    "INSERT INTO query_dice VALUES (?, ?, ?, ?, ?, ?)",
                    [(cell.key, result.episode, q, c, d, dc) for q, c, d, dc in result.query_dice],
                )
            if inserted and result.query_classes:
                db.executemany("INSERT INTO query_predictions VALUES (?, ?, ?, ?, ?, ?)",
                               [(cell.key, result.episode, q, t, p, c) for q, t, p, c in result.query_classes])
        return bool(inserted)

    def checkpoints(self, cell: Cell) -> set[str]:
        """Checkpoint hashes the cell's stored episodes were scored with (rows from before
        checkpoints were recorded say nothing)."""
        rows = self.connection.execute("SELECT DISTINCT checkpoint FROM episodes WHERE cell = ? AND checkpoint "
                                       "IS NOT NULL", (cell.key,))
        return {r[0] for r in rows}

    # -- claims: a training, or a chunk of test episodes ---------------------------------------------
    def claim(self, identity: str, stale_after: float = STALE_SECONDS) -> Claim:
        """Claim the work ``identity`` (a training, or a chunk of a cell's test episodes), atomically: ``mine`` if nobody holds it (or the
        holder's heartbeat is stale, or it was this host's process and is gone), ``done`` if it
        was done, else ``busy``. Several processes running one grid split its work this way."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT state, owner, host, pid, heartbeat, checkpoint_hash, report FROM fits "
                             "WHERE identity = ?", (identity,)).fetchone()
            if row is not None:
                state, owner, host, pid, heartbeat, checkpoint_hash, report = row
                if state == "done":
                    return Claim("done", owner, host, pid, now - heartbeat, checkpoint_hash,
                                 json.loads(report) if report else None)
                gone = host == socket.gethostname() and not _pid_alive(pid)
                if owner != self.owner and now - heartbeat < stale_after and not gone:
                    return Claim("busy", owner, host, pid, now - heartbeat)
            db.execute("INSERT INTO fits (identity, state, owner, host, pid, heartbeat) VALUES (?, 'training', ?, ?, ?, ?) "
                       "ON CONFLICT (identity) DO UPDATE SET state = 'training', owner = excluded.owner, "
                       "host = excluded.host, pid = excluded.pid, heartbeat = excluded.heartbeat",
                       (identity, self.owner, socket.gethostname(), os.getpid(), now))
        return Claim("mine", self.owner, socket.gethostname(), os.getpid())

    def finish(self, identity: str, checkpoint_hash: str = "", report: dict | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE fits SET state = 'done', checkpoint_hash = ?, report = ?, heartbeat = ? "
                       "WHERE identity = ? AND owner = ?",
                       (checkpoint_hash, json.dumps(report or {}), time.time(), identity, self.owner))

    def release(self, identity: str) -> None:
        """Give up a claim (the work failed or was interrupted) so another process may do it."""
        with self.transaction() as db:
            db.execute("DELETE FROM fits WHERE identity = ? AND owner = ? AND state = 'training'",
                       (identity, self.owner))

    def heartbeat(self, identity: str) -> Heartbeat:
        """A background thread that keeps this process's claim on ``identity`` fresh."""
        return Heartbeat(self.path, identity, self.owner)

    def rows_before_training_seeds(self) -> int:
        """The last episode row id written before this store recorded training seeds (0: none),
        set when a store older than schema 5 is migrated."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'rows_before_training_seeds'").fetchone()
        return int(row[0]) if row else 0

    def record_snr_level(self, dataset_hash: str, snr: str, mask_snr: float | None) -> None:
        """Keep a data set level's median in-mask SNR, which leaderboard headers show beside the
        nominal whole-box SNR (a store outlives the data sets it scored)."""
        with self.transaction():
            self.connection.execute("INSERT OR REPLACE INTO snr_levels VALUES (?, ?, ?)",
                                    (dataset_hash, snr, None if mask_snr is None or math.isinf(mask_snr) else mask_snr))

    def frame(self) -> pd.DataFrame:
        """Every episode row as a DataFrame, with its level's median in-mask SNR (``mask_snr``,
        NaN where unknown: noise-free levels, stores from before schema 7)."""
        frame = pd.read_sql_query(
            "SELECT e.*, l.mask_snr FROM episodes e LEFT JOIN snr_levels l "
            "ON l.dataset_hash = e.dataset_hash AND l.snr = e.snr ORDER BY e.id", self.connection)
        return frame.assign(mask_snr=frame["mask_snr"].astype(float))

    def query_predictions_frame(self) -> pd.DataFrame:
        """Every stored query's true and predicted class, with its row's identity."""
        return pd.read_sql_query(
            "SELECT q.*, e.label, e.method, e.variant, e.params_hash, e.budget, e.seed, e.snr, e.n_way, e.k_shot, "
            "e.dataset, e.train_dataset FROM query_predictions q "
            "JOIN episodes e ON e.cell = q.cell AND e.episode = q.episode", self.connection)

    def query_dice_frame(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT q.*, e.label, e.snr, e.n_way, e.k_shot, e.dataset, e.train_dataset FROM query_dice q "
            "JOIN episodes e ON e.cell = q.cell AND e.episode = q.episode", self.connection)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """Context manager: a daemon thread, with its own connection, that refreshes a training
    claim every :data:`HEARTBEAT_SECONDS` until the block ends; a process killed with ``kill -9``
    stops beating and its claim goes stale."""

    def __init__(self, path: Path, identity: str, owner: str) -> None:
        self.path, self.identity, self.owner = path, identity, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fsc-heartbeat")

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    connection.execute("UPDATE fits SET heartbeat = ? WHERE identity = ? AND owner = ?",
                                       (time.time(), self.identity, self.owner))
                except sqlite3.Error:
                    pass  # a busy database: the next beat will do
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
