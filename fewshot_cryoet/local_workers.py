"""Helper processes a command starts on this machine to share its work (``fsc bench --workers``,
``benchmarks/robustness.py --workers``): they belong to that command and end with it."""

from __future__ import annotations

import contextlib
import subprocess


@contextlib.contextmanager
def stopped_on_exit(helpers: list[subprocess.Popen]):
    """If the command stops early (Ctrl-C, SIGTERM, an error), terminate the helpers it started
    (each releases its claims, as on Ctrl-C) rather than leave them running unseen after the
    command the user started has ended. A normal end leaves them to finish their share."""
    try:
        yield
    except BaseException:
        for helper in helpers:
            if helper.poll() is None:
                helper.terminate()
        for helper in helpers:
            try:
                helper.wait(timeout=60)
            except subprocess.TimeoutExpired:
                helper.kill()
        raise
