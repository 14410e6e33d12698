"""Terminal output of the command line: one-line errors and warnings (credentials masked, user text
never read as rich markup), rich progress bars fed by the library's reporter, and tables of the
DataFrames the API returns."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from fewshot_cryoet.errors import FscError, SettingError
from fewshot_cryoet.redact import mask_secrets
from fewshot_cryoet.reporting import Reporter, Task

console = Console(stderr=True)


def print_error(message: object) -> None:
    """One error line on stderr, credentials masked, printed literally (``tomo[raw].mrc``)."""
    console.print(Text.assemble(("fsc: error: ", "bold red"), mask_secrets(str(message))), highlight=False,
                  soft_wrap=True)


def print_warning(message: object) -> None:
    console.print(Text.assemble(("fsc: warning: ", "yellow"), mask_secrets(str(message))), highlight=False,
                  soft_wrap=True)


def say(message: object, console_: Console | None = None) -> None:
    """A plain line (paths, labels, numbers) printed literally, credentials masked."""
    (console_ or Console()).print(mask_secrets(str(message)), markup=False, highlight=False, soft_wrap=True)


def error_text(exc: FscError) -> str:
    """The message, with a library setting's name shown as its option (``budget`` → ``--budget``)."""
    if isinstance(exc, SettingError):
        return exc.with_option("--" + exc.setting.replace("_", "-"))
    return str(exc)


class RichReporter(Reporter):
    """Library progress as rich progress bars, log lines printed above them."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def _start(self, task: Task) -> object:
        return self.progress.add_task(task.description, total=task.total, completed=task.completed)

    def _update(self, task: Task) -> None:
        self.progress.update(task.key, completed=task.completed)

    def log(self, message: str) -> None:
        say(message, self.progress.console)


def progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def print_table(frame: pd.DataFrame, title: str, console_: Console | None = None, markup_columns: tuple = ()) -> None:
    """A DataFrame as a rich table: text columns left, numbers right, cells printed literally
    except ``markup_columns`` (cells the program formatted itself, e.g. bold ties)."""
    table = Table(title=escape(title))
    for column in frame.columns:
        table.add_column(str(column), justify="right" if pd.api.types.is_numeric_dtype(frame[column]) else "left",
                         overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) if c in markup_columns else escape(str(v)) for c, v in zip(frame.columns, row)))
    (console_ or Console()).print(table)
