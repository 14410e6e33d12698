"""Declared types and ranges of method hyper-parameters, checked before anything is built.

``--param protonet.lr=abc`` must fail as one line naming the method and key, not as a traceback
from deep inside the optimizer minutes later. A method declares a :class:`Param` per key in
``FewShotMethod.param_rules``; a key without a rule is checked against the type of its default
(an ``int`` default takes integers, a ``float`` default any number, a ``str`` a string, a tuple a
list). Values are normalised on the way (``3`` for a float becomes ``3.0``, a JSON list for a
tuple stays a list), so equal settings hash equally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from fewshot_cryoet.core.errors import FscError

KINDS = ("int", "float", "str", "bool", "ints")


@dataclass(frozen=True)
class Param:
    """One hyper-parameter's type (``kind``, one of :data:`KINDS`; inferred from the default when
    None), its closed range ``[low, high]`` (``low_open`` makes the lower end open, for e.g. a
    learning rate), its allowed ``choices`` (a tuple, or a callable returning one, for lists known
    only at run time such as timm's optimizers) and whether None ("the default") is allowed."""

    kind: str | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple | Callable[[], tuple] | None = None
    nullable: bool = False

    def describe(self) -> str:
        parts = [self.kind or "value"]
        if self.low is not None or self.high is not None:
            left = "(" if self.low_open else "["
            parts.append(f"in {left}{'-∞' if self.low is None else f'{self.low:g}'}, "
                         f"{'∞' if self.high is None else f'{self.high:g}'}]")
        return " ".join(parts)


def _kind_of(default: Any) -> str | None:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in default):
        return "ints"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(method: str, key: str, value: Any, rule: Param, default: Any) -> Any:
    """``value`` normalised to the declared kind, or a one-line error naming method and key."""
    if value is None:
        if rule.nullable or default is None:
            return None
        raise FscError(f"method {method!r}: {key} must not be empty (its default is {default!r})")
    kind = rule.kind or _kind_of(default)

    def fail(expected: str) -> FscError:
        return FscError(f"method {method!r}: {key}={value!r} is not valid; expected {expected}")

    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
    elif kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_int(value):
            raise fail(rule.describe().replace("int", "an integer", 1))
    elif kind == "float":
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise fail(rule.describe().replace("float", "a finite number", 1))
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            raise fail("a string")
    elif kind == "ints":
        if _is_int(value):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value or not all(_is_int(v) for v in value):
            raise fail("a list of integers such as [16,32,64]")
        value = list(value)
    if kind in ("int", "float", "ints"):
        for number in (value if kind == "ints" else [value]):
            too_low = rule.low is not None and (number <= rule.low if rule.low_open else number < rule.low)
            too_high = rule.high is not None and number > rule.high
            if too_low or too_high:
                raise fail(rule.describe().replace("ints", "integers", 1).replace("int", "an integer", 1)
                           .replace("float", "a number", 1))
    choices = rule.choices() if callable(rule.choices) else rule.choices
    if choices and value not in choices:
        shown = ", ".join(map(str, choices[:30])) + (", ..." if len(choices) > 30 else "")
        raise fail(f"one of {shown}")
    return value


def check_params(method: str, params: dict[str, Any], defaults: dict[str, Any],
                 rules: dict[str, Param]) -> dict[str, Any]:
    """Every value of ``params`` checked and normalised (keys are already known to be valid)."""
    return {key: check_value(method, key, value, rules.get(key, Param()), defaults.get(key))
            for key, value in params.items()}


def timm_optimizers() -> tuple:
    """The optimizer names timm's ``create_optimizer_v2`` accepts."""
    from fewshot_cryoet.core.environment import timm_optim

    optim = timm_optim()
    if not hasattr(optim, "list_optimizers"):  # older timm: no listing; the factory reports the name itself
        return ()
    return tuple(sorted(optim.list_optimizers()))
