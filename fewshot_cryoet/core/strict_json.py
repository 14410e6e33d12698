"""JSON written elsewhere (an archive, a model folder from another machine), read strictly, and
its values shown in one-line errors.

Python's reader accepts ``NaN`` and ``Infinity``, which JSON does not have; a crafted file uses
them to slip non-finite numbers past range checks, so they are refused here. A value in an error
is shown as JSON, cut to a length that keeps the error one readable line.
"""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` (a ValueError)."""
    return json.loads(text, parse_constant=_refuse)


def shown(value: Any, limit: int = 40) -> str:
    """``value`` as JSON for an error message, at most ``limit`` characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
