"""Optuna storages for tuning studies: SQLite files or any SQLAlchemy URL (PostgreSQL), with
heartbeats so a killed worker's trial is failed by the next one, and one-line errors that never
print the password."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from fewshot_cryoet.core.errors import SettingError

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///fsc-tune.sqlite"
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60


def safe_url(url: str) -> str:
    """The storage URL with every password form masked, for messages (see ``redact``)."""
    from fewshot_cryoet.core.redact import mask_secrets

    return mask_secrets(url)


def open_storage(url: str, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats (so killed trials get marked failed), or a clear one-line
    error saying which host could not be reached and how to fix it, without the password.
    ``must_exist`` (for reading studies) refuses a SQLite file that is not there instead of
    creating an empty database as a side effect."""
    import optuna
    import sqlalchemy.exc

    from fewshot_cryoet.core.databases import (
        missing_driver,
        parse_url,
        unreachable,
        with_installed_postgres_driver,
    )

    parsed = parse_url(url, "storage", "sqlite:///fsc-tune.sqlite or postgresql://user:password@host:5432/db")
    if must_exist and parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).exists():
        raise SettingError("storage", f"storage {safe_url(url)}: no such tuning database ({parsed.database}); "
                                      "run fsc tune run first, or give the storage it used")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # fsc reports trials itself
    parsed = with_installed_postgres_driver(parsed)
    try:
        return _rdb_storage(parsed.render_as_string(hide_password=False), sqlite=parsed.drivername.startswith("sqlite"))
    except ImportError:
        raise missing_driver("storage", parsed) from None
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        raise unreachable("tuning storage", parsed, exc) from None


def _rdb_storage(url: str, sqlite: bool, attempts: int = 5):
    """RDBStorage, retried a few times: workers started together race to create the schema on a
    fresh database, and the loser sees a duplicate-table or duplicate-key error for a moment."""
    import warnings

    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                    # SQLite: wait for the other workers' write locks instead of failing at once.
                    engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True},
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            transient = any(word in str(exc).lower() for word in ("locked", "already exists", "duplicate"))
            refused = isinstance(exc, sqlalchemy.exc.OperationalError) and not transient
            if refused or attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")
