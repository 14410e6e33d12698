"""What a bench grid is made of: the methods to run, the settings, the fixed test episodes of each
(N, K), and the jobs (one model each) and chunks of test episodes that processes claim by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from fewshot_cryoet.core.devices import resolve_device
from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.types import Budget, FitReport
from fewshot_cryoet.datasets.dataset import SubtomogramDataset
from fewshot_cryoet.episodes import EpisodeSet, EpisodeSpec, sample_episodes
from fewshot_cryoet.methods.base import FewShotMethod
from fewshot_cryoet.results.rows import Cell

#: Test episodes per claimed chunk: small enough that workers share a cell, large enough that the
#: claims cost nothing next to the predictions.
EVAL_CHUNK = 50


@dataclass(frozen=True)
class MethodSpec:
    """A method class with the variant and hyper-parameters to run it with."""

    cls: type[FewShotMethod]
    variant: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    origin: str = "built-in"
    label: str = ""


@dataclass
class BenchSettings:
    ways: list[int]
    shots: list[int]
    queries: int = 5
    episodes: int = 600
    budget: Budget = field(default_factory=lambda: Budget(minutes=2.0))
    seed: int = 0
    device: str = "auto"
    #: Training seeds of trainable methods (each trains its own model, all scored on the test
    #: episodes of ``seed``); None: trained once, with ``seed``.
    train_seeds: list[int] | None = None
    #: Smaller episode budgets of the same budget curve: a training at ``budget`` also leaves
    #: their models where exact (see ``FitContext.snapshots``), so the curve costs its largest
    #: budget only; the runs at those budgets then reuse them.
    snapshot_budgets: list[Budget] = field(default_factory=list)
    #: Refine segmentations with the dense CRF, for the CRF Dice column. False leaves CRF Dice
    #: empty and changes nothing else (accuracy and raw Dice are computed before the CRF); the
    #: CRF is most of a segmenting method's scoring time (about 85 ms per distinct query volume
    #: at 32³ on one CPU thread, against about 35 ms to predict a whole 6-way episode).
    crf: bool = True
    #: The most volumes a method computes at once when it scores a chunk of test episodes
    #: (``FewShotMethod.predict_many``); 0: episode by episode; None: per device
    #: (:data:`SCORE_BATCH_AUTO`).
    score_batch: int | None = None
    #: Processes refining segmentations with the dense CRF beside the main one (0: in the main
    #: process); None: per device (:func:`auto_crf_workers`).
    crf_workers: int | None = None

    def __post_init__(self) -> None:
        if self.train_seeds is not None:
            if not self.train_seeds:
                raise SettingError("seeds", "seeds is empty; give at least one training seed")
            repeated = sorted({s for s in self.train_seeds if self.train_seeds.count(s) > 1})
            if repeated:
                raise SettingError("seeds", f"seeds {','.join(map(str, self.train_seeds))}: "
                                            f"{', '.join(map(str, repeated))} given twice")
            if min(self.train_seeds) < 0:
                raise SettingError("seeds", "seeds must be ≥ 0")
        for setting, value in (("score_batch", self.score_batch), ("crf_workers", self.crf_workers)):
            if value is not None and value < 0:
                raise SettingError(setting, f"{setting} must be ≥ 0, got {value}")
        cores = os.cpu_count() or 1
        if self.crf_workers is not None and self.crf_workers > cores:  # each is a process: more only thrash
            raise SettingError("crf_workers", f"crf_workers {self.crf_workers}: this machine has {cores} cores; "
                                              f"give at most {cores}")

    @property
    def training_seeds(self) -> list[int]:
        return list(self.train_seeds) if self.train_seeds is not None else [self.seed]

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def scoring_batch(self) -> int:
        """``score_batch``, or the device's default when it is None."""
        return self.score_batch if self.score_batch is not None else scoring_batch(self.torch_device)

    @property
    def crf_processes(self) -> int:
        """``crf_workers``, or the device's default when it is None."""
        return self.crf_workers if self.crf_workers is not None else auto_crf_workers(self.torch_device)


#: Default ``score_batch`` by (device is a CPU). On CPUs episode by episode: there batching the
#: embeddings of a chunk saves nothing measurable (the per-volume rows are cached across episodes
#: already), and oneDNN's 3D convolutions give results that differ in the last bits with the
#: batch's make-up, so scoring as before keeps CPU results identical to earlier runs. On an
#: accelerator, 256 volumes per call, where one episode's few volumes leave it mostly idle.
SCORE_BATCH_AUTO = {True: 0, False: 256}


def scoring_batch(device: torch.device | str) -> int:
    """The device's default volume batch for predicting several episodes together."""
    return SCORE_BATCH_AUTO[torch.device(device).type == "cpu"]


def auto_crf_workers(device: torch.device) -> int:
    """CRF processes by default: none on a CPU device (torch already uses the cores); on an
    accelerator, the host's cores but one (at most 8), which are otherwise idle while it works."""
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def fit_identity(cell: Cell, budget: str, seed: int) -> str:
    """The name of one training in the store's claims and the checkpoint folder: what decides
    its weights (method, variant, hyper-parameters, budget, training data, SNR, seed)."""
    return f"{cell.method}-{cell.variant}-{cell.params_hash}-{budget}-" \
           f"{cell.train_dataset_hash or cell.dataset_hash}-{cell.snr}-{seed}"


def chunk_identity(cell: Cell, start: int, end: int, checkpoint: str | None) -> str:
    """The claim name of a block of a cell's test episodes, scored with one model: every worker
    names the same block alike (a resumed run asking for more episodes has other blocks)."""
    return f"eval-{cell.key}-{start}-{end}-{checkpoint or ''}"


def test_episode_sets(dataset: SubtomogramDataset, settings: BenchSettings) -> dict[tuple[int, int], EpisodeSet]:
    """Fixed test episodes per (N, K), validated before anything is trained."""
    return {
        (n, k): sample_episodes(dataset, EpisodeSpec("test", n, k, settings.queries, settings.seed), settings.episodes)
        for n in settings.ways for k in settings.shots
    }


class EvalPlan:
    """A cell's test episodes still to score, as fixed chunks of EVAL_CHUNK episode numbers
    (every worker names the same chunk alike), with its progress bar once started."""

    def __init__(self, cell: Cell, episodes: EpisodeSet, done: set[int], wanted: int) -> None:
        missing = [e for e in range(wanted) if e not in done]
        self.cell, self.episodes, self.missing, self.task = cell, episodes, len(missing), None
        self.chunks = {start: block for start in range(0, wanted, EVAL_CHUNK)
                       if (block := [n for n in missing if start <= n < start + EVAL_CHUNK])}

    @property
    def complete(self) -> bool:
        return not self.chunks


@dataclass
class Job:
    """One model of the grid (a method, at one training seed): its fit, then its cells' episodes."""

    spec: MethodSpec
    method: FewShotMethod
    train_seed: int | None
    cells: dict[tuple[int, int], Cell]
    plans: list[EvalPlan]
    where: str
    snr: float
    dataset: SubtomogramDataset  # tested on
    train: SubtomogramDataset | None  # trained on, when it is another data set (cross-domain)
    fitted: tuple[FitReport, str | None] | None = None


#: One SNR level of a grid and how to load its data: (SNR, a function giving the test data set and
#: the training one, or None to train on the test data set's training classes).
Level = tuple[float, Callable[[], tuple[SubtomogramDataset, "SubtomogramDataset | None"]]]
