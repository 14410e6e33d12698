"""Terminal output of the command line: one-line errors and warnings (credentials masked, user text
never read as rich markup), rich progress bars fed by the library's reporter, and tables of the
DataFrames the API returns."""

from __future__ import annotations

import time

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.core.redact import mask_secrets
from fewshot_cryoet.core.reporting import Reporter, Task

#: Width of output that goes to a file or pipe (nohup, CI logs): wide enough that tables and
#: paths do not wrap at rich's default of 80 columns.
PIPE_WIDTH = 200
#: How often a task prints a plain progress line when output is not a terminal.
PLAIN_PROGRESS_SECONDS = 30.0


def make_console(stderr: bool = False) -> Console:
    """A console that uses the terminal's width, or :data:`PIPE_WIDTH` when output is piped."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


console = make_console(stderr=True)


def print_error(message: object) -> None:
    """One error line on stderr, credentials masked, printed literally (``tomo[raw].mrc``)."""
    console.print(Text.assemble(("fsc: error: ", "bold red"), mask_secrets(str(message))), highlight=False,
                  soft_wrap=True)


def print_warning(message: object) -> None:
    console.print(Text.assemble(("fsc: warning: ", "yellow"), mask_secrets(str(message))), highlight=False,
                  soft_wrap=True)


def say(message: object, console_: Console | None = None) -> None:
    """A plain line (paths, labels, numbers) printed literally, credentials masked."""
    (console_ or make_console()).print(mask_secrets(str(message)), markup=False, highlight=False, soft_wrap=True)


def error_text(exc: FscError) -> str:
    """The message, with a library setting's name shown as its option (``budget`` → ``--budget``)."""
    if isinstance(exc, SettingError):
        return exc.with_option("--" + exc.setting.replace("_", "-"))
    return str(exc)


class RichReporter(Reporter):
    """Library progress as rich progress bars, log lines printed above them. When output is not a
    terminal (nohup, pipes, CI logs), bars cannot redraw, so each task also prints a plain line
    when it starts, every :data:`PLAIN_PROGRESS_SECONDS`, and when it ends."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.plain = not progress.console.is_terminal
        self._printed: dict[int, tuple[float, float]] = {}  # task → (when, completed) of its last line

    def _start(self, task: Task) -> object:
        key = self.progress.add_task(task.description, total=task.total, completed=task.completed)
        if self.plain:
            self._plain_line(task, force=True)
        return key

    def _update(self, task: Task) -> None:
        self.progress.update(task.key, completed=task.completed)
        if self.plain:
            self._plain_line(task, force=task.total is not None and task.completed >= task.total)

    def _plain_line(self, task: Task, force: bool) -> None:
        now = time.monotonic()
        last = self._printed.get(id(task))
        if last is not None and (last[1] == task.completed or (not force and now - last[0] < PLAIN_PROGRESS_SECONDS)):
            return  # nothing new, or too soon
        self._printed[id(task)] = (now, task.completed)
        if task.total:
            done = f"{task.completed:g}/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
        else:
            done = f"{task.completed:g}"
        say(f"{task.description}: {done}", self.progress.console)

    def log(self, message: str) -> None:
        say(message, self.progress.console)


def progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def print_table(frame: pd.DataFrame, title: str, console_: Console | None = None, markup_columns: tuple = ()) -> None:
    """A DataFrame as a rich table: text columns left, numbers right, cells printed literally
    except ``markup_columns`` (cells the program formatted itself, e.g. bold ties)."""
    out = console_ or make_console()
    out.print(Text(mask_secrets(title), style="italic"), soft_wrap=True)  # a title line never wraps to the table's width
    table = Table()
    for column in frame.columns:
        table.add_column(str(column), justify="right" if pd.api.types.is_numeric_dtype(frame[column]) else "left",
                         overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) if c in markup_columns else escape(str(v)) for c, v in zip(frame.columns, row)))
    out.print(table)
