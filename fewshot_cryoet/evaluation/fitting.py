"""The one way a fit is set up, for ``fsc bench``, ``fsc train`` and every ``fsc tune`` trial:
episodes from the training classes, fixed validation-class episodes scored by the evaluation
layer's scorer (methods never score themselves), and the temperature fitted on those episodes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.datasets.dataset import SubtomogramDataset
from fewshot_cryoet.episodes import EpisodeSource, EpisodeSpec, load_episode, sample_episodes
from fewshot_cryoet.evaluation.calibration import temperature_fitter
from fewshot_cryoet.evaluation.grid import scoring_batch
from fewshot_cryoet.evaluation.scoring import validator
from fewshot_cryoet.methods.base import FitContext

#: Validation episodes used for model selection (from validation classes only).
VALIDATION_EPISODES = 40


def validation_episodes(dataset: SubtomogramDataset, snr: float | Sequence[float], shot: int, queries: int, seed: int,
                        with_masks: bool = False):
    """The fixed validation-class episodes; with several SNR levels, episode i is at level
    i mod (number of levels), so selection weighs every level alike."""
    classes = dataset.splits.get("val", [])
    if len(classes) < 2:
        return []
    levels = list(snr) if isinstance(snr, (list, tuple)) else [snr]
    spec = EpisodeSpec("val", min(5, len(classes)), shot, queries, seed + 1)
    episodes = sample_episodes(dataset, spec, VALIDATION_EPISODES)
    return [load_episode(dataset, episodes, i, levels[i % len(levels)], with_masks=with_masks)
            for i in range(len(episodes))]


def fit_data(dataset: SubtomogramDataset, snr: float | Sequence[float], segments: bool, queries: int = 5,
             seed: int = 0, shot: int = 1, device: torch.device | None = None) -> tuple[EpisodeSource, list]:
    """What every fit gets (fsc bench, fsc train, each fsc tune trial): episodes from the training
    classes, and the validation-class episodes used for model selection; ``snr`` may list several
    levels (each training episode draws one)."""
    train = EpisodeSource(dataset, "train", snr, with_masks=segments, device=device)
    if train.n_classes < 2:
        raise FscError(f"{dataset.path}: training needs ≥ 2 train classes, the split has {train.n_classes}")
    return train, validation_episodes(dataset, snr, shot, queries, seed, with_masks=segments)


def fit_context(dataset: SubtomogramDataset, snr: float | Sequence[float], segments: bool, budget: Budget, device: torch.device,
                queries: int = 5, seed: int = 0, shot: int = 1, progress=None, report=None,
                warn: Callable[[str], None] | None = None) -> FitContext:
    """The one way a fit is set up: training-class episodes, validation through the scorer.
    ``warn`` hears why no model will be selected when no validation episode can be drawn."""
    train, validation = fit_data(dataset, snr, segments, queries, seed, shot, device)
    if not validation and warn is not None:
        warn(f"warning: {dataset.path.name} has {len(dataset.splits.get('val', []))} validation class(es); model "
             "selection needs at least 2, so the weights after the last training episode are kept (simulate or "
             "import with more --val-classes)")
    return FitContext(train, validator(validation, scoring_batch(device)), budget, device, seed, progress, report,
                      calibrate=temperature_fitter(validation))


def check_domains(train: SubtomogramDataset, test: SubtomogramDataset, allow_class_overlap: bool = False) -> None:
    """A cross-domain pair must be comparable (same box and voxel size) and, unless asked for,
    keep few-shot honest: no class the model trains or selects on may be a test class."""
    if (train.box, train.voxel_size) != (test.box, test.voxel_size):
        raise SettingError("train_dataset", f"train_dataset {train.path} has {train.box}³ boxes at {train.voxel_size:g} Å, "
                                            f"the test data set {test.path} {test.box}³ at {test.voxel_size:g} Å; "
                                            "simulate both on one grid")
    seen = set(train.splits.get("train", [])) | set(train.splits.get("val", []))
    shared = sorted(seen & set(test.splits.get("test", [])))
    if shared and not allow_class_overlap:
        raise SettingError("train_dataset", f"train_dataset {train.path} trains or selects on {', '.join(shared)}, "
                                            f"which are test classes of {test.path}; use data sets with disjoint "
                                            "classes, or allow class overlap (--allow-class-overlap) to measure that on purpose")


def training_task(reporter, description: str, budget: Budget):
    """A training's progress bar counted in episodes (or, for a time budget, seconds), with the
    ``progress`` callback a fit takes: what a person can read, where a fraction showed ``0/1``."""
    total = budget.episodes if budget.episodes is not None else round(budget.minutes * 60)
    task = reporter.task(description, total=total)
    return task, (lambda fraction, _: task.update(min(fraction, 1.0) * total))
