"""One tuning trial (train on training classes, score on fixed validation-class episodes through
the scorer) and the loop that runs trials, honouring Ctrl-C only at safe points."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.tuning.study import TuneSettings, finished_trials

if TYPE_CHECKING:
    import optuna

    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.methods.base import FewShotMethod


class SafeInterrupt:
    """Ctrl-C during a study, honoured at a safe point: the first press sets a flag that the
    objective checks between training steps and between validation episodes, so the interrupt never
    lands inside one of Optuna's storage writes (an interrupted SQLite write could leave a lock
    that the heartbeat thread then waits on); a second press interrupts at once. Either way the
    running trial is marked failed and the command exits with status 130."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> SafeInterrupt:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


class TuningObjective:
    """One trial: suggest, train on training classes (pruning on the reported selection score),
    score on fixed validation-class episodes."""

    def __init__(self, cls: type[FewShotMethod], settings: TuneSettings, dataset: SubtomogramDataset,
                 budget: Budget, device, reporter: Reporter | None = None) -> None:
        from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes
        from fewshot_cryoet.evaluation.fitting import fit_data

        self.cls, self.settings, self.dataset, self.budget, self.device = cls, settings, dataset, budget, device
        self.reporter = as_reporter(reporter)
        self.interrupt = SafeInterrupt()  # run_study activates it; unactivated, check() never raises
        self.variant_params = cls.resolve(settings.fixed_params, settings.variant)[1]
        # The data every trial uses, read once: training classes, the selection episodes (as in
        # fsc bench) and the fixed objective episodes, all from train/val classes only. Masks are
        # read when the class segments in some variant (COS-Net decides per instance).
        self.train, self.selection = None, []
        if cls.trainable:
            self.train, self.selection = fit_data(dataset, settings.snr, cls.segments, settings.queries,
                                                  settings.seed, settings.shots)
        spec = EpisodeSpec("val", settings.ways, settings.shots, settings.queries, settings.seed + 2)
        self.episode_set = sample_episodes(dataset, spec, settings.val_episodes)
        self.episodes = [load_episode(dataset, self.episode_set, i, settings.snr) for i in range(len(self.episode_set))]

    def __call__(self, trial: optuna.Trial):
        try:
            return self._run(trial)
        except FscError as exc:  # the trial fails (recorded with its reason), the study goes on
            trial.set_user_attr("error", str(exc))
            raise

    def _run(self, trial: optuna.Trial):
        import optuna

        from fewshot_cryoet.evaluation.grid import scoring_batch
        from fewshot_cryoet.evaluation.scoring import validator
        from fewshot_cryoet.methods.base import FitContext

        suggested = self.cls.search_space(trial, self.variant_params)
        params = {**self.settings.fixed_params, **suggested}
        trial.set_user_attr("params", suggested)
        method = self.cls(params, self.settings.variant, self.device)
        start = time.perf_counter()
        if method.trainable:
            prune = self.settings.n_objectives == 1

            def report(step: int, score: float) -> None:
                if prune:
                    trial.report(score, step)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"selection score {score:.3f} at training episode {step}")

            def progress(fraction: float, message: str) -> None:  # called after every training step
                self.interrupt.check()

            context = FitContext(self.train, validator(self.selection, scoring_batch(self.device)), self.budget,
                                 self.device, self.settings.seed, progress, report)
            fit = method.fit(context)
            trial.set_user_attr("fit_episodes", fit.episodes)
        accuracies, dices = score_episodes(method, self.episodes, self.reporter, self.interrupt.check)
        accuracy = float(np.mean(accuracies))
        dice = float(np.mean(dices)) if dices else None
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("dice_crf", dice)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        if self.settings.objective == "accuracy":
            return accuracy
        if dice is None:
            raise FscError(f"objective {self.settings.objective!r} needs segmentations, and "
                           f"{self.cls.name}/{self.settings.variant} produces none; use objective accuracy")
        if self.settings.objective == "accuracy+dice":
            return (accuracy + dice) / 2
        return accuracy, dice


def score_episodes(method: FewShotMethod, episodes: list, reporter: Reporter,
                   between: Callable[[], None] = lambda: None) -> tuple[list[float], list[float]]:
    """(accuracy per episode, CRF-refined Dice per episode where the method segments), scored by the
    runner's scorer as fsc bench scores; ``between`` runs before each episode (Ctrl-C checks)."""
    from fewshot_cryoet.evaluation.scoring import Scorer

    scorer = Scorer(method.crf_params() if method.segments else None, reporter.log)
    accuracies, dices = [], []
    for number, episode in enumerate(episodes):
        between()
        result = scorer.episode(number, episode, method.predict(episode))
        accuracies.append(result.accuracy)
        if result.dice_crf is not None:
            dices.append(result.dice_crf)
    return accuracies, dices


def run_study(study: optuna.Study, objective: TuningObjective, trials: int, timeout_s: float | None,
              on_trial: Callable[[Any], None] | None = None) -> None:
    """Run trials until the study holds ``trials`` finished (complete or pruned) trials, this
    process's ``timeout_s`` passes, or Ctrl-C (the running trial is then marked failed)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # fsc prints one line per trial itself
    remaining = trials - len(finished_trials(study))
    if remaining <= 0:
        return
    callbacks = [optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    if on_trial is not None:
        callbacks.append(lambda _study, trial: on_trial(trial))
    with objective.interrupt:
        study.optimize(objective, n_trials=None, timeout=timeout_s, callbacks=callbacks, catch=(FscError,),
                       gc_after_trial=True)
        objective.interrupt.check()  # a press that came between trials still ends the run
