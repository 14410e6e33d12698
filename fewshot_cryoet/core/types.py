"""The few types that several layers share, kept below all of them so none imports upward.

``Budget`` (how much a method may train) is parsed by the command line, obeyed by methods and
printed by leaderboards; ``FitReport`` (what a training did) is returned by methods, stored by the
runner and written into model folders; ``ValidationScore`` (what model selection sees) is computed
by the evaluation layer and read by methods while they train. Plain dataclasses: no torch, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fewshot_cryoet.core.errors import SettingError


@dataclass(frozen=True)
class Budget:
    """How much training a method may do: a number of training episodes and/or minutes."""

    episodes: int | None = None
    minutes: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``10m``, ``90s``, ``1.5h``, ``500ep`` or ``500ep,10m`` (whichever ends first)."""
        episodes = minutes = None
        for part in [p.strip() for p in str(text).split(",") if p.strip()]:
            match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ep|episodes|s|m|min|h)?", part)
            if not match:
                raise SettingError("budget", f"budget {text!r}: use e.g. 10m, 90s, 1h, 500ep or 500ep,10m")
            value, unit = float(match.group(1)), match.group(2) or "m"
            if unit in ("ep", "episodes"):
                episodes = int(value)
            else:
                minutes = value * {"s": 1 / 60, "m": 1, "min": 1, "h": 60}[unit]
        if episodes is None and minutes is None:
            raise SettingError("budget", f"budget {text!r}: give a number of episodes and/or a time")
        if episodes == 0 or minutes == 0:
            raise SettingError("budget", f"budget {text!r}: a zero budget would score an untrained network; give a positive one")
        return cls(episodes, minutes)

    @classmethod
    def parse_list(cls, texts: list[str]) -> list[Budget]:
        """Budgets for a budget curve: one or more, all in episodes or all in time (a cap may ride
        along), strictly increasing; anything else is a one-line error naming the budget option."""
        budgets = [cls.parse(t) for t in texts]
        if not budgets:
            raise SettingError("budget", "give at least one budget")
        if len(budgets) > 1:
            by_episodes = all(b.episodes is not None for b in budgets)
            sizes = [b.episodes if by_episodes else b.minutes for b in budgets]
            if any(s is None for s in sizes) or any(b >= a for a, b in zip(sizes[1:], sizes)):
                raise SettingError("budget", f"budgets {', '.join(texts)}: a budget curve needs budgets of one kind "
                                             "(episodes or time) in strictly increasing order, e.g. 100ep 300ep 1000ep")
        return budgets

    def __str__(self) -> str:
        parts = []
        if self.episodes is not None:
            parts.append(f"{self.episodes}ep")
        if self.minutes is not None:
            parts.append(f"{self.minutes:g}m")
        return ",".join(parts)


@dataclass
class FitReport:
    episodes: int = 0
    seconds: float = 0.0
    examples: int = 0  # training volumes seen (supports + queries over every episode)
    best_validation_accuracy: float | None = None
    best_validation_dice: float | None = None
    skipped_steps: int = 0  # training steps skipped for non-finite gradients
    temperature: float | None = None  # fitted on validation episodes (see fewshot_cryoet.evaluation.calibration)
    resumed_at: list[int] = field(default_factory=list)  # episodes at which an interrupted training resumed

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitReport:
        """Rebuild from ``dataclasses.asdict`` output (fields a file lacks keep their defaults)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        text = f"trained {self.episodes} episodes in {self.seconds:.0f} s, " + (
            f"selected validation accuracy {self.best_validation_accuracy}" if self.best_validation_accuracy is not None
            else "no model selection (fewer than 2 validation classes: the last episode's weights are kept)")
        if self.best_validation_dice is not None:
            text += f", Dice {self.best_validation_dice:.3f}"
        if self.temperature is not None:
            text += f", confidence temperature {self.temperature:.3g}"
        if self.skipped_steps:
            text += f"; {self.skipped_steps} steps skipped for non-finite gradients"
        if self.resumed_at:
            text += f"; resumed after interruption at episode {', '.join(map(str, self.resumed_at))}"
        return text
    history: list[tuple[int, float, float | None]] = field(default_factory=list)  # (episode, accuracy, Dice)


@dataclass
class ValidationScore:
    """What model selection sees after validation episodes: accuracy and mean raw Dice (None when
    the method does not segment or the episodes have no masks)."""

    accuracy: float
    dice: float | None = None

    @property
    def selection(self) -> float:
        """Segmenting methods are selected on (accuracy + Dice) / 2: accuracy alone plateaus within
        ~200 episodes and would keep a barely trained decoder."""
        return self.accuracy if self.dice is None else (self.accuracy + self.dice) / 2
