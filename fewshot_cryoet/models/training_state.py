"""Resuming an interrupted training where it stopped, not at its first episode.

A published-size COS-Net trains for an hour or more on a few CPU cores (hours on a GPU at the
paper's budget); killed at 90%, it used to start again from nothing. A training given a
:class:`TrainingStateFile` saves everything its next steps depend on, after every validation and
at least every few minutes: weights, optimizer moments, the best weights so far, the episode
sampler's and torch's random states, and the report. Started again with the same file, it loads
that state and carries on, and ends with the same weights as a training that was never stopped
(``tests/test_training_state.py`` checks this bit for bit).

The file is ours alone: it carries a marker and the identity of its training (method,
hyper-parameters, budget, data, SNR, seed), is read with ``weights_only=True`` like every
checkpoint, and is removed once the finished model is written. A file at that path without our
marker, or written for another training, is refused, never overwritten or removed.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fewshot_cryoet.core.errors import FscError

#: Written into every state file; a file without it at a state file's path is not ours.
MARKER = "fewshot-cryoet training state"
FORMAT = 1
#: Longest stretch of training lost to an interruption between validations.
SAVE_EVERY_SECONDS = 300.0


@dataclass
class TrainingState:
    """Everything the rest of a training depends on, as plain tensors and numbers."""

    step: int
    seconds: float  # training time spent so far, over every attempt
    network: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    best_network: dict[str, torch.Tensor] | None
    best_score: float
    report: dict[str, Any]
    sampler: dict[str, Any]  # the episode sampler's bit-generator state (numpy)
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    bf16_failed: bool


class TrainingStateFile:
    """Where one training keeps its state between interruptions, and when it saves it."""

    def __init__(self, path: str | Path, identity: str, log: Callable[[str], None] | None = None,
                 every_seconds: float = SAVE_EVERY_SECONDS) -> None:
        self.path, self.identity, self.log, self.every_seconds = Path(path), identity, log, every_seconds
        self._saved_at = time.monotonic()
        self._ours = False  # the file at path is known to be this training's (loaded or written here)

    def load(self) -> TrainingState | None:
        """The saved state, or None when this training has none yet."""
        if not self.path.exists():
            return None
        payload = self._read()
        state = TrainingState(**payload["state"])
        self._ours = True
        if self.log is not None:
            self.log(f"resuming its interrupted training at episode {state.step} ({self.path.name})")
        self._saved_at = time.monotonic()
        return state

    def due(self, validated: bool) -> bool:
        """Save after every validation (the best weights may have changed) and at least every
        ``every_seconds``."""
        return validated or time.monotonic() - self._saved_at >= self.every_seconds

    def save(self, state: TrainingState) -> None:
        """Write the state atomically (an interruption while writing keeps the previous one)."""
        from fewshot_cryoet.core.outputs import save_atomic

        if not self._ours and self.path.exists():
            self._read()  # refuses to replace a file that is not this training's state
        buffer = io.BytesIO()
        torch.save({"marker": MARKER, "format": FORMAT, "identity": self.identity, "state": state.__dict__}, buffer)
        save_atomic(self.path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))
        self._saved_at, self._ours = time.monotonic(), True

    def remove(self) -> None:
        """Delete the state once its training's model is written; only our own file."""
        if self.path.exists():
            if not self._ours:
                self._read()
            self.path.unlink()

    @staticmethod
    def refuse_foreign(path: str | Path) -> None:
        """Refuse a file at ``path`` that is not a training state fsc wrote, before the expensive
        work that tells a training's identity (simulating or loading its data) starts."""
        if Path(path).exists():
            _read_state(Path(path), None)

    def _read(self) -> dict[str, Any]:
        return _read_state(self.path, self.identity)


def _read_state(path: Path, identity: str | None) -> dict[str, Any]:
    """The payload of a training state file fsc wrote (for ``identity``, unless None), read
    without running code from it; anything else is refused with a one-line error."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FscError(f"{path}: not a training state fsc can read ({type(exc).__name__}); "
                       "it was not written by fsc, or was damaged; move it away to train from the start") from None
    if not isinstance(payload, dict) or payload.get("marker") != MARKER:
        raise FscError(f"{path}: not a training state written by fsc; move it away to train from the start")
    version = payload.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise FscError(f"{path}: training state with format {str(version)[:20]!r}, not a version number; it was not "
                       "written by fsc; move it away to train from the start")
    if version > FORMAT:
        raise FscError(f"{path}: training state from a newer fewshot-cryoet; upgrade it, or move the file "
                       "away to train from the start")
    if identity is not None and payload.get("identity") != identity:
        raise FscError(f"{path}: training state of another training ({payload.get('identity')}); "
                       "move it away to train from the start")
    return payload
