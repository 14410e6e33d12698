"""What a study tunes and how it is found again: settings stored with the study (and checked on
every run), search spaces probed from the method, samplers and pruners, tuned-parameter files."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.tuning.storage import open_storage, safe_url

if TYPE_CHECKING:
    import optuna

    from fewshot_cryoet.methods.base import FewShotMethod

#: Objectives: one number to maximise, or two (accuracy and CRF-refined Dice, Pareto front).
OBJECTIVES = {
    "accuracy": "mean validation accuracy",
    "accuracy+dice": "(accuracy + CRF-refined Dice) / 2 on validation episodes",
    "accuracy,dice": "two objectives: accuracy and CRF-refined Dice (Pareto front; no pruning)",
}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
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
    #: ``fsc tune confirm``'s outcome for this trial (retrained with seeds against the defaults on
    #: fresh validation episodes), or None when it was not confirmed.
    confirmation: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps({"format": PARAMS_FORMAT, **asdict(self)}, indent=2, sort_keys=True, default=str)


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
            raise SettingError("sampler", f"sampler grid cannot build a grid for {name} ({type(dist).__name__})")
    return grid


def make_sampler(name: str, seed: int, distributions: dict[str, Any], n_objectives: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=n_objectives == 1)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_from_distributions(distributions), seed=seed)
    raise SettingError("sampler", f"sampler {name!r}: use one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, n_objectives: int):
    import optuna

    if name == "none" or n_objectives > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    raise SettingError("pruner", f"pruner {name!r}: use one of {', '.join(PRUNERS)}")


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

    storage = open_storage(storage_url, must_exist=True)
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
        confirmation=confirmation if (confirmation := study.user_attrs.get("confirmation")) is not None
        and confirmation.get("trial") == trial.number else None,
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
                           int(data["trials"]), str(path), list(data.get("values", [])), data.get("confirmation"))
    except (KeyError, TypeError, ValueError) as exc:
        raise FscError(f"{path}: params file lacks or mangles {exc}") from None


def resolve_params(text: str, storage_url: str) -> TunedParams:
    """``best:STUDY`` (best trial of a study in ``storage_url``) or a params file path."""
    if text.startswith("best:"):
        name = text[len("best:"):]
        return tuned_params(load_study(storage_url, name), f"{safe_url(storage_url)}#{name}")
    return load_params_file(Path(text))


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
    from fewshot_cryoet.core.types import Budget

    try:
        budget = Budget.parse(text)
    except SettingError:
        budget = None
    if budget is None or budget.minutes is None or budget.episodes is not None:
        raise SettingError("timeout", f"timeout {text!r}: give a time such as 2h, 30m or 90s")
    return budget.minutes * 60


def default_study_name(method: str, variant: str, snr: str, ways: int, shots: int, objective: str) -> str:
    return f"{method}-{variant}-snr{snr}-{ways}way{shots}shot-{objective.replace(',', '_').replace('+', '_')}"
