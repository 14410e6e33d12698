"""Database URLs shared by the results store (``--store``) and tuning studies (``--storage``).

Both accept a SQLite file or a PostgreSQL URL through SQLAlchemy (the library Optuna already
brings). This module holds what they share: parsing a URL without ever printing its password,
naming an installed PostgreSQL driver, and one-line errors for a server that cannot be reached.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.core.redact import mask_secrets

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


def parse_url(url: str, option: str, example: str):
    """The SQLAlchemy URL of ``url``, or a one-line error naming ``option`` (``url`` masked)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:
        raise SettingError(option, f"{option} {mask_secrets(url)!r}: not a database URL (e.g. {example})") from None


def with_installed_postgres_driver(parsed: URL) -> URL:
    """``postgresql://`` names no driver and SQLAlchemy's default changed between versions
    (psycopg2 up to 2.0, psycopg 3 from 2.1): name whichever is installed."""
    if parsed.drivername == "postgresql":
        for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
            if importlib.util.find_spec(module) is not None:
                return parsed.set(drivername=driver)
    return parsed


def missing_driver(option: str, parsed: URL) -> SettingError:
    """The error for a URL whose database driver is not installed."""
    return SettingError(option, f"{option} {display(parsed)}: no database driver for {parsed.drivername} is "
                                "installed; for PostgreSQL: pip install 'fewshot-cryoet[postgres]' (psycopg 3)")


def unreachable(what: str, parsed: URL, exc: BaseException) -> FscError:
    """A one-line error for a database that could not be opened: which host, the driver's first
    line of reason, and no password (masked in every form, and the URL's own password removed
    wherever the driver echoed it)."""
    host = f"{parsed.host}:{parsed.port or 'default port'}" if parsed.host else (parsed.database or display(parsed))
    reason = first_line(exc)
    for secret in (parsed.password, parsed.query.get("password")):
        if isinstance(secret, str) and secret:
            reason = reason.replace(secret, "***")
    return FscError(f"cannot open {what} {display(parsed)} at {host}: {mask_secrets(reason)}; check that the server is "
                    "running and reachable, and the user, password and database in the URL")


def first_line(exc: BaseException) -> str:
    """The first line of what the database driver said (the original error under SQLAlchemy's
    wrapper), or the error's type when it said nothing."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def display(parsed: URL) -> str:
    """The URL as users wrote it, password masked."""
    return mask_secrets(parsed.render_as_string(hide_password=True))
