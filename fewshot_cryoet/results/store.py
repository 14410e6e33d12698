"""The results store: one row per evaluated episode, in a SQLite file or a PostgreSQL database.

Each row is committed in its own transaction, so a run killed at any moment, even with
``kill -9``, keeps every finished episode and ``fsc bench --resume`` continues with the first
missing one. A *cell* is one (method, variant, hyper-parameters, budget, data set, SNR, N, K, Q,
seed) combination; its episodes are numbered, so resuming never duplicates or skips one.

Several processes, on one machine or many, may run the same grid on one store (``--worker``):
work is *claimed* in the ``fits`` table before it starts, a training or a chunk of a cell's test
episodes. The claim is a lease: a heartbeat keeps it, and it lapses when the holder stops beating
(killed, or its machine lost) for longer than the lease, or at once when the holder was a process
of this host that is gone. Claims are taken in one transaction with the row locked (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE``), so exactly one process wins. An
episode another process already stored is skipped, and every row records the hash of the
checkpoint that scored it.

Both databases go through SQLAlchemy Core with the same SQL; what differs (how a write
transaction starts, row locks, whose clock a heartbeat uses) is chosen once, in
:class:`ResultsStore`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import sqlalchemy
from sqlalchemy import text

from fewshot_cryoet.core.databases import first_line, missing_driver, unreachable
from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.results.leases import STALE_SECONDS, Heartbeat, pid_alive
from fewshot_cryoet.results.location import StoreLocation, locate
from fewshot_cryoet.results.rows import Cell, Claim, EpisodeResult
from fewshot_cryoet.results.schema import MIGRATIONS, OUR_TABLES, SCHEMA_VERSION, metadata
from fewshot_cryoet.results.validation import check_rows

#: Serialises creating or migrating the tables on PostgreSQL (a transaction-scoped advisory lock).
SCHEMA_LOCK = 0x66736300


class ResultsStore:
    """Open (or create) a results store: a SQLite file path, ``sqlite:///FILE`` or a
    ``postgresql://`` URL.

    Nothing is written to a database that is not already a results store: the tables are checked
    first. A SQLite store we cannot write to is refused here, before any training. With
    ``create=False`` (reading) a store that does not exist is refused instead of created.
    ``lease_seconds``: how long a claim outlives its holder's last heartbeat.
    """

    def __init__(self, store: str | Path | StoreLocation, *, create: bool = True,
                 lease_seconds: float = STALE_SECONDS) -> None:
        self.location = locate(store)
        self.name = self.location.name
        self.lease_seconds = float(lease_seconds)
        if self.lease_seconds <= 0:
            raise SettingError("lease", f"lease {lease_seconds:g} s: must be positive")
        path = self.location.path
        if path is not None:
            if path.is_dir():
                raise SettingError("store", f"store {path}: is a folder; give a file such as fsc-results.sqlite")
            if not path.exists():
                if not create:
                    raise SettingError("store", f"store {path}: no such results store; run bench first")
                from fewshot_cryoet.core.outputs import check_writable_parent

                check_writable_parent(path, "store")
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.engine = self._engine()
        try:
            self.connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sqlalchemy.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            if path is not None:
                raise SettingError("store", f"store {path}: cannot open results store ({first_line(exc)}); "
                                            "choose another store") from None
            raise unreachable("results store", self.location.url, exc) from None
        try:
            self._open(create)
        except BaseException:
            self.close()
            raise

    def _engine(self) -> sqlalchemy.Engine:
        try:
            if self.location.is_sqlite:
                return sqlalchemy.create_engine(self.location.url, connect_args={"timeout": 30},
                                                poolclass=sqlalchemy.pool.NullPool)
            return sqlalchemy.create_engine(self.location.url, poolclass=sqlalchemy.pool.NullPool,
                                            connect_args={"connect_timeout": 10})
        except ImportError:
            raise missing_driver("store", self.location.url) from None

    def _open(self, create: bool) -> None:
        """Check the tables (refusing foreign databases and other schema versions), then create
        or migrate them in one write transaction that re-reads the version, so processes opening a
        new store at once create it exactly once."""
        name = self.name
        try:
            version = self._schema_version()
        except sqlalchemy.exc.DatabaseError as exc:
            raise SettingError("store", f"store {name}: not a results store ({first_line(exc)}); choose another store") from None
        if version is None and not create:
            raise SettingError("store", f"store {name}: no results store there yet; run bench first")
        if version is not None and version != SCHEMA_VERSION and version not in MIGRATIONS:
            raise SettingError("store", f"store {name}: results store has schema version {version}, this fewshot-cryoet "
                                        f"uses {SCHEMA_VERSION}; use another store or the matching version")
        try:
            with self.transaction() as db:
                if not self.location.is_sqlite:
                    db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
                version = self._schema_version()  # again, under the lock: another process may have been first
                if version is None:
                    metadata.create_all(db)
                    db.execute(text("INSERT INTO meta VALUES ('schema_version', :v) ON CONFLICT (key) DO NOTHING"),
                               {"v": str(SCHEMA_VERSION)})
                elif version != SCHEMA_VERSION:
                    for step in range(version, SCHEMA_VERSION):
                        for statement in MIGRATIONS[step]:
                            db.execute(text(statement))
                    if version < 5:  # rows so far were written before training seeds were stored
                        db.execute(text("INSERT INTO meta SELECT 'rows_before_training_seeds', "
                                        "CAST(COALESCE(MAX(id), 0) AS TEXT) FROM episodes WHERE TRUE ON CONFLICT (key) DO NOTHING"))
                    metadata.create_all(db)
                    db.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION)})
                else:  # probe: a read-only file fails now, not after training
                    db.execute(text("UPDATE meta SET value = value WHERE key = 'schema_version'"))
            if self.location.is_sqlite:
                self.connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                self.connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
        except sqlalchemy.exc.DatabaseError as exc:
            raise SettingError("store", f"store {name}: cannot write to the results store ({first_line(exc)}); check its "
                                        "permissions or choose another --store") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlalchemy.Connection]:
        """One write transaction, taken at once, so read-then-write is atomic across processes
        (SQLite: ``BEGIN IMMEDIATE`` locks the file; PostgreSQL: rows are locked as read, see
        :meth:`claim`)."""
        self.connection.exec_driver_sql("BEGIN IMMEDIATE" if self.location.is_sqlite else "BEGIN")
        try:
            yield self.connection
        except BaseException:
            self.connection.exec_driver_sql("ROLLBACK")
            raise
        self.connection.exec_driver_sql("COMMIT")

    def _schema_version(self) -> int | None:
        """None for an empty database (PostgreSQL: one without our tables, e.g. one that holds
        Optuna's studies too); the version a results store records; an error for anything else."""
        tables = set(sqlalchemy.inspect(self.connection).get_table_names())
        ours = tables & OUR_TABLES
        foreign = tables - OUR_TABLES if self.location.is_sqlite else set()
        if "meta" not in tables or foreign:
            if ours or foreign:
                raise SettingError("store", f"store {self.name}: {'SQLite file' if self.location.is_sqlite else 'database'} "
                                            "is not a fewshot-cryoet results store (left unchanged); choose another store")
            return None
        row = self.connection.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None:
            connection.close()
        self.engine.dispose()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _now(self, db: sqlalchemy.Connection) -> float:
        """Seconds since the epoch by the clock every holder of a claim shares: the server's on
        PostgreSQL (machines' clocks may differ), this machine's for a SQLite file."""
        if self.location.is_sqlite:
            return time.time()
        return float(db.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")).scalar_one())

    def done_episodes(self, cell: Cell) -> set[int]:
        rows = self.connection.execute(text("SELECT episode FROM episodes WHERE cell = :cell"), {"cell": cell.key})
        return {r[0] for r in rows}

    def add(self, cell: Cell, result: EpisodeResult, *, fit_seconds: float | None, fit_episodes: int | None,
            val_accuracy: float | None, device: str, package_version: str, plugin: str,
            checkpoint: str | None = None, fit_examples: int | None = None) -> bool:
        """Write one episode (and its per-query Dice) in a single transaction; False when another
        process already stored that episode (the same fit gives the same numbers)."""
        key = cell.key  # a hash of the whole cell: once per episode, not once per query row
        row = asdict(cell)
        row.update(
            cell=key, episode=result.episode, accuracy=result.accuracy, dice=result.dice,
            dice_crf=result.dice_crf, predict_seconds=result.predict_seconds, fit_seconds=fit_seconds,
            fit_episodes=fit_episodes, fit_examples=fit_examples, val_accuracy=val_accuracy, device=device,
            package_version=package_version, plugin=plugin, checkpoint=checkpoint,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        columns = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)
        with self.transaction() as db:
            inserted = db.execute(text(f"INSERT INTO episodes ({columns}) VALUES ({marks}) "
                                       "ON CONFLICT (cell, episode) DO NOTHING"), row).rowcount
            if inserted and result.query_dice:
                db.execute(text("INSERT INTO query_dice VALUES (:c, :e, :q, :k, :d, :dc)"),
                           [dict(c=key, e=result.episode, q=q, k=k, d=d, dc=dc) for q, k, d, dc in result.query_dice])
            if inserted and result.query_classes:
                db.execute(text("INSERT INTO query_predictions VALUES (:c, :e, :q, :t, :p, :f)"),
                           [dict(c=key, e=result.episode, q=q, t=t, p=p, f=f) for q, t, p, f in result.query_classes])
        return bool(inserted)

    def plan(self, cells: list[Cell], episodes: int) -> None:
        """Record that a bench asked for ``episodes`` test episodes of each cell (the largest
        request is kept), for :meth:`progress_frame`."""
        rows = [dict(cell=c.key, label=c.label, dataset=c.dataset, snr=c.snr, n_way=c.n_way, k_shot=c.k_shot,
                     train_seed=c.train_seed if c.train_seed is not None else c.seed, episodes=episodes) for c in cells]
        with self.transaction() as db:
            db.execute(text("INSERT INTO planned_cells VALUES (:cell, :label, :dataset, :snr, :n_way, :k_shot, "
                            ":train_seed, :episodes) ON CONFLICT (cell) DO UPDATE SET episodes = excluded.episodes "
                            "WHERE excluded.episodes > planned_cells.episodes"), rows)

    def progress_frame(self) -> pd.DataFrame:
        """One row per planned cell: episodes planned and stored, chunks of test episodes claimed
        now (held by a worker, not done), and a state: done, running (a chunk is claimed) or
        pending."""
        planned = self._read("SELECT p.*, (SELECT COUNT(*) FROM episodes e WHERE e.cell = p.cell) AS stored "
                             "FROM planned_cells p ORDER BY p.label, p.dataset, p.snr, p.n_way, p.k_shot, p.train_seed")
        claims = self.claims_frame()
        held = claims[(claims["state"] == "training") & claims["identity"].str.startswith("eval-")]
        running = held["identity"].str.split("-").str[1].value_counts()
        planned["claimed chunks"] = planned["cell"].map(running).fillna(0).astype(int)
        planned["state"] = ["done" if stored >= wanted else "running" if chunks else "pending"
                            for stored, wanted, chunks in zip(planned["stored"], planned["episodes"],
                                                              planned["claimed chunks"])]
        return planned

    def checkpoints(self, cell: Cell) -> set[str]:
        """Checkpoint hashes the cell's stored episodes were scored with (rows from before
        checkpoints were recorded say nothing)."""
        rows = self.connection.execute(text("SELECT DISTINCT checkpoint FROM episodes WHERE cell = :cell AND "
                                            "checkpoint IS NOT NULL"), {"cell": cell.key})
        return {r[0] for r in rows}

    def crf_refined(self, cell: Cell) -> bool | None:
        """Whether the cell's stored episodes with raw Dice were scored with the CRF (any of them
        has a CRF Dice: a CRF that failed on every query of an episode leaves only that one
        empty), or None when none is stored yet."""
        row = self.connection.execute(text("SELECT COUNT(dice), COUNT(dice_crf) FROM episodes WHERE cell = :cell"),
                                      {"cell": cell.key}).one()
        return None if row[0] == 0 else row[1] > 0

    # -- claims: a training, or a chunk of test episodes ---------------------------------------------
    def claim(self, identity: str, stale_after: float | None = None) -> Claim:
        """Claim the work ``identity`` (a training, or a chunk of a cell's test episodes),
        atomically: ``mine`` if nobody holds it (or the holder's heartbeat is older than the lease,
        or it was this host's process and is gone), ``done`` if it was done, else ``busy``.
        Several processes running one grid split its work this way."""
        stale_after = self.lease_seconds if stale_after is None else stale_after
        host, pid = socket.gethostname(), os.getpid()
        with self.transaction() as db:
            now = self._now(db)
            mine = dict(identity=identity, owner=self.owner, host=host, pid=pid, now=now)
            if db.execute(text("INSERT INTO fits (identity, state, owner, host, pid, heartbeat) VALUES "
                               "(:identity, 'training', :owner, :host, :pid, :now) ON CONFLICT (identity) DO NOTHING"),
                          mine).rowcount:
                return Claim("mine", self.owner, host, pid)
            lock = "" if self.location.is_sqlite else " FOR UPDATE"
            state, owner, holder, holder_pid, heartbeat, checkpoint_hash, report = db.execute(
                text("SELECT state, owner, host, pid, heartbeat, checkpoint_hash, report FROM fits "
                     "WHERE identity = :identity" + lock), {"identity": identity}).one()
            if state == "done":
                return Claim("done", owner, holder, holder_pid, now - heartbeat, checkpoint_hash,
                             json.loads(report) if report else None)
            gone = holder == host and not pid_alive(holder_pid)
            if owner != self.owner and now - heartbeat < stale_after and not gone:
                return Claim("busy", owner, holder, holder_pid, now - heartbeat)
            db.execute(text("UPDATE fits SET state = 'training', owner = :owner, host = :host, pid = :pid, "
                            "heartbeat = :now WHERE identity = :identity"), mine)
        return Claim("mine", self.owner, host, pid)

    def finish(self, identity: str, checkpoint_hash: str = "", report: dict | None = None) -> None:
        with self.transaction() as db:
            db.execute(text("UPDATE fits SET state = 'done', checkpoint_hash = :h, report = :r, heartbeat = :now "
                            "WHERE identity = :identity AND owner = :owner"),
                       dict(h=checkpoint_hash, r=json.dumps(report or {}), now=self._now(db), identity=identity,
                            owner=self.owner))

    def release(self, identity: str) -> None:
        """Give up a claim (the work failed or was interrupted) so another process may do it."""
        with self.transaction() as db:
            db.execute(text("DELETE FROM fits WHERE identity = :identity AND owner = :owner AND state = 'training'"),
                       dict(identity=identity, owner=self.owner))

    def heartbeat(self, identity: str) -> Heartbeat:
        """A background thread that keeps this process's claim on ``identity`` fresh."""
        return Heartbeat(self.engine, identity, self.owner, self.lease_seconds, self._now)

    def claims_frame(self) -> pd.DataFrame:
        """Every claim: identity, state, owner and the age of its last heartbeat in seconds (by
        the clock heartbeats are written with)."""
        with self.transaction() as db:  # one snapshot, and the clock read in it
            now = self._now(db)
            frame = pd.read_sql_query(text("SELECT identity, state, owner, host, pid, heartbeat FROM fits"), db)
        return frame.assign(age=now - frame.pop("heartbeat").astype(float))

    def rows_before_training_seeds(self) -> int:
        """The last episode row id written before this store recorded training seeds (0: none),
        set when a store older than schema 5 is migrated."""
        row = self.connection.execute(text("SELECT value FROM meta WHERE key = 'rows_before_training_seeds'")).fetchone()
        return int(row[0]) if row else 0

    def record_snr_level(self, dataset_hash: str, snr: str, mask_snr: float | None) -> None:
        """Keep a data set level's median in-mask SNR, which leaderboard headers show beside the
        nominal whole-box SNR (a store outlives the data sets it scored)."""
        value = None if mask_snr is None or math.isinf(mask_snr) else float(mask_snr)
        with self.transaction() as db:
            db.execute(text("INSERT INTO snr_levels VALUES (:d, :s, :m) ON CONFLICT (dataset_hash, snr) "
                            "DO UPDATE SET mask_snr = excluded.mask_snr"), dict(d=dataset_hash, s=snr, m=value))

    def snr_level(self, dataset_hash: str, snr: str) -> float | None:
        """The in-mask SNR the store holds for a data set's level (None: none held, or noise-free)."""
        return self.connection.execute(text("SELECT mask_snr FROM snr_levels WHERE dataset_hash = :d AND snr = :s"),
                                       dict(d=dataset_hash, s=snr)).scalar()

    def frame(self, **where: object) -> pd.DataFrame:
        """Every episode row as a DataFrame, with its level's median in-mask SNR (``mask_snr``,
        NaN where unknown: noise-free levels, stores from before schema 7).

        Keywords keep only the rows whose column equals a value, or is in a list of values
        (``frame(dataset="default", snr=["inf", "0.5"])``). The database filters them: a run
        that wants its own rows back must not read a large store whole (a 300,000-row store
        took 10 s to read, for every ``api.bench`` call of a grid)."""
        columns = metadata.tables["episodes"].columns
        unknown = sorted(set(where) - set(columns.keys()))
        if unknown:
            raise ValueError(f"episodes have no column {', '.join(unknown)}")
        clauses, values = [], {}
        for i, (column, wanted) in enumerate(sorted(where.items())):
            clauses.append(f"e.{column} IN :where{i}")  # the column is one of the table's, checked above
            values[f"where{i}"] = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
        frame = self._read("SELECT e.*, l.mask_snr FROM episodes e LEFT JOIN snr_levels l "
                           "ON l.dataset_hash = e.dataset_hash AND l.snr = e.snr"
                           + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY e.id", **values)
        # A column that is NULL in every row read comes back as objects: give it the type it has
        # when some rows hold values, so a filtered read and a whole one agree.
        empty = {c.name: float if isinstance(c.type, (sqlalchemy.Float, sqlalchemy.Integer)) else "str"
                 for c in columns if frame[c.name].dtype == object}
        return frame.astype({**empty, "mask_snr": float})

    #: The tables that hold a cell's results, keyed by its ``cell`` column (episodes first: the
    #: query tables' rows belong to its episodes).
    CELL_TABLES = ("episodes", "query_dice", "query_predictions")

    def finished_models(self) -> list[list[str]]:
        """Cells whose planned test episodes are all stored, grouped by the model that scored them:
        a trained model's group holds every cell its checkpoint scored, and is left out while any
        of them is unfinished (a model is final only when all its cells are); a training-free
        cell is a group of its own. Cells scored by two checkpoints are never final."""
        rows = self.connection.execute(text(
            "SELECT p.cell, p.episodes, COUNT(e.id), COUNT(DISTINCT e.checkpoint), MIN(e.checkpoint) "
            "FROM planned_cells p LEFT JOIN episodes e ON e.cell = p.cell GROUP BY p.cell, p.episodes"))
        groups: dict[str, list[tuple[str, bool]]] = {}
        for cell, planned, stored, checkpoints, checkpoint in rows:
            complete = stored >= planned and checkpoints <= 1
            groups.setdefault(checkpoint or f"cell:{cell}", []).append((cell, complete))
        return [sorted(c for c, _ in group) for group in groups.values() if all(done for _, done in group)]

    def cell_rows(self, cell: str) -> dict[str, list[dict]]:
        """A cell's rows, table by table (:data:`CELL_TABLES`, then its ``planned_cells`` row and
        its level's ``snr_levels`` row), without database-made ids: what :meth:`add_cell_rows` takes."""
        read = lambda sql: [dict(r) for r in self.connection.execute(text(sql), {"cell": cell}).mappings()]  # noqa: E731
        tables = {"episodes": [{k: v for k, v in r.items() if k != "id"}
                               for r in read("SELECT * FROM episodes WHERE cell = :cell ORDER BY episode")]}
        for name in self.CELL_TABLES[1:]:
            tables[name] = read(f"SELECT * FROM {name} WHERE cell = :cell ORDER BY episode, query")
        tables["planned_cells"] = read("SELECT * FROM planned_cells WHERE cell = :cell")
        tables["snr_levels"] = read("SELECT DISTINCT l.* FROM snr_levels l JOIN episodes e ON e.cell = :cell "
                                    "AND l.dataset_hash = e.dataset_hash AND l.snr = e.snr")
        return tables

    def stored_episodes(self, cell: str) -> int:
        return int(self.connection.execute(text("SELECT COUNT(*) FROM episodes WHERE cell = :cell"),
                                           {"cell": cell}).scalar_one())

    def add_cell_rows(self, tables: dict[str, list[dict]], checked: bool = False) -> None:
        """Insert one cell's rows (as :meth:`cell_rows` gives them) in a single transaction. Rows the
        store has already are kept (two workers loading one archive at once insert it once). Every
        row is checked against the schema and its ranges first (:func:`~.validation.check_rows`),
        unless the caller did so (``checked``, as an archive does for all its cells at once)."""
        if not checked:
            for name, rows in tables.items():
                check_rows(name, rows, f"rows for {self.name}")
        keys = {"episodes": "(cell, episode)", "query_dice": "(cell, episode, query)",
                "query_predictions": "(cell, episode, query)", "planned_cells": "(cell)",
                "snr_levels": "(dataset_hash, snr)"}
        with self.transaction() as db:
            for name in keys:
                rows = tables.get(name) or []
                if not rows:
                    continue
                columns = sorted(set().union(*rows))
                rows = [{c: row.get(c) for c in columns} for row in rows]
                quoted = ", ".join(f'"{c}"' for c in columns)  # "query" and "class" are reserved words
                db.execute(text(f"INSERT INTO {name} ({quoted}) VALUES ({', '.join(':' + c for c in columns)}) "
                                f"ON CONFLICT {keys[name]} DO NOTHING"), rows)

    #: Each stored query's row identity: enough to tell configurations apart that share a label.
    _QUERY_ROW = ("e.label, e.method, e.variant, e.params_hash, e.budget, e.seed, e.snr, e.n_way, e.k_shot, "
                  "e.dataset, e.train_dataset")

    def query_predictions_frame(self) -> pd.DataFrame:
        """Every stored query's true and predicted class, with its row's identity."""
        return self._read(f"SELECT q.*, {self._QUERY_ROW} FROM query_predictions q "
                          "JOIN episodes e ON e.cell = q.cell AND e.episode = q.episode ORDER BY e.id, q.query")

    def query_dice_frame(self) -> pd.DataFrame:
        """Every stored query's Dice (raw and CRF-refined), with its row's identity."""
        return self._read(f"SELECT q.*, {self._QUERY_ROW} FROM query_dice q "
                          "JOIN episodes e ON e.cell = q.cell AND e.episode = q.episode ORDER BY e.id, q.query")

    def _read(self, sql: str, **lists: list) -> pd.DataFrame:
        """Run a query into a DataFrame; each keyword binds a list of values to ``IN :name``."""
        query = text(sql).bindparams(*(sqlalchemy.bindparam(name, expanding=True) for name in lists))
        return pd.read_sql_query(query, self.connection, params=lists or None)
