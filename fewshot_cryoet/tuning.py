"""Fair, budgeted, resumable hyper-parameter searches with Optuna (``fsc tune``).

Every method declares its search space (:meth:`FewShotMethod.search_space`, which takes an
``optuna.Trial``). A trial trains the method on training classes with the same budget and the same
validation-class model selection as ``fsc bench``, reports its selection score while training (so
pruners stop bad trials early), then is scored on fixed validation-class episodes. The test split
is never read.

Studies live in an Optuna storage (SQLite file or any SQLAlchemy URL such as PostgreSQL), so
``optuna-dashboard`` reads them as they are, several workers on several machines share one study,
and running the same command again resumes it: ``--trials`` counts finished trials in the whole
study. A trial interrupted by Ctrl-C is marked failed at once; one whose process was killed is
marked failed by the next worker once its heartbeat is older than :data:`GRACE_SECONDS`.

The study remembers what it tunes (method, variant, objective, data, budget, episodes) and a run
that asks for something else is refused, so trials of different experiments never mix.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fewshot_cryoet.errors import FscError

if TYPE_CHECKING:
    import optuna

    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.methods.base import Budget, FewShotMethod

DEFAULT_STORAGE = "sqlite:///fsc-tune.sqlite"
#: Objectives: one number to maximise, or two (accuracy and CRF-refined Dice, Pareto front).
OBJECTIVES = {
    "accuracy": "mean validation accuracy",
    "accuracy+dice": "(accuracy + CRF-refined Dice) / 2 on validation episodes",
    "accuracy,dice": "two objectives: accuracy and CRF-refined Dice (Pareto front; no pruning)",
}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60
PARAMS_FORMAT = "fewshot-cryoet-params/1"


@dataclass(frozen=True)
class TuneSettings:
    """What a study tunes; stored with the study and checked on every later run."""

    method: str
    variant: str
    fixed_params: dict[str, Any]
    dataset: str
    dataset_hash: str
    snr: str
    ways: int
    shots: int
    queries: int
    val_episodes: int
    budget: str
    objective: str
    seed: int

    def identity(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))

    @property
    def n_objectives(self) -> int:
        return 2 if self.objective == "accuracy,dice" else 1


@dataclass
class TunedParams:
    """Tuned hyper-parameters for ``fsc bench --params``: from a study's best trial or a file."""

    method: str
    variant: str
    params: dict[str, Any]
    study: str
    trials: int
    source: str
    values: list[float] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"format": PARAMS_FORMAT, **asdict(self)}, indent=2, sort_keys=True, default=str)


# -- storage ---------------------------------------------------------------------------------------
def safe_url(url: str) -> str:
    """The storage URL with every password form masked, for messages (see ``redact``)."""
    from fewshot_cryoet.redact import mask_secrets

    return mask_secrets(url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats (so killed trials get marked failed), or a clear one-line
    error saying which host could not be reached and how to fix it, without the password."""
    import optuna
    import sqlalchemy.exc

    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:
        raise FscError(f"--storage {safe_url(url)!r}: not a database URL (e.g. sqlite:///fsc-tune.sqlite or "
                       "postgresql://user:password@host:5432/db)") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # fsc reports trials itself
    url = _with_installed_postgres_driver(parsed)
    try:
        return _rdb_storage(url, sqlite=parsed.drivername.startswith("sqlite"))
    except ImportError:
        raise FscError(f"--storage {safe_url(url)}: no database driver for {parsed.drivername} is installed; "
                       "for PostgreSQL: pip install 'fewshot-cryoet[postgres]' (psycopg 3)") from None
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        host = f"{parsed.host}:{parsed.port or 'default port'}" if parsed.host else (parsed.database or safe_url(url))
        reason = safe_url(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])
        for secret in (parsed.password, parsed.query.get("password")):
            if isinstance(secret, str) and secret:
                reason = reason.replace(secret, "***")
        raise FscError(
            f"cannot open tuning storage {safe_url(url)} at {host}: {reason}; check that the server is "
            "running and reachable, and the user, password and database in the URL"
        ) from None


def _rdb_storage(url: str, sqlite: bool, attempts: int = 5):
    """RDBStorage, retried a few times: workers started together race to create the schema on a
    fresh database, and the loser sees a duplicate-table or duplicate-key error for a moment."""
    import warnings

    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                    # SQLite: wait for the other workers' write locks instead of failing at once.
                    engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True},
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            transient = any(word in str(exc).lower() for word in ("locked", "already exists", "duplicate"))
            refused = isinstance(exc, sqlalchemy.exc.OperationalError) and not transient
            if refused or attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _with_installed_postgres_driver(parsed) -> str:
    """``postgresql://`` names no driver and SQLAlchemy's default changed between versions
    (psycopg2 up to 2.0, psycopg 3 from 2.1): name whichever is installed."""
    if parsed.drivername == "postgresql":
        import importlib.util

        for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
            if importlib.util.find_spec(module) is not None:
                parsed = parsed.set(drivername=driver)
                break
    return parsed.render_as_string(hide_password=False)


# -- search spaces ---------------------------------------------------------------------------------
def probe_search_space(cls: type[FewShotMethod], params: dict[str, Any]) -> dict[str, Any]:
    """The distributions a method's search space suggests (by asking it once on a throwaway
    in-memory study); refuses an empty space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    suggested = cls.search_space(trial, params)
    if not suggested:
        raise FscError(f"method {cls.name!r} declares no search space; nothing to tune "
                       "(a plugin adds one by overriding FewShotMethod.search_space)")
    unknown = sorted(set(suggested) - set(cls.defaults))
    if unknown:
        raise FscError(f"method {cls.name!r}: search space suggests {', '.join(unknown)}, which it does not accept")
    return dict(trial.distributions)


def grid_from_distributions(distributions: dict[str, Any], points: int = 3) -> dict[str, list]:
    """A grid for ``--sampler grid``: every choice of a categorical, ``points`` values spread over
    a numeric range (log-spaced where the range is logarithmic)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    grid: dict[str, list] = {}
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, (FloatDistribution, IntDistribution)):
            if dist.log:
                values = np.geomspace(dist.low, dist.high, points)
            else:
                values = np.linspace(dist.low, dist.high, points)
            if isinstance(dist, IntDistribution):
                grid[name] = sorted({int(round(v)) for v in values})
            else:
                grid[name] = [float(v) for v in values]
        else:
            raise FscError(f"--sampler grid cannot build a grid for {name} ({type(dist).__name__})")
    return grid


def make_sampler(name: str, seed: int, distributions: dict[str, Any], n_objectives: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=n_objectives == 1)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_from_distributions(distributions), seed=seed)
    raise FscError(f"--sampler {name!r}: use one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, n_objectives: int):
    import optuna

    if name == "none" or n_objectives > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    raise FscError(f"--pruner {name!r}: use one of {', '.join(PRUNERS)}")


# -- studies ---------------------------------------------------------------------------------------
def open_study(storage, name: str, settings: TuneSettings, sampler_name: str, pruner_name: str,
               distributions: dict[str, Any]) -> optuna.Study:
    """Create the study or load it, refusing one that was created for another experiment; the
    sampler is seeded by :func:`sampler_seed` once the study's trials are known."""
    import optuna

    directions = ["maximize"] * settings.n_objectives
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                pruner=make_pruner(pruner_name, settings.n_objectives), load_if_exists=True)
    _check_identity(study, name, settings)
    study.sampler = make_sampler(sampler_name, sampler_seed(settings.seed, study), distributions,
                                 settings.n_objectives)
    return study


def enqueue_defaults(study: optuna.Study, cls: type[FewShotMethod], variant_params: dict[str, Any],
                     distributions: dict[str, Any]) -> bool:
    """Make the first trial of a new study the untuned configuration, so the study shows what
    tuning gained; only when every tuned value of it lies inside the search space."""
    if study.get_trials(deepcopy=False):
        return False
    from optuna.distributions import CategoricalDistribution

    effective = cls.effective_params(variant_params)
    values = {}
    for name, dist in distributions.items():
        value = effective.get(name)
        if isinstance(dist, CategoricalDistribution):
            inside = value in dist.choices
        else:
            inside = isinstance(value, (int, float)) and dist.low <= value <= dist.high
        if not inside:
            return False
        values[name] = value
    study.enqueue_trial(values, user_attrs={"untuned": True})
    return True


def _check_identity(study: optuna.Study, name: str, settings: TuneSettings) -> None:
    identity = settings.identity()
    stored = study.user_attrs.get("fsc")
    if stored is None:
        study.set_user_attr("fsc", identity)
        for key in ("method", "variant", "objective", "snr", "ways"):
            study.set_user_attr(key, identity[key])  # flat copies, readable in optuna-dashboard
        return
    differences = [f"{k}: study has {stored.get(k)!r}, this run {v!r}" for k, v in identity.items() if stored.get(k) != v]
    if differences:
        raise FscError(f"study {name!r} was created for another experiment ({'; '.join(differences)}); "
                       "use another --study name, or the study's own settings")


def load_study(storage_url: str, name: str) -> optuna.Study:
    import optuna

    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise FscError(f"no study {name!r} in {safe_url(storage_url)}; studies there: "
                       f"{', '.join(names) or 'none'}") from None
    if "fsc" not in study.user_attrs:
        raise FscError(f"study {name!r} in {safe_url(storage_url)} was not made by fsc tune")
    return study


def finished_trials(study: optuna.Study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def best_trial(study: optuna.Study):
    """The best completed trial; for two objectives, the Pareto trial with the best sum."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise FscError(f"study {study.study_name!r} has no completed trial yet")
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (sum(t.values), -t.number))


def tuned_params(study: optuna.Study, source: str) -> TunedParams:
    settings = study.user_attrs["fsc"]
    trial = best_trial(study)
    return TunedParams(
        method=settings["method"], variant=settings["variant"],
        params={**settings["fixed_params"], **trial.user_attrs.get("params", trial.params)},
        study=study.study_name, trials=len(finished_trials(study)), source=source, values=list(trial.values),
    )


def load_params_file(path: Path) -> TunedParams:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FscError(f"{path}: cannot read params file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != PARAMS_FORMAT:
        raise FscError(f"{path}: not a params file written by fsc tune --export (format {PARAMS_FORMAT})")
    try:
        return TunedParams(data["method"], data["variant"], dict(data["params"]), data["study"],
                           int(data["trials"]), str(path), list(data.get("values", [])))
    except (KeyError, TypeError, ValueError) as exc:
        raise FscError(f"{path}: params file lacks or mangles {exc}") from None


def resolve_params(text: str, storage_url: str) -> TunedParams:
    """``best:STUDY`` (best trial of a study in ``storage_url``) or a params file path."""
    if text.startswith("best:"):
        name = text[len("best:"):]
        return tuned_params(load_study(storage_url, name), f"{safe_url(storage_url)}#{name}")
    return load_params_file(Path(text))


# -- Ctrl-C ----------------------------------------------------------------------------------------
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


# -- the objective ---------------------------------------------------------------------------------
class TuningObjective:
    """One trial: suggest, train on training classes (pruning on the reported selection score),
    score on fixed validation-class episodes."""

    def __init__(self, cls: type[FewShotMethod], settings: TuneSettings, dataset: SubtomogramDataset,
                 budget: Budget, device, log: Callable[[str], None] = print,
                 progress: Callable[[float, str], None] | None = None) -> None:
        from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes
        from fewshot_cryoet.runner import BenchSettings, fit_data

        self.cls, self.settings, self.dataset, self.budget, self.device = cls, settings, dataset, budget, device
        self.log, self.progress = log, progress
        self.interrupt = SafeInterrupt()  # run_study activates it; unactivated, check() never raises
        self.variant_params = cls.resolve(settings.fixed_params, settings.variant)[1]
        # The data every trial uses, read once: training classes, the selection episodes (as in
        # fsc bench) and the fixed objective episodes, all from train/val classes only. Masks are
        # read when the class segments in some variant (COS-Net decides per instance).
        self.train, self.selection = None, []
        if cls.trainable:
            bench = BenchSettings(ways=[settings.ways], shots=[settings.shots], queries=settings.queries,
                                  seed=settings.seed)
            self.train, self.selection = fit_data(dataset, bench, settings.snr, cls.segments)
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

        from fewshot_cryoet.methods.base import FitContext
        from fewshot_cryoet.runner import CRFRefiner, score_episode

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
                if self.progress is not None:
                    self.progress(fraction, message)

            context = FitContext(self.train, self.selection, self.budget, self.device,
                                 self.settings.seed, progress, report)
            fit = method.fit(context)
            trial.set_user_attr("fit_episodes", fit.episodes)
        refiner = CRFRefiner(method.crf_params(), self.log) if method.segments else None
        accuracies, dices = [], []
        for number, episode in enumerate(self.episodes):
            self.interrupt.check()
            prediction = method.predict(episode)
            result = score_episode(number, episode, prediction, 0.0, method.segments, refiner)
            accuracies.append(result.accuracy)
            if result.dice_crf is not None:
                dices.append(result.dice_crf)
        accuracy = float(np.mean(accuracies))
        dice = float(np.mean(dices)) if dices else None
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("dice_crf", dice)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        if self.settings.objective == "accuracy":
            return accuracy
        if dice is None:
            raise FscError(f"objective {self.settings.objective!r} needs segmentations, and "
                           f"{self.cls.name}/{self.settings.variant} produces none; use --objective accuracy")
        if self.settings.objective == "accuracy+dice":
            return (accuracy + dice) / 2
        return accuracy, dice


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


def sampler_seed(seed: int, study: optuna.Study | None) -> int:
    """The sampler's seed: ``seed`` for the first worker of a new study, so a single-worker study
    is reproducible; a worker joining a study that already has trials mixes in their count and its
    process id, so parallel workers do not propose the same parameters."""
    existing = len(study.get_trials(deepcopy=False)) if study is not None else 0
    if existing == 0:
        return seed
    return int(np.random.SeedSequence([seed, existing, os.getpid()]).generate_state(1)[0])


def parse_timeout(text: str | None) -> float | None:
    """``2h``, ``30m``, ``90s`` → seconds."""
    if not text:
        return None
    from fewshot_cryoet.methods.base import Budget

    budget = Budget.parse(text)
    if budget.minutes is None or budget.episodes is not None:
        raise FscError(f"--timeout {text!r}: give a time such as 2h, 30m or 90s")
    return budget.minutes * 60


def default_study_name(method: str, variant: str, snr: str, ways: int, shots: int, objective: str) -> str:
    return f"{method}-{variant}-snr{snr}-{ways}way{shots}shot-{objective.replace(',', '_').replace('+', '_')}"
