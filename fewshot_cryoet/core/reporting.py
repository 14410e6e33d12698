"""Progress and log lines from the library to whoever called it.

Library code never draws progress bars: it reports through a :class:`Reporter`. The default is
silent; :class:`CallbackReporter` turns every event into a call of a plain function (handy in a
notebook); the command line passes a reporter that drives rich progress bars. So the same
``fewshot_cryoet.api`` call runs quietly in a script, verbosely in a notebook and with bars in a
terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class ProgressEvent:
    """One step of a named task: ``completed`` out of ``total`` (None when unknown)."""

    task: str
    completed: float
    total: float | None


class Task:
    """A handle on one task of a reporter."""

    def __init__(self, reporter: Reporter, key: object, description: str, total: float | None,
                 completed: float) -> None:
        self.reporter, self.key, self.description, self.total = reporter, key, description, total
        self.completed = completed

    def advance(self, amount: float = 1) -> None:
        self.update(self.completed + amount)

    def update(self, completed: float) -> None:
        self.completed = completed
        self.reporter._update(self)


class Reporter:
    """Silent by default; subclasses override ``_start``, ``_update`` and ``log``."""

    def task(self, description: str, total: float | None = None, completed: float = 0) -> Task:
        task = Task(self, None, description, total, completed)
        task.key = self._start(task)
        return task

    def log(self, message: str) -> None:
        """A line for the user (a plain string, never markup)."""

    def _start(self, task: Task) -> object:
        return None

    def _update(self, task: Task) -> None:
        pass


class CallbackReporter(Reporter):
    """Calls ``on_progress(ProgressEvent)`` on every step and ``on_log(str)`` for every line."""

    def __init__(self, on_progress: Callable[[ProgressEvent], None] | None = None,
                 on_log: Callable[[str], None] | None = print) -> None:
        self.on_progress, self.on_log = on_progress, on_log

    def _start(self, task: Task) -> object:
        self._update(task)
        return None

    def _update(self, task: Task) -> None:
        if self.on_progress is not None:
            self.on_progress(ProgressEvent(task.description, task.completed, task.total))

    def log(self, message: str) -> None:
        if self.on_log is not None:
            self.on_log(message)


def as_reporter(reporter: Reporter | None) -> Reporter:
    return reporter if reporter is not None else Reporter()
