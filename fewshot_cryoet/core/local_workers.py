"""Helper processes a command starts on this machine to share its work (``fsc bench --workers``,
``benchmarks/robustness.py --workers``): they belong to that command and end with it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path


def cpu_threads(workers: int) -> int:
    """Torch threads per process when ``workers`` processes share this machine's cores: an even
    split, at least one, so the processes do not oversubscribe the cores and slow each other."""
    return max(1, (os.cpu_count() or 1) // workers)


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps a started process's OpenMP/MKL pools at ``threads`` (torch reads
    these at start-up, before the process could call ``torch.set_num_threads`` itself)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def launch(command: list[str], log: Path, env: dict[str, str], helpers: list[subprocess.Popen]) -> None:
    """Start one helper running ``command`` with ``env`` added to ours, its output (stdout and
    stderr) in ``log``, and append it to ``helpers`` at once, so that ``stopped_on_exit`` also
    covers a helper started just before an error."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:  # the helper keeps its own copy of the handle
        helpers.append(subprocess.Popen(command, env=dict(os.environ, **env), stdout=handle,
                                        stderr=subprocess.STDOUT))


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
