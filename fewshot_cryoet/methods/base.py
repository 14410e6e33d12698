"""The method contract: one base class for every few-shot method, built in or third-party.

A method is configured from a dict of hyper-parameters (defaults, then the variant's overrides,
then the user's; unknown keys are refused), may ``fit`` within a :class:`Budget` using validation
episodes for model selection, and ``predict``\\ s an :class:`Episode` into class scores per query
and, when it segments, a probability volume per query. The runner computes every metric; methods
only predict. :class:`TorchMethod` adds the shared episodic training loop for neural methods.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.params import Param, check_params
from fewshot_cryoet.core.types import Budget, FitReport, ValidationScore
from fewshot_cryoet.episodes import Episode, EpisodeSource
from fewshot_cryoet.methods.inputs import (
    INPUT_DEFAULTS,
    INPUT_RULES,
    WEDGE_PRESERVING_FLIPS,
    InputNormalisation,
    rotated,
)
from fewshot_cryoet.segmentation.crf import CRFParams

if TYPE_CHECKING:
    from fewshot_cryoet.models.training_state import TrainingStateFile

CHECKPOINT_FORMAT = 1


class ScoreKind(str, Enum):
    """What a method's ``Prediction.scores`` are: ``logits`` (softmax gives class probabilities)
    or ``similarity`` (in [0, 1] per class; normalised to sum to 1 for probabilities)."""

    LOGITS = "logits"
    SIMILARITY = "similarity"


@dataclass
class Prediction:
    """Scores ``(n_query, n_way)`` (higher = more likely; softmax or similarity, any monotone
    scale) and, for segmenting methods, foreground probabilities ``(n_query, 1, D, H, W)``."""

    scores: torch.Tensor
    probabilities: torch.Tensor | None = None


@dataclass
class FitContext:
    """What a method may use while fitting: training episodes, the budget, and ``validate(method)``,
    which scores the method on fixed validation-class episodes (the runner's scorer, so methods
    never score themselves) and returns a ``scoring.ValidationScore`` whose ``selection`` decides
    which weights to keep; None without validation classes. ``report(step, score)`` passes the
    selection score on, so a tuner can prune bad trials early. ``calibrate(method)`` returns the
    temperature fitted on the same validation episodes; the base class calls it once a trainable
    method's fit returns (see ``fewshot_cryoet.evaluation.calibration``)."""

    train: EpisodeSource
    validate: Callable[[FewShotMethod], ValidationScore] | None
    budget: Budget
    device: torch.device
    seed: int = 0
    progress: Callable[[float, str], None] | None = None
    report: Callable[[int, float], None] | None = None
    calibrate: Callable[[FewShotMethod], float] | None = None
    #: Smaller episode budgets whose models the caller wants from this same training:
    #: ``snapshot(step, report)`` is called at each such step with the method holding exactly the
    #: weights (and temperature) a training of ``step`` episodes would have kept, so a budget
    #: curve costs its largest budget only. A method that cannot give them exactly ignores this
    #: (the caller then trains those budgets on their own); see ``TorchMethod.fit``.
    snapshots: tuple[int, ...] = ()
    snapshot: Callable[[int, FitReport], None] | None = None
    #: Where the training keeps its state so that, interrupted, it resumes where it stopped
    #: (``fewshot_cryoet.models.training_state``); None trains from the start every time.
    resume: TrainingStateFile | None = None


class FewShotMethod(ABC):
    """Base class of every method. Subclasses set the class attributes and ``predict``.

    ``defaults``, ``param_rules`` and ``crf_hyperparameters`` of a subclass are merged with its
    parent's automatically, so a subclass lists only what it adds or changes.

    Every method also has the input hyper-parameters of ``methods.inputs`` (normalisation and
    test-time augmentation). The base class wraps each subclass's ``fit`` and ``predict`` so that
    they always receive normalised volumes, however they are called (bench, train, tune, predict,
    or a user's script); a subclass never normalises by itself.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    segments: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    #: What ``Prediction.scores`` are (see :class:`ScoreKind`).
    score_kind: ClassVar[ScoreKind] = ScoreKind.LOGITS
    #: Confidences are ``softmax(scores / temperature)``. Trainable methods get it fitted on
    #: validation episodes after every fit (saved in the checkpoint); training-free methods keep
    #: this class value, which should be measured and documented (``fewshot_cryoet.evaluation.calibration``).
    temperature: float = 1.0
    defaults: ClassVar[dict[str, Any]] = dict(INPUT_DEFAULTS)
    variants: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}
    #: Declared type and range per hyper-parameter (see ``fewshot_cryoet.core.params``); keys without
    #: a rule are checked against the type of their default.
    param_rules: ClassVar[dict[str, Param]] = dict(INPUT_RULES)
    #: Hyper-parameters that :meth:`label_for` already shows (not repeated by :meth:`display_label`).
    label_keys: ClassVar[tuple[str, ...]] = ()
    #: Hyper-parameters that set the dense CRF refining this method's masks: key → ``CRFParams``
    #: field. Fields not mapped keep the CRF's defaults.
    crf_hyperparameters: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for attribute in ("defaults", "param_rules", "crf_hyperparameters", "later_defaults"):
            own = cls.__dict__.get(attribute)
            if own is not None:
                inherited = getattr(super(cls, cls), attribute, {})
                setattr(cls, attribute, {**inherited, **own})
        unknown = sorted(set(cls.crf_hyperparameters.values()) - set(CRFParams.__dataclass_fields__))
        if unknown:
            raise TypeError(f"{cls.__name__}.crf_hyperparameters maps to unknown CRF settings {unknown}")
        if "predict" in cls.__dict__:
            cls.predict = _with_inputs_for_predict(cls.__dict__["predict"])
        if "fit" in cls.__dict__:
            cls.fit = _with_inputs_for_fit(cls.__dict__["fit"])
    def __init__(self, params: dict[str, Any] | None = None, variant: str | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.variant, self.params = self.resolve(params, variant)
        self.device = torch.device(device)

    @classmethod
    def resolve(cls, params: dict[str, Any] | None = None, variant: str | None = None) -> tuple[str, dict[str, Any]]:
        """(variant, full hyper-parameters): the defaults, then the variant's (the first variant
        when none is given), then ``params``; an unknown variant or key, or a value of the wrong
        type or range, is refused. Nothing is built, so this is the cheap way to validate."""
        variant = variant or next(iter(cls.variants))
        if variant not in cls.variants:
            raise FscError(
                f"method {cls.name!r} has no variant {variant!r}; variants: {', '.join(cls.variants)}"
            )
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise FscError(
                f"method {cls.name!r} does not accept {', '.join(unknown)}; "
                f"hyper-parameters: {', '.join(sorted(cls.defaults)) or 'none'}"
            )
        merged = {**cls.defaults, **cls.variants[variant], **params}
        return variant, check_params(cls.name, merged, cls.defaults, cls.param_rules)

    @classmethod
    def label_for(cls, variant: str, params: dict[str, Any]) -> str:
        """Human-readable row name for leaderboards, from resolved settings (nothing is built)."""
        return cls.name if variant == "default" else f"{cls.name}/{variant}"

    @classmethod
    def upgrade_checkpoint(cls, params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """The hyper-parameters to rebuild a checkpoint's method with, given its saved ``params``
        and ``state``: a method whose names changed meaning maps old checkpoints here (the
        default changes nothing)."""
        return params

    @classmethod
    def display_label(cls, variant: str, params: dict[str, Any]) -> str:
        """:meth:`label_for`, plus every hyper-parameter that differs from the variant's defaults
        (``xcorr (angular_step=20)``), so that rows of different configurations never share a name
        on a leaderboard. Keys in ``label_keys`` are already part of :meth:`label_for`."""
        _, defaults = cls.resolve(None, variant)
        def shown(value: Any) -> str:
            return f"{value:g}" if isinstance(value, float) else str(value)

        changed = [f"{key}={shown(params[key])}" for key in sorted(params)
                   if key in defaults and key not in cls.label_keys and params[key] != defaults[key]]
        base = cls.label_for(variant, params)
        return f"{base} ({', '.join(changed)})" if changed else base

    @property
    def label(self) -> str:
        return self.display_label(self.variant, self.params)

    @property
    def inputs(self) -> InputNormalisation:
        """How this method's volumes are normalised before it sees them."""
        return InputNormalisation.from_params(self.params)

    def params_hash(self) -> str:
        return self.hash_params(self.params)

    #: Hyper-parameters added after results were first stored, with the values that reproduce the
    #: earlier behaviour: left out of the hash at those values (see :meth:`hash_params`).
    later_defaults: ClassVar[dict[str, Any]] = dict(INPUT_DEFAULTS)

    @classmethod
    def hash_params(cls, params: dict[str, Any]) -> str:
        """Hash of resolved hyper-parameters (what results and checkpoints are keyed by). Settings
        added later (``later_defaults``, e.g. the input settings) are left out at their old-behaviour
        values, so earlier results and checkpoints of the same configuration keep their hash."""
        later = cls.later_defaults
        kept = {k: v for k, v in params.items() if not (k in later and v == later[k])}
        text = json.dumps(kept, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @classmethod
    def search_space(cls, trial, params: dict[str, Any]) -> dict[str, Any]:
        """Hyper-parameters for one tuning trial, suggested from ``trial`` (an ``optuna.Trial``)
        given the variant's ``params``; ``fsc tune`` uses it. Empty means nothing to tune."""
        return {}

    @classmethod
    def effective_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with every "use the default" placeholder (None) replaced by the value the
        method really uses, so a tuner can start from the untuned configuration."""
        return dict(params)

    def fit(self, context: FitContext) -> FitReport:
        """Training-free methods need no fit."""
        return FitReport()

    def crf_params(self) -> CRFParams:
        """Dense-CRF settings for refining this method's segmentations: the CRF's defaults,
        overridden by the hyper-parameters named in ``crf_hyperparameters``."""
        return CRFParams(**{field: self.params[key] for key, field in self.crf_hyperparameters.items()})

    @abstractmethod
    def predict(self, episode: Episode) -> Prediction:
        """Scores per query (and probabilities if the method segments)."""

    def predict_many(self, episodes: Sequence[Episode], batch: int = 0) -> list[Prediction]:
        """:meth:`predict` for each episode, in order. The runner scores a block of test episodes
        through this, so a method may share work across them: ``batch`` is the most volumes it
        should compute at once (0: episode by episode, exactly as :meth:`predict`). Whatever a
        method does here, each prediction must be the one :meth:`predict` would give."""
        return [self.predict(episode) for episode in episodes]

    # -- persistence -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Learned state: tensors and JSON-able values only (checkpoints are read with
        ``weights_only=True``, which refuses arbitrary objects); empty for training-free methods."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    def save(self, path: str | Path, box: int) -> str:
        """Write a checkpoint (tensors plus JSON-able metadata only, so it loads with
        ``weights_only=True``); returns the file's hash."""
        from fewshot_cryoet.core.version import __version__
        from fewshot_cryoet.models.checkpoints import write_checkpoint

        payload = {
            "format": CHECKPOINT_FORMAT, "method": self.name, "variant": self.variant,
            "params": json.loads(json.dumps(self.params, default=str)), "box": box, "state": self.state(),
            "temperature": float(self.temperature),
            "package_version": __version__,
        }
        return write_checkpoint(payload, path)

    def load(self, path: str | Path, box: int) -> None:
        """Load a checkpoint written by :meth:`save` for the same method, variant and box size
        (the one load path: ``checkpoints.read_checkpoint`` then :meth:`load_payload`)."""
        from fewshot_cryoet.models.checkpoints import read_checkpoint

        self.load_payload(read_checkpoint(path, self.device), path, box)

    def load_payload(self, payload: dict[str, Any], path: str | Path, box: int | None) -> None:
        if payload.get("format", 0) > CHECKPOINT_FORMAT:
            raise FscError(f"{path}: checkpoint format is newer than this fewshot-cryoet; upgrade it")
        if payload.get("method") != self.name or payload.get("variant") != self.variant:
            raise FscError(
                f"{path}: checkpoint is for {payload.get('method')}/{payload.get('variant')}, "
                f"not {self.name}/{self.variant}"
            )
        if payload.get("box") != box:
            raise FscError(f"{path}: checkpoint was trained on {payload.get('box')}³ boxes, the data are {box}³")
        if not isinstance(payload.get("state"), dict):
            raise FscError(f"{path}: checkpoint has no state")
        self.load_state(payload["state"])
        # Checkpoints from before calibration keep the class default (uncalibrated confidences).
        self.temperature = float(payload.get("temperature", type(self).temperature))


def _with_inputs_for_predict(predict: Callable[[FewShotMethod, Episode], Prediction]):
    """``predict`` that first normalises the episode and, with ``tta`` 4, averages over the
    wedge-preserving turns of the queries. Only the outermost call acts, so a subclass calling
    ``super().predict`` never normalises twice."""
    import functools

    @functools.wraps(predict)
    def wrapper(self: FewShotMethod, episode: Episode) -> Prediction:
        if getattr(self, "_inputs_applied", False):
            return predict(self, episode)
        self._inputs_applied = True
        try:
            episode = self.inputs.episode(episode)
            if int(self.params.get("tta", 1)) == 1:
                return predict(self, episode)
            return _averaged_over_turns(self, predict, episode)
        finally:
            self._inputs_applied = False

    return wrapper


def _averaged_over_turns(method: FewShotMethod, predict, episode: Episode) -> Prediction:
    """Mean scores (probabilities for logits, so scales stay comparable) and mean masks turned
    back, over the wedge-preserving rotations of the queries."""
    scores, masks = [], []
    for flips in WEDGE_PRESERVING_FLIPS:
        prediction = predict(method, rotated(episode, flips))
        value = prediction.scores.float()
        scores.append(torch.log_softmax(value, dim=1).exp() if method.score_kind == ScoreKind.LOGITS else value)
        if prediction.probabilities is not None:
            masks.append(prediction.probabilities.flip(flips) if flips else prediction.probabilities)
    mean = torch.stack(scores).mean(0)
    if method.score_kind == ScoreKind.LOGITS:
        mean = mean.clamp_min(1e-12).log()  # back to logits: softmax of these is the mean probability
    return Prediction(mean, torch.stack(masks).mean(0) if masks else None)


def _with_inputs_for_fit(fit: Callable[[FewShotMethod, FitContext], FitReport]):
    """``fit`` whose training episodes are normalised (validation goes through ``predict``,
    which normalises itself), and whose trained method then gets its confidence temperature
    fitted on the validation episodes. Only the outermost call acts."""
    import functools

    @functools.wraps(fit)
    def wrapper(self: FewShotMethod, context: FitContext) -> FitReport:
        if getattr(self, "_fit_inputs_applied", False):
            return fit(self, context)
        self._fit_inputs_applied = True
        try:
            inner = context if self.inputs.identity else replace(
                context, train=NormalisedSource(context.train, self.inputs))
            report = fit(self, inner)
        finally:
            self._fit_inputs_applied = False
        if self.trainable and context.calibrate is not None and report is not None:
            self.temperature = report.temperature = context.calibrate(self)
        return report

    return wrapper


class NormalisedSource:
    """An episode source whose sampled episodes are normalised; everything else is the source's."""

    def __init__(self, source: EpisodeSource, inputs: InputNormalisation) -> None:
        self._source = source
        self._inputs = inputs

    def sample(self, *args, **kwargs) -> Episode:
        return self._inputs.episode(self._source.sample(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


def __getattr__(name: str):
    """``TorchMethod`` and ``cpu_has_bf16`` moved to :mod:`fewshot_cryoet.methods.torch_method`;
    the old spelling works for one release, with a DeprecationWarning."""
    from fewshot_cryoet.core.moved import moved_name

    return moved_name(__name__, name)
