"""The method contract: one base class for every few-shot method, built in or third-party.

A method is configured from a dict of hyper-parameters (defaults, then the variant's overrides,
then the user's; unknown keys are refused), may ``fit`` within a :class:`Budget` using validation
episodes for model selection, and ``predict``\\ s an :class:`Episode` into class scores per query
and, when it segments, a probability volume per query. The runner computes every metric; methods
only predict. :class:`TorchMethod` adds the shared episodic training loop for neural methods.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch

from fewshot_cryoet.episodes import Episode, EpisodeSource
from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.methods.inputs import (
    INPUT_DEFAULTS, INPUT_RULES, WEDGE_PRESERVING_FLIPS, InputNormalisation, rotated,
)
from fewshot_cryoet.core.params import Param, check_params, timm_optimizers
from fewshot_cryoet.segmentation.crf import CRFParams

if TYPE_CHECKING:
    from fewshot_cryoet.evaluation.scoring import ValidationScore
    from fewshot_cryoet.models.training_state import TrainingState, TrainingStateFile

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
        text = (f"trained {self.episodes} episodes in {self.seconds:.0f} s, selected validation accuracy "
                f"{self.best_validation_accuracy}")
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


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (emulated bf16 would be slower than fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: Skipped (non-finite) training steps after which ``precision=auto`` trains on in fp32.
NONFINITE_STEPS_BEFORE_FP32 = 3


class TorchMethod(FewShotMethod):
    """A neural method trained episodically: subclasses give the network, the loss on an
    episode and the scores; this class owns the loop (optimizer from timm, budget, validation
    every ``val_every`` episodes, best-on-validation weights kept, bf16 autocast where it pays:
    see :meth:`autocast`)."""

    trainable: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw",
        "train_way": 5, "train_shot": 1, "train_query": 5, "val_every": 50,
        "precision": "auto",
    }
    param_rules: ClassVar[dict[str, Param]] = {
        "lr": Param("float", low=0, low_open=True), "weight_decay": Param("float", low=0),
        "optimizer": Param("str", choices=timm_optimizers), "train_way": Param("int", low=2),
        "train_shot": Param("int", low=1), "train_query": Param("int", low=1), "val_every": Param("int", low=1),
        "precision": Param("str", choices=("auto", "bf16", "fp32")),
    }

    def __init__(self, params=None, variant=None, device="cpu") -> None:
        super().__init__(params, variant, device)
        self._embeddings: dict = {}
        self._inference: torch.nn.Module | None = None
        self._bf16_failed = False  # set when bf16 training gave non-finite gradients repeatedly
        self._initialise(0)

    def _initialise(self, seed: int) -> None:
        """Fresh initial weights drawn with ``seed``, without touching the caller's global random
        state (fork_rng restores it): identical hyper-parameters and seed give identical weights.
        Built with seed 0; :meth:`fit` redraws them with its training seed, so that training seeds
        differ in initialisation as well as in episode order (the variance they are meant to show)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = self.build_network()
        # Channels-last 3D weights: oneDNN (CPU) and cuDNN run 3D convolutions faster in it.
        self.network = network.to(self.device, memory_format=torch.channels_last_3d)
        self._initial_seed: int | None = seed  # None once the weights are trained or loaded
        self._weights_changed()

    @property
    def inference_network(self) -> torch.nn.Module:
        """The network for prediction: batch norm folded, channels-last (see ``methods.fast``);
        rebuilt whenever the weights change."""
        from fewshot_cryoet.methods.fast import inference_copy

        if self._inference is None:
            self._inference = inference_copy(self.network)
        return self._inference

    def _weights_changed(self) -> None:
        self._embeddings.clear()
        self._inference = None

    def cached(self, volumes: torch.Tensor, ids: tuple | None, compute: Callable[[torch.Tensor], torch.Tensor],
               kind: str = "embedding") -> torch.Tensor:
        """``compute(volumes)`` row by row, reusing rows already computed for the same volume
        identities and ``kind`` of output (test episodes share particles). Only without
        gradients, where ``compute`` is a pure function of the volume; the cache is cleared
        whenever the weights change."""
        if ids is None or torch.is_grad_enabled():
            return compute(volumes)
        keys = [(kind, i) for i in ids]
        missing = [i for i, key in enumerate(keys) if key not in self._embeddings]
        if missing:
            fresh = compute(volumes[missing])
            for i, row in zip(missing, fresh):
                self._embeddings[keys[i]] = row
        return torch.stack([self._embeddings[key] for key in keys])

    @abstractmethod
    def build_network(self) -> torch.nn.Module:
        """The module holding every learned parameter, initial weights included (pretrained ones
        too): :meth:`fit` calls it again under its training seed, so weights set elsewhere before
        training would be lost."""

    @abstractmethod
    def training_loss(self, episode: Episode) -> torch.Tensor:
        """Differentiable loss on one training episode (already on the device)."""

    @abstractmethod
    def scores(self, episode: Episode) -> Prediction:
        """Prediction for an episode on the device, without gradients; use
        :attr:`inference_network` (the optimised copy), not :attr:`network`."""

    def predict(self, episode: Episode) -> Prediction:
        self.network.eval()
        with torch.inference_mode(), self.autocast(training=False):
            prediction = self.scores(episode.to(self.device))
        return Prediction(
            prediction.scores.float().cpu(),
            None if prediction.probabilities is None else prediction.probabilities.float().cpu(),
        )

    @classmethod
    def search_space(cls, trial, params: dict[str, Any]) -> dict[str, Any]:
        """Learning rate within 30× of the default either way (log scale), and weight decay."""
        lr = float(params["lr"])
        return {
            "lr": trial.suggest_float("lr", lr / 30, lr * 30, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        }

    def _gradients_finite(self) -> bool:
        grads = [p.grad for p in self.network.parameters() if p.grad is not None]
        return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    def autocast(self, training: bool):
        """bf16 autocast context, chosen by the ``precision`` parameter: ``fp32`` never, ``bf16``
        always, ``auto`` on CUDA only. Why not on CPUs with native bf16 (AVX512-BF16/AMX), where 3D
        convolutions train 2-3× faster: there oneDNN's bf16 training kernels are not reproducible.
        Measured on an AMD EPYC with AVX512-BF16, the same seed gave different weights from run to
        run in bf16, on two threads and on one, in one process and in fresh ones, while fp32 gave
        the same weights every time; the same seed must give the same numbers, so CPU speed in bf16
        is asked for (``precision=bf16``), never chosen. Training steps with non-finite gradients
        are skipped; after a few, ``auto`` falls back to fp32 for the rest of the fit (seen with
        4-channel networks on oneDNN's bf16 kernels)."""
        precision = self.params.get("precision", "auto")  # auto, bf16 or fp32 (checked in resolve)
        if precision == "auto":
            enabled = not (training and self._bf16_failed) and self.device.type == "cuda"
        else:
            enabled = precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def state(self) -> dict[str, Any]:
        return {"network": {k: v.detach().cpu() for k, v in self.network.state_dict().items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.network.load_state_dict(state["network"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise FscError(
                f"checkpoint does not fit this {self.name} network (another profile, width or box size?): "
                f"{first[1].strip() if len(first) > 1 else first[0]}"
            ) from None
        self._initial_seed = None
        self._weights_changed()

    def fit(self, context: FitContext) -> FitReport:
        from timm.optim import create_optimizer_v2

        p = self.params
        if self._initial_seed is not None and self._initial_seed != context.seed:
            self._initialise(context.seed)  # untrained weights: draw them with the training seed
        self._initial_seed = None  # trained from here on: a later fit continues from these weights
        optimizer = create_optimizer_v2(self.network, opt=p["optimizer"], lr=p["lr"], weight_decay=p["weight_decay"])
        rng = np.random.default_rng(np.random.SeedSequence([context.seed, 1]))
        torch.manual_seed(context.seed)
        budget = context.budget
        report = FitReport()
        best_state, best_score = None, -1.0
        step = 0
        saved = context.resume.load() if context.resume is not None else None
        if saved is not None:
            step, best_state, best_score = saved.step, saved.best_network, saved.best_score
            report = FitReport.from_dict({**saved.report, "resumed_at": [*saved.report.get("resumed_at", []), step]})
            self._restore(saved, optimizer, rng)
        start = time.perf_counter() - (saved.seconds if saved is not None else 0.0)
        deadline = start + budget.minutes * 60 if budget.minutes is not None else math.inf
        max_episodes = budget.episodes if budget.episodes is not None else math.inf
        snapshots = self._exact_snapshots(context)
        while step < max_episodes and time.perf_counter() < deadline:
            self._weights_changed()
            self.network.train()
            episode = context.train.sample(p["train_way"], p["train_shot"], p["train_query"], rng).to(self.device)
            report.examples += len(episode.support) + len(episode.query)
            with self.autocast(training=True):
                loss = self.training_loss(episode)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self._gradients_finite():
                optimizer.step()
            else:  # skip the step, as a loss scaler would; bf16 that keeps failing → fp32
                report.skipped_steps += 1
                if report.skipped_steps >= NONFINITE_STEPS_BEFORE_FP32:
                    self._bf16_failed = True
            step += 1
            last = step >= max_episodes or time.perf_counter() >= deadline
            validated = context.validate is not None and (step % p["val_every"] == 0 or last)
            if validated:
                validation = context.validate(self)
                report.history.append((step, validation.accuracy, validation.dice))
                score = validation.selection
                if context.report is not None:
                    context.report(step, score)
                if score > best_score:
                    best_score, best_state = score, copy.deepcopy(self.network.state_dict())
                    report.best_validation_accuracy = validation.accuracy
                    report.best_validation_dice = validation.dice
            if step in snapshots:
                self._snapshot(context, step, report, best_state, time.perf_counter() - start)
            if context.resume is not None and not last and context.resume.due(validated):
                context.resume.save(self._training_state(step, time.perf_counter() - start, optimizer, best_state,
                                                         best_score, report, rng))
            if context.progress is not None:
                done = max(step / max_episodes if max_episodes < math.inf else 0,
                           (time.perf_counter() - start) / (deadline - start) if deadline < math.inf else 0)
                context.progress(min(done, 1.0), f"loss {float(loss.detach()):.3f}")
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self._weights_changed()
        report.episodes = step
        report.seconds = time.perf_counter() - start
        return report

    def _training_state(self, step: int, seconds: float, optimizer, best_state: dict | None, best_score: float,
                        report: FitReport, rng: np.random.Generator) -> TrainingState:
        """What :meth:`fit` needs to carry on after ``step`` episodes exactly as if never stopped."""
        from fewshot_cryoet.models.training_state import TrainingState

        def detached(state: dict | None) -> dict | None:
            return None if state is None else {k: v.detach().cpu() for k, v in state.items()}

        cuda = torch.device(self.device).type == "cuda"
        return TrainingState(
            step=step, seconds=seconds, network=detached(self.network.state_dict()),
            optimizer=optimizer.state_dict(), best_network=detached(best_state), best_score=best_score,
            report=json.loads(json.dumps(asdict(report))), sampler=rng.bit_generator.state,
            torch_rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state(self.device) if cuda else None,
            bf16_failed=self._bf16_failed)

    def _restore(self, saved: TrainingState, optimizer, rng: np.random.Generator) -> None:
        """Put back a :class:`TrainingState`: weights, optimizer moments and every random state."""
        self.network.load_state_dict(saved.network)
        optimizer.load_state_dict(saved.optimizer)
        rng.bit_generator.state = saved.sampler
        torch.set_rng_state(saved.torch_rng)
        if saved.cuda_rng is not None and torch.device(self.device).type == "cuda":
            torch.cuda.set_rng_state(saved.cuda_rng, self.device)
        self._bf16_failed = saved.bf16_failed
        self._weights_changed()

    def _exact_snapshots(self, context: FitContext) -> set[int]:
        """The requested snapshot steps this training can serve exactly. A training of ``s``
        episodes takes the same first ``s`` steps as a longer one (same seed, same episodes, no
        schedule that depends on the total) and validates at every multiple of ``val_every``
        and at its last step; so when ``s`` is such a multiple, the longer training has made the
        same validations by step ``s`` and holds the same best weights. Time budgets end at a
        wall-clock moment, not a step, so they get none."""
        budget = context.budget
        if context.snapshot is None or budget.minutes is not None or budget.episodes is None:
            return set()
        every = self.params["val_every"] if context.validate is not None else 1
        return {s for s in context.snapshots if 0 < s < budget.episodes and s % every == 0}

    def _snapshot(self, context: FitContext, step: int, report: FitReport, best_state: dict | None,
                  seconds: float) -> None:
        """Hand ``context.snapshot`` the model a training of ``step`` episodes would have ended
        with (best weights so far, calibrated as the fit wrapper calibrates a finished fit), then
        put the training state back. The global random state is restored too, so the rest of this
        training is the same as without the snapshot."""
        current = copy.deepcopy(self.network.state_dict()) if best_state is not None else None
        temperature = self.temperature
        partial = replace(report, history=list(report.history), episodes=step, seconds=seconds)
        devices = [self.device] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                if best_state is not None:
                    self.network.load_state_dict(best_state)
                self._weights_changed()
                if context.calibrate is not None:
                    self.temperature = partial.temperature = context.calibrate(self)
                context.snapshot(step, partial)
            finally:
                if current is not None:
                    self.network.load_state_dict(current)
                self.temperature = temperature
                self._weights_changed()
