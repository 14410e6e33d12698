"""The shared episodic training loop of neural methods (one class, so every network trains,
validates, selects, resumes and calibrates the same way).

:class:`TorchMethod` builds a network under a forked random state, trains it on episodes within a
budget with a timm optimizer, guards against non-finite gradients, keeps the weights with the best
validation score, saves a resumable training state, and serves predictions from a cached,
inference-folded copy. Subclasses give ``build_network``, ``training_loss`` and ``scores``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from abc import abstractmethod
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from fewshot_cryoet.core.environment import timm_optim
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.params import Param, timm_optimizers
from fewshot_cryoet.core.types import FitReport
from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.base import FewShotMethod, FitContext, Prediction
from fewshot_cryoet.methods.inputs import turned_at_random

if TYPE_CHECKING:
    from fewshot_cryoet.models.training_state import TrainingState


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (emulated bf16 would be slower than fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: How often the progress bar's loss is read back: reading it waits for the device to finish the
#: step, which on a GPU would make every step wait for the host; the bar itself advances per step.
PROGRESS_LOSS_SECONDS = 0.5

#: ``compile`` values: "off" (eager), or a ``torch.compile`` mode for the training step's forward
#: and backward ("reduce-overhead" also captures it as a CUDA graph on a GPU, where a step is
#: launch-bound; on a CPU it compiles as "default").
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")

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
        "precision": "auto", "compile": "off", "train_turns": 1,
    }
    param_rules: ClassVar[dict[str, Param]] = {
        "lr": Param("float", low=0, low_open=True), "weight_decay": Param("float", low=0),
        "optimizer": Param("str", choices=timm_optimizers), "train_way": Param("int", low=2),
        "train_shot": Param("int", low=1), "train_query": Param("int", low=1), "val_every": Param("int", low=1),
        "precision": Param("str", choices=("auto", "bf16", "fp32")),
        "compile": Param("str", choices=COMPILE_MODES),
        "train_turns": Param("int", choices=(1, 4)),
    }
    #: ``compile`` and ``train_turns`` (rotation augmentation: 4 turns each training volume by one
    #: of the wedge-preserving rotations, see ``inputs.turned_at_random``) came after results were
    #: stored: at "off" and 1 they leave every hash as it was.
    later_defaults: ClassVar[dict[str, Any]] = {"compile": "off", "train_turns": 1}

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

    def check_episode(self, episode: Episode) -> None:
        """Refuse, in one line, an episode this network cannot take (e.g. another box size)
        before any volume of it is computed; the default takes any."""

    def per_volume(self, role: str, network: torch.nn.Module) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
        """(cache kind, function): what this method computes from each ``role`` volume
        (``"support"`` or ``"query"``) on its own with ``network``, e.g. an embedding. Defined once
        here, so that :meth:`scores` (through :meth:`per_volume_rows`) and the batched scoring of
        :meth:`predict_many` compute the same rows. The default: ``network`` itself, for both roles."""
        return "embedding", network

    def per_volume_rows(self, episode: Episode, role: str, network: torch.nn.Module) -> torch.Tensor:
        """The :meth:`per_volume` rows of the episode's supports or queries, from the cache where
        they were computed before (test episodes share particles)."""
        kind, compute = self.per_volume(role, network)
        volumes, ids = (episode.support, episode.support_ids) if role == "support" else (episode.query, episode.query_ids)
        return self.cached(volumes, ids, compute, kind)

    def predict_many(self, episodes: Sequence[Episode], batch: int = 0) -> list[Prediction]:
        """As the base class, but with ``batch`` > 0 the per-volume rows of every distinct volume
        of ``episodes`` are first computed in batches of up to ``batch`` volumes, so that a large
        device computes hundreds of volumes per call instead of an episode's few, and each
        episode is then scored from the cache by indexing. Volumes without identities, and
        test-time augmentation (whose turned queries are computed per episode), are scored
        episode by episode as before."""
        if batch > 0 and int(self.params.get("tta", 1)) == 1:
            for episode in episodes:
                self.check_episode(episode)
            self.network.eval()
            with torch.inference_mode(), self.autocast(training=False):
                for role in ("support", "query"):
                    self._precompute(episodes, role, batch)
        return super().predict_many(episodes, batch)

    def _precompute(self, episodes: Sequence[Episode], role: str, batch: int) -> None:
        """Fill the cache with the rows of ``role``'s distinct volumes not yet computed, in order
        of first appearance, ``batch`` at a time (normalised as :meth:`predict` normalises them)."""
        kind, compute = self.per_volume(role, self.inference_network)
        pending: dict = {}  # cache key → (episode, row in it), first appearance first
        for episode in episodes:
            ids = episode.support_ids if role == "support" else episode.query_ids
            for row, identity in enumerate(ids or ()):
                key = (kind, identity)
                if key not in self._embeddings and key not in pending:
                    pending[key] = (episode, row)
        keys = list(pending)
        for start in range(0, len(keys), batch):
            block = keys[start:start + batch]
            volumes = torch.stack([(pending[k][0].support if role == "support" else pending[k][0].query)[pending[k][1]]
                                   for k in block])
            volumes = self.inputs(volumes, pending[block[0]][0].voxel_size).to(self.device)
            for key, row in zip(block, compute(volumes)):
                self._embeddings[key] = row

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
        create_optimizer_v2 = timm_optim().create_optimizer_v2
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
        loss_of = self._training_step_loss()
        shown_at, loss_text = -math.inf, ""
        while step < max_episodes and time.perf_counter() < deadline:
            self._weights_changed()
            self.network.train()
            episode = context.train.sample(p["train_way"], p["train_shot"], p["train_query"], rng)
            if p["train_turns"] > 1:  # at 1 no draw: the episode stream stays as it always was
                episode = turned_at_random(episode, rng)
            episode = episode.to(self.device)
            report.examples += len(episode.support) + len(episode.query)
            with self.autocast(training=True):
                loss = loss_of(episode)
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
                now = time.perf_counter()
                done = max(step / max_episodes if max_episodes < math.inf else 0,
                           (now - start) / (deadline - start) if deadline < math.inf else 0)
                if last or now - shown_at >= PROGRESS_LOSS_SECONDS:  # reading the loss waits for the GPU
                    shown_at, loss_text = now, f"loss {float(loss.detach()):.3f}"
                context.progress(min(done, 1.0), loss_text)
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self._weights_changed()
        report.episodes = step
        report.seconds = time.perf_counter() - start
        return report

    def _training_step_loss(self) -> Callable[[Episode], torch.Tensor]:
        """:meth:`training_loss`, compiled by ``torch.compile`` in the ``compile`` mode (its
        backward too, through AOTAutograd), or as it is with "off". Episodes of one training all
        have one shape, so the graph is captured once (``dynamic=False``); the optimizer step stays
        eager. Why optional and off by default: compiling costs tens of seconds before the first
        step, which a CPU training of a few hundred episodes never wins back, and on a GPU the gain
        is to be measured per device (``benchmarks/gpu_levers.py``)."""
        mode = self.params.get("compile", "off")
        if mode == "off":
            return self.training_loss
        if self.device.type != "cuda" and mode == "reduce-overhead":
            mode = "default"  # CUDA graphs need a GPU; elsewhere the same compiled step without them
        return torch.compile(self.training_loss, mode=mode, dynamic=False)

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
