"""Tables as a reader sees them on a leaderboard page: one column per field, numbers as numbers.

pandas writes a pivot's row index as a Python tuple (``('protonet', 'synthetic', '0.02', 8)``) and
applies one float format to every column, so SNR 1000 became ``1000.000`` and a count of episodes
``300.000``. Every leaderboard table goes through :func:`markdown_table`, which flattens the index
into columns and formats each column by what it holds.
"""

from __future__ import annotations

import math

import pandas as pd

from fewshot_cryoet.datasets.dataset import snr_label


def _snr_text(value: object) -> str:
    """An SNR level as the rest of the page writes it (``1000``, ``0.02``, ``inf``, ``recorded``)."""
    if isinstance(value, str):
        return value
    return snr_label(float(value))


def _is_whole(values: pd.Series) -> bool:
    present = values.dropna()
    return not present.empty and bool(((present % 1) == 0).all()) and bool(present.abs().lt(2**53).all())


def _column_text(name: str, values: pd.Series, floatfmt: str) -> tuple[list[str], bool]:
    """One column's cells as text, and whether the column is numeric (aligned right)."""
    if name == "snr":
        return [_snr_text(v) for v in values], True
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values], False
    if pd.api.types.is_integer_dtype(values):
        return [str(v) for v in values], True
    if name.endswith("seconds"):
        form = ".0f"
    elif _is_whole(values):
        form = ".0f"
    else:
        form = floatfmt
    return ["" if math.isnan(v) else format(v, form) for v in values], True


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """``frame`` as a GitHub Markdown table: index levels become ordinary columns, ``snr`` reads as
    a level label, whole-number floats (episodes, examples) as integers, ``*_seconds`` to the
    second, other floats with ``floatfmt``. Cells are formatted here and not re-parsed, so text
    that looks like a number (an SNR label) stays as written."""
    flat = frame.reset_index() if not isinstance(frame.index, pd.RangeIndex) else frame
    texts, numeric = {}, []
    for column in flat.columns:
        cells, right = _column_text(str(column), flat[column], floatfmt)
        texts[str(column)] = cells
        numeric.append("right" if right else "left")
    return pd.DataFrame(texts).to_markdown(index=False, disable_numparse=True, colalign=numeric)
