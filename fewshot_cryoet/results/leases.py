"""Claims as leases: how long a claim lives without a heartbeat, whether its holder on this host is
still alive, and the heartbeat thread that keeps it."""

from __future__ import annotations

import os
import threading
from typing import Callable

import sqlalchemy
from sqlalchemy import text

#: A claim whose heartbeat is older than this (seconds) is taken over by another process (a
#: process of the same host that is gone loses it at once).
STALE_SECONDS = 120.0
#: A claim's heartbeat, as a share of its lease: several beats may be missed before it lapses.
HEARTBEATS_PER_LEASE = 8


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """Context manager: a daemon thread, with its own connection, that refreshes a claim
    ``HEARTBEATS_PER_LEASE`` times per lease until the block ends; a process killed with
    ``kill -9`` stops beating and its claim lapses."""

    def __init__(self, engine: sqlalchemy.Engine, identity: str, owner: str, lease_seconds: float,
                 now: Callable[[sqlalchemy.Connection], float]) -> None:
        self.engine, self.identity, self.owner, self.now = engine, identity, owner, now
        self.interval = lease_seconds / HEARTBEATS_PER_LEASE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fsc-heartbeat")

    def _run(self) -> None:
        try:
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sqlalchemy.exc.SQLAlchemyError:
            return  # the claim lapses; another process redoes the work
        try:
            while not self._stop.wait(self.interval):
                try:
                    connection.execute(text("UPDATE fits SET heartbeat = :now WHERE identity = :identity AND "
                                            "owner = :owner"),
                                       dict(now=self.now(connection), identity=self.identity, owner=self.owner))
                except sqlalchemy.exc.SQLAlchemyError:
                    pass  # a busy database: the next beat will do
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
