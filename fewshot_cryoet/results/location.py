"""Where a results store lives: a SQLite file (the embedded default) or a PostgreSQL database that
workers on several machines share.

``--store`` takes a file path, ``sqlite:///FILE`` or ``postgresql://user:password@host/db``. The
folders that go with a store (trained checkpoints, worker logs) sit beside a SQLite file; a
PostgreSQL store has no "beside", so they default to the current folder, named after the
database, and workers on several machines name a shared ``--models`` folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.redact import mask_secrets

#: The store ``fsc bench`` and ``fsc leaderboard`` use when none is given.
DEFAULT_STORE = "fsc-results.sqlite"
URL_EXAMPLE = "fsc-results.sqlite or postgresql://user:password@host:5432/db"


@dataclass(frozen=True)
class StoreLocation:
    """A parsed ``--store``: ``url`` for SQLAlchemy (driver named), ``path`` for a SQLite file
    (None for a server), and ``name`` for messages, password masked."""

    url: object
    path: Path | None
    name: str

    @property
    def is_sqlite(self) -> bool:
        return self.path is not None

    @property
    def label(self) -> str:
        """How generated pages name the store: the file's name, or the URL without its password."""
        return self.path.name if self.path is not None else self.name

    @property
    def stem(self) -> str:
        """A short name: the file's stem, or the database's name."""
        if self.path is not None:
            return self.path.stem
        return re.sub(r"[^\w.-]+", "-", str(self.url.database)).strip("-.") or "store"

    def sibling(self, suffix: str) -> Path:
        """A folder that belongs to this store: ``<file stem><suffix>`` beside a SQLite file,
        ``fsc-<database><suffix>`` in the current folder for a server."""
        if self.path is not None:
            return self.path.with_name(self.path.stem + suffix)
        return Path(f"fsc-{self.stem}{suffix}")

    def __str__(self) -> str:
        return self.name


def locate(store: str | Path | StoreLocation) -> StoreLocation:
    """Parse ``--store``: a path (or ``sqlite:///path``) is a SQLite file; ``postgresql://`` (with or
    without a ``+driver``) a server; any other scheme is refused, naming the option."""
    from fewshot_cryoet.core.databases import display, parse_url, with_installed_postgres_driver

    if isinstance(store, StoreLocation):
        return store
    text = str(store)
    if "://" not in text and re.match(r"\s*\w+\s*=", text):
        raise SettingError("store", f"store {mask_secrets(text)}: looks like libpq key=value settings, not a file; give a "
                                    "postgresql:// URL (or a file name without '=')")
    if "://" not in text:
        from sqlalchemy.engine import URL

        path = Path(text)
        return StoreLocation(URL.create("sqlite", database=str(path)), path, str(path))
    parsed = parse_url(text, "store", URL_EXAMPLE)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise SettingError("store", f"store {text}: give a file, e.g. sqlite:///fsc-results.sqlite (an in-memory "
                                        "store would lose every result)")
        return StoreLocation(parsed, Path(parsed.database), parsed.database)
    if backend == "postgresql":
        if not parsed.database:
            raise SettingError("store", f"store {mask_secrets(text)}: name the database, e.g. {URL_EXAMPLE.split(' or ')[1]}")
        return StoreLocation(with_installed_postgres_driver(parsed), None, display(parsed))
    raise SettingError("store", f"store {mask_secrets(text)}: {backend} is not supported; give a SQLite file or a "
                                "postgresql:// URL")
