"""One validator for results rows that come from outside this process: an archive from another
machine (``fsc bench --archive``), or any caller of :meth:`ResultsStore.add_cell_rows`.

Why: a results archive is data someone else wrote. SHA-256 sums in its ``cell.json`` prove the
files were not changed since that ``cell.json`` was written, not that what was written is true; a
crafted archive with correct sums once put a fake best row, accuracies of ``inf`` and ``-50``,
and rows of another data set into a store. Every row is therefore checked against the store's
schema (the columns each table has, their types and NULLs) and against what its values may be
(accuracies and Dice in [0, 1], finite non-negative times, sizes that make sense, hashes that are
hex, text without control characters and of bounded length), before anything is inserted.
Errors are one line naming the file, the row and the column.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sqlalchemy import Float, Integer, Text

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.strict_json import shown
from fewshot_cryoet.results.schema import metadata

#: Values in [0, 1].
FRACTIONS = {"accuracy", "dice", "dice_crf", "val_accuracy", "confidence"}
#: Finite values ≥ 0 (seconds).
DURATIONS = {"predict_seconds", "fit_seconds"}
#: Integers and their smallest allowed value.
SMALLEST = {"n_way": 2, "k_shot": 1, "q_query": 1, "episodes": 1, "seed": 0, "episode": 0, "query": 0,
            "fit_episodes": 0, "fit_examples": 0, "train_seed": 0}
#: Integers above this are not a count any run makes (and would overflow a 64-bit column).
LARGEST_INT = 2**53
#: Text columns that are hex digests, and their length range.
HEX = {"cell": (20, 20), "params_hash": (8, 64), "dataset_hash": (8, 64), "train_dataset_hash": (0, 64),
       "checkpoint": (8, 64)}
#: Longest text value: a method's parameters as JSON are about 1.3 kB.
MAX_TEXT = 20_000
HEX_DIGITS = re.compile(r"[0-9a-f]*")
SNR = re.compile(r"inf|recorded|[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_rows(table: str, rows: Any, where: str) -> None:
    """Raise a one-line :class:`FscError` naming ``where``, the row and the column unless every row
    of ``rows`` fits ``table``: a dict with the table's columns (those without a default present,
    no others), each value of its column's type and within its range."""
    if table not in metadata.tables or table in ("meta", "fits"):
        raise FscError(f"{where}: {table!r} is not a table of results rows")
    if not isinstance(rows, list):
        raise FscError(f"{where}: {table} rows must be a list, not {type(rows).__name__}")
    columns = {c.name: c for c in metadata.tables[table].columns if not (table == "episodes" and c.name == "id")}
    required = {n for n, c in columns.items() if not c.nullable and c.server_default is None}
    for i, row in enumerate(rows):
        at = f"{where}: {table} row {i + 1}"
        if not isinstance(row, dict):
            raise FscError(f"{at} is {type(row).__name__}, not an object")
        extra, missing = sorted(set(row) - set(columns)), sorted(required - set(row))
        if extra or missing:
            raise FscError(f"{at}: " + "; ".join(
                part for part in (f"unknown column(s) {', '.join(map(str, extra))}" if extra else "",
                                  f"missing column(s) {', '.join(missing)}" if missing else "") if part))
        for name, value in row.items():
            problem = _problem(name, value, columns[name])
            if problem:
                raise FscError(f"{at}, column {name}: {problem}")


def _problem(name: str, value: Any, column) -> str:
    """What is wrong with one value, or ""."""
    if value is None:
        return "" if column.nullable else "is empty, and the column may not be"
    kind = type(column.type)
    if kind is Integer:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{shown(value)} is not an integer"
        if not SMALLEST.get(name, -LARGEST_INT) <= value <= LARGEST_INT:
            return f"{value} is out of range (at least {SMALLEST.get(name, -LARGEST_INT)})"
        return ""
    if kind is Float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{shown(value)} is not a number"
        if not math.isfinite(value):
            return f"{value} is not finite"
        if name in FRACTIONS and not 0.0 <= value <= 1.0:
            return f"{value} is outside [0, 1]"
        if name in DURATIONS and value < 0:
            return f"{value} is negative"
        if name == "mask_snr" and value <= 0:
            return f"{value} is not a positive SNR"
        return ""
    if kind is Text:
        if not isinstance(value, str):
            return f"{shown(value)} is not text"
        if len(value) > MAX_TEXT:
            return f"text of {len(value)} characters (at most {MAX_TEXT})"
        if CONTROL.search(value):
            return "holds control characters (a newline or tab would break tables and logs)"
        if name in HEX:
            low, high = HEX[name]
            if not (low <= len(value) <= high and HEX_DIGITS.fullmatch(value)):
                return f"{value!r} is not a hex digest of {low}–{high} digits"
        if name == "snr" and not SNR.fullmatch(value):
            return f"{value!r} is not an SNR level (a positive number, inf or recorded)"
        if name == "params":
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                return "is not a JSON object of hyper-parameters"
        return ""
    return ""
