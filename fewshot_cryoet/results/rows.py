"""The rows a results store keeps and hands out: a cell's identity, one episode's result, and the
state of a claimed fit. Plain dataclasses, so the runner and the scorer can build them without a
database."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Cell:
    """Identity of one leaderboard cell's worth of episodes."""

    method: str
    variant: str
    label: str
    params_hash: str
    params: str
    profile: str
    budget: str
    dataset: str
    dataset_hash: str
    snr: str
    n_way: int
    k_shot: int
    q_query: int
    seed: int
    #: Cross-domain cells: the data set the method was trained and selected on ("" = ``dataset``).
    train_dataset: str = ""
    train_dataset_hash: str = ""
    #: The seed the model was trained with, when it differs from ``seed`` (which fixes the test
    #: episodes): several training seeds are scored on the same episodes. None: trained with ``seed``.
    train_seed: int | None = None

    @property
    def key(self) -> str:
        identity = {k: v for k, v in asdict(self).items() if k not in ("label", "params", "dataset", "train_dataset")}
        if not self.train_dataset_hash:  # in-domain cells keep the keys they had before cross-domain runs
            identity.pop("train_dataset_hash")
        if self.train_seed is None:  # so do cells trained with the episode seed, as every cell was before
            identity.pop("train_seed")
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class EpisodeResult:
    episode: int
    accuracy: float
    predict_seconds: float
    dice: float | None = None
    dice_crf: float | None = None
    query_dice: list[tuple[int, str, float, float | None]] | None = None
    #: (query, true class, predicted class, confidence) per query: per-class accuracy, confusion
    #: matrices and calibration.
    query_classes: list[tuple[int, str, str, float]] | None = None


@dataclass
class Claim:
    """The state of one trainable fit in the store: ``mine`` (this process trains it), ``done``
    (trained; ``checkpoint_hash`` and ``report`` say by whom and how) or ``busy`` (another live
    process is training it)."""

    state: str
    owner: str = ""
    host: str = ""
    pid: int = 0
    age: float = 0.0
    checkpoint_hash: str | None = None
    report: dict | None = None
