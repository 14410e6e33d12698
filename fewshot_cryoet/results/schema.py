"""The results store's tables, one definition for SQLite and PostgreSQL.

The tables are declared once with SQLAlchemy Core, so each database gets its own column types
(``FLOAT`` is a double on both; PostgreSQL's ``REAL`` would be single precision, and the same grid
must give the same numbers on either store). Stores written by older versions (SQLite only, the
only kind they wrote) are brought up to date in place by :data:`MIGRATIONS`.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 8

metadata = MetaData()

Table("meta", metadata, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))

Table(
    "episodes", metadata,
    Column("id", Integer, primary_key=True),
    Column("cell", Text, nullable=False),
    *(Column(name, Text, nullable=False) for name in ("method", "variant", "label", "params_hash", "params")),
    Column("profile", Text), Column("budget", Text),
    Column("dataset", Text, nullable=False), Column("dataset_hash", Text, nullable=False),
    Column("snr", Text, nullable=False),
    *(Column(name, Integer, nullable=False) for name in ("n_way", "k_shot", "q_query", "seed", "episode")),
    Column("accuracy", Float, nullable=False), Column("dice", Float), Column("dice_crf", Float),
    Column("predict_seconds", Float, nullable=False), Column("fit_seconds", Float), Column("fit_episodes", Integer),
    Column("val_accuracy", Float),
    *(Column(name, Text, nullable=False) for name in ("device", "package_version", "plugin", "created")),
    Column("checkpoint", Text),
    Column("train_dataset", Text, nullable=False, server_default=""),
    Column("train_dataset_hash", Text, nullable=False, server_default=""),
    Column("fit_examples", Integer), Column("train_seed", Integer),
    UniqueConstraint("cell", "episode"),
    Index("episodes_by_cell", "cell"),
)

def _per_query_table(name: str, *columns: Column) -> Table:
    """A table with one row per query of a stored episode, keyed by (cell, episode, query)."""
    return Table(
        name, metadata,
        Column("cell", Text, nullable=False), Column("episode", Integer, nullable=False),
        Column("query", Integer, nullable=False), *columns,
        PrimaryKeyConstraint("cell", "episode", "query"),
    )


_per_query_table("query_dice", Column("class", Text, nullable=False), Column("dice", Float, nullable=False),
                 Column("dice_crf", Float))
_per_query_table("query_predictions", Column("truth", Text, nullable=False), Column("predicted", Text, nullable=False),
                 Column("confidence", Float))

# Claims: one row per training, or per chunk of a cell's test episodes, held by the process whose
# heartbeat (seconds since the epoch, by the database's clock on PostgreSQL) is recent.
Table(
    "fits", metadata,
    Column("identity", Text, primary_key=True), Column("state", Text, nullable=False),
    Column("owner", Text, nullable=False), Column("host", Text, nullable=False), Column("pid", Integer, nullable=False),
    Column("heartbeat", Float, nullable=False), Column("checkpoint_hash", Text), Column("report", Text),
)

Table(
    "snr_levels", metadata,
    Column("dataset_hash", Text, nullable=False), Column("snr", Text, nullable=False), Column("mask_snr", Float),
    PrimaryKeyConstraint("dataset_hash", "snr"),
)

# The grid every bench invocation (every worker) asked for, cell by cell, so that ``fsc bench
# --status`` can say what is pending from the store alone.
Table(
    "planned_cells", metadata,
    Column("cell", Text, primary_key=True), Column("label", Text, nullable=False),
    Column("dataset", Text, nullable=False), Column("snr", Text, nullable=False),
    Column("n_way", Integer, nullable=False), Column("k_shot", Integer, nullable=False),
    Column("train_seed", Integer), Column("episodes", Integer, nullable=False),
)

OUR_TABLES = frozenset(metadata.tables)

#: What each older schema version lacks: columns added in place when such a store is opened (the
#: tables it lacks are created afterwards, as for a new store).
MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE episodes ADD COLUMN checkpoint TEXT"],
    2: ["ALTER TABLE episodes ADD COLUMN train_dataset TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE episodes ADD COLUMN train_dataset_hash TEXT NOT NULL DEFAULT ''"],
    3: ["ALTER TABLE episodes ADD COLUMN fit_examples INTEGER"],
    4: ["ALTER TABLE episodes ADD COLUMN train_seed INTEGER"],
    5: [],  # the query_predictions table
    6: [],  # the snr_levels table
    7: [],  # the planned_cells table
}
