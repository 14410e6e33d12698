"""The one place that turns predictions into numbers: accuracy, Dice, the CRF, and their checks.

The benchmark runner, tuning trials, the validation scores that select a model during training,
``fsc predict`` and the segmentation figures all score through :class:`Scorer`, so they agree by
construction: the same finite-score check, the same raw-mask threshold, the same CRF settings and
one CRF error policy (a volume the CRF cannot refine is logged once and counted; its raw mask
stands, and its refined Dice is missing rather than invented). Methods only predict.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.types import ValidationScore
from fewshot_cryoet.evaluation.calibration import class_probabilities
from fewshot_cryoet.evaluation.metrics import dice, episode_accuracy
from fewshot_cryoet.results.rows import EpisodeResult
from fewshot_cryoet.segmentation.crf import CRFParams, refine

#: Foreground probability above which a voxel is in the raw mask.
RAW_THRESHOLD = 0.5


def _array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(values.float().numpy() if torch.is_tensor(values) else values, np.float32)


def _refine_job(probabilities: np.ndarray, volume: np.ndarray, crf: CRFParams) -> tuple[np.ndarray | None, str | None]:
    """(mask, None), or (None, the error) for a volume the CRF cannot refine: a degenerate volume
    must not stop a run. A module-level function, so CRF processes can run it."""
    try:
        return refine(probabilities, volume, crf), None
    except Exception as exc:  # noqa: BLE001
        return None, str(exc)


def check_scores(scores: torch.Tensor, n_query: int, n_way: int) -> None:
    """A method's scores must have one row per query, one column per class, all finite."""
    if tuple(scores.shape) != (n_query, n_way):
        raise FscError(f"method returned scores of shape {tuple(scores.shape)}, expected ({n_query}, {n_way})")
    if not torch.isfinite(scores).all():
        raise FscError("method returned NaN or infinite scores")


class Scorer:
    """Scores predictions; refines segmentations with the dense CRF (``crf=None``: no CRF).

    Refined masks are cached by (volume identity, probabilities), so a query that appears in many
    test episodes with the same prediction is refined once.
    """

    def __init__(self, crf: CRFParams | None = None, log: Callable[[str], None] = lambda message: None,
                 temperature: float = 1.0, workers: int = 0) -> None:
        self.crf = crf
        self.log = log
        self.temperature = temperature  # confidences are softmax(scores / temperature): see calibration
        #: Processes that :meth:`prefetch` refines in (0: none, everything in this process).
        self.workers = workers
        self.crf_failures = 0
        self._cache: dict = {}
        self._pool = None

    def _key(self, identity, probabilities: np.ndarray):
        return (identity, hashlib.blake2b(probabilities.tobytes(), digest_size=16).hexdigest())

    def _settle(self, key, mask: np.ndarray | None, error: str | None) -> np.ndarray | None:
        """Count and log a CRF failure once; cache the outcome under ``key`` (None: not cached)."""
        if error is not None:
            self.crf_failures += 1
            if self.crf_failures == 1:
                self.log(f"CRF refinement failed ({error}); such volumes keep their raw mask and get no CRF Dice")
            mask = None
        if key is not None:
            self._cache[key] = mask
        return mask

    def prefetch(self, episodes: Sequence, predictions: Sequence) -> None:
        """Refine, in :attr:`workers` processes at once, every query mask of these predicted
        episodes that is not cached yet, so that :meth:`episode` then finds them all cached: the
        same masks as one at a time (the CRF is deterministic), in a fraction of the time where
        cores are idle (beside a GPU). Does nothing without workers, CRF or identities."""
        if self.crf is None or self.workers < 1:
            return
        pending: dict = {}
        for episode, prediction in zip(episodes, predictions):
            if prediction.probabilities is None or episode.query_masks is None or episode.query_ids is None:
                continue
            for q, identity in enumerate(episode.query_ids):
                p = _array(prediction.probabilities[q, 0])
                key = self._key(identity, p)
                if key not in self._cache and key not in pending:
                    pending[key] = (p, _array(episode.query[q, 0]))
        if len(pending) < 2:
            return
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the parent holds torch's threads (and maybe a CUDA context)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        futures = {key: self._pool.submit(_refine_job, p, v, self.crf) for key, (p, v) in pending.items()}
        for key, future in futures.items():
            self._settle(key, *future.result())

    def close(self) -> None:
        """Stop the CRF processes (a later :meth:`prefetch` starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def refine(self, probabilities: torch.Tensor | np.ndarray, volume: torch.Tensor | np.ndarray,
               identity=None) -> np.ndarray | None:
        """The CRF-refined boolean mask, or None when there is no CRF or it failed on this volume."""
        if self.crf is None:
            return None
        p, v = _array(probabilities), _array(volume)
        key = None
        if identity is not None:
            key = self._key(identity, p)
            if key in self._cache:
                return self._cache[key]
        return self._settle(key, *_refine_job(p, v, self.crf))

    def mask(self, probabilities: torch.Tensor, volume: torch.Tensor, identity=None) -> np.ndarray:
        """The mask to save: CRF-refined where the CRF ran, else the raw threshold."""
        refined = self.refine(probabilities, volume, identity)
        if refined is not None:
            return refined
        return (probabilities.float().numpy() if torch.is_tensor(probabilities) else np.asarray(probabilities)) \
            > RAW_THRESHOLD

    def episode(self, number: int, episode, prediction, seconds: float = 0.0) -> EpisodeResult:
        """Accuracy, and Dice per query (raw and CRF-refined) when the prediction segments and the
        episode carries ground-truth masks."""
        n_query = len(episode.query_labels)
        check_scores(prediction.scores, n_query, episode.n_way)
        result = EpisodeResult(number, episode_accuracy(prediction.scores, episode.query_labels), seconds)
        probabilities = class_probabilities(prediction.scores, self.temperature)
        confidence, predicted = probabilities.max(dim=1)
        result.query_classes = [(q, episode.classes[t], episode.classes[p], float(c)) for q, (t, p, c) in
                                enumerate(zip(episode.query_labels.tolist(), predicted.tolist(), confidence.tolist()))]
        if prediction.probabilities is None or episode.query_masks is None:
            return result
        truth = episode.query_masks > 0
        values = dice(prediction.probabilities > RAW_THRESHOLD, truth)
        refined_values: list[float | None] = [None] * n_query
        ids = episode.query_ids or [None] * n_query
        for q in range(n_query):
            mask = self.refine(prediction.probabilities[q, 0], episode.query[q, 0], ids[q])
            if mask is not None:
                refined_values[q] = float(dice(torch.from_numpy(mask)[None], truth[q])[0])
        labels = episode.query_labels.tolist()
        result.dice = float(values.mean())
        finite = [v for v in refined_values if v is not None]
        result.dice_crf = sum(finite) / len(finite) if finite else None
        result.query_dice = [(q, episode.classes[labels[q]], float(values[q]), refined_values[q])
                             for q in range(n_query)]
        return result


def validator(episodes: list, batch: int = 0) -> Callable[[object], ValidationScore] | None:
    """The validation callback a fit gets (None without validation episodes): accuracy over all
    validation queries and the mean raw Dice per query (no CRF while training). ``batch`` > 0
    predicts the episodes together (``FewShotMethod.predict_many``), as the runner scores test
    episodes on a GPU, where validating episode by episode takes about as long as the training
    steps between two validations; 0 predicts them one by one."""
    if not episodes:
        return None

    def validate(method) -> ValidationScore:
        correct = total = 0
        dice_values: list[torch.Tensor] = []
        # Episode by episode, one prediction is held at a time (a decoder's masks are large).
        predictions = method.predict_many(episodes, batch) if batch else map(method.predict, episodes)
        for episode, prediction in zip(episodes, predictions):
            correct += int((prediction.scores.argmax(dim=1) == episode.query_labels).sum())
            total += len(episode.query_labels)
            if prediction.probabilities is not None and episode.query_masks is not None:
                dice_values.append(dice(prediction.probabilities > RAW_THRESHOLD, episode.query_masks.cpu()))
        mean_dice = float(torch.cat(dice_values).mean()) if dice_values else None
        return ValidationScore(correct / max(total, 1), mean_dice)

    return validate
