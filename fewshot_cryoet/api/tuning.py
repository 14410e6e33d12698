"""The tuning verbs: ``tune`` (an Optuna study on validation classes), ``confirm_tuning``
(best trial against the defaults, retrained per seed), ``export_tuned`` and the study summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.tuning.storage import DEFAULT_STORAGE

if TYPE_CHECKING:
    import optuna

from fewshot_cryoet.api.data import data_source
from fewshot_cryoet.api.specs import method_specs


def tune(method: str, *, variant: str | None = None, params: dict[str, Any] | None = None, snr: float | None = None,
         ways: int = 4, shots: int = 1, queries_per_class: int = 5, val_episodes: int = 100, dataset=None,
         templates: Sequence[str | Path] = (), test_classes: Sequence[str] | None = None,
         per_class: int | None = None, budget: str = "300ep", trials: int = 20, timeout: str | None = None,
         storage: str = DEFAULT_STORAGE, study: str | None = None, sampler: str = "tpe", pruner: str = "median",
         objective: str = "accuracy", seed: int = 0, device: str = "auto", reporter: Reporter | None = None,
         on_trial: Callable[[Any], None] | None = None) -> optuna.Study:
    """Tune a method's hyper-parameters on validation classes (the test split is never read) in
    an Optuna study; running it again continues the study up to ``trials`` finished trials."""
    from fewshot_cryoet import tuning
    from fewshot_cryoet.core.devices import resolve_device
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.datasets.dataset import snr_label

    entry = method if variant is None else f"{method.split('/', 1)[0]}/{variant}"
    spec = method_specs([entry], {entry.split("/")[0]: params} if params else None)[0]
    cls, variant = spec.cls, spec.variant
    if trials < 1 or val_episodes < 1:
        raise SettingError("trials", "trials and val_episodes must be ≥ 1")
    if objective not in tuning.OBJECTIVES:
        raise SettingError("objective", f"objective {objective!r}: use one of {', '.join(tuning.OBJECTIVES)}")
    budget_ = Budget.parse(budget)
    timeout_s = tuning.parse_timeout(timeout)
    torch_device = resolve_device(device)
    variant_params = cls.resolve(spec.params, variant)[1]
    distributions = tuning.probe_search_space(cls, variant_params)  # refuses an empty space early
    optuna_storage = tuning.open_storage(storage)  # refuses an unreachable server before simulating
    source = data_source(dataset, templates, per_class, test_classes)
    reporter = as_reporter(reporter)
    if snr is None:  # a data set folder's noisiest level (an imported one's only: recorded), else 1000
        snr = source.fixed.snr_levels[-1] if source.fixed is not None else 1000.0
    data = source.at(snr, reporter)
    settings = tuning.TuneSettings(
        method=cls.name, variant=variant, fixed_params=spec.params, dataset=source.name,
        dataset_hash=data.content_hash, snr=snr_label(snr), ways=ways, shots=shots, queries=queries_per_class,
        val_episodes=val_episodes, budget=str(budget_) if cls.trainable else "", objective=objective, seed=seed,
    )
    name = study or tuning.default_study_name(cls.name, variant, settings.snr, ways, shots, objective)
    the_study = tuning.open_study(optuna_storage, name, settings, sampler, pruner, distributions)
    if sampler != "grid" and tuning.enqueue_defaults(the_study, cls, variant_params, distributions):
        reporter.log("trial 0 runs the untuned defaults, for comparison")
    done = len(tuning.finished_trials(the_study))
    reporter.log(f"study {name} in {tuning.safe_url(storage)}: {done} finished trial(s), tuning "
                 f"{len(distributions)} hyper-parameter(s) of {cls.name}/{variant} up to {trials} trials; "
                 f"objective: {tuning.OBJECTIVES[objective]}")
    objective_fn = tuning.TuningObjective(cls, settings, data, budget_, torch_device, reporter)
    task = reporter.task(f"tune {cls.name}/{variant}", total=trials, completed=min(done, trials))

    def after_trial(trial) -> None:
        task.update(min(len(tuning.finished_trials(the_study)), trials))
        if on_trial is not None:
            on_trial(trial)

    tuning.run_study(the_study, objective_fn, trials, timeout_s, after_trial)
    return the_study


def confirm_tuning(study: str, *, seeds: Sequence[int] = (0, 1, 2), episodes: int = 200, dataset=None,
                   templates: Sequence[str | Path] = (), test_classes: Sequence[str] | None = None,
                   per_class: int | None = None, storage: str = DEFAULT_STORAGE, device: str = "auto",
                   reporter: Reporter | None = None):
    """Retrain a study's best trial and the untuned defaults once per seed, score both on fresh
    validation-class episodes, and test the difference (see ``tuning.confirm``); the result is
    stored with the study, shown by ``fsc tune show`` and written into exported params files.
    The data must be the study's own (checked by hash)."""
    from fewshot_cryoet import tuning
    from fewshot_cryoet.core.devices import resolve_device
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.datasets.dataset import parse_snr
    from fewshot_cryoet.tuning.confirm import confirm

    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise SettingError("seeds", f"seeds {','.join(map(str, seeds))}: give distinct seeds, e.g. 0,1,2")
    if episodes < 1:
        raise SettingError("episodes", "episodes must be ≥ 1")
    torch_device = resolve_device(device)
    the_study = tuning.load_study(storage, study)
    settings = tuning.TuneSettings(**the_study.user_attrs["fsc"])
    best = tuning.best_trial(the_study)
    spec = method_specs([f"{settings.method}/{settings.variant}"])[0]
    source = data_source(dataset, templates, per_class, test_classes)
    data = source.at(parse_snr(settings.snr), reporter)
    if data.content_hash != settings.dataset_hash:
        raise SettingError("dataset", f"study {study!r} was tuned on {settings.dataset} (hash {settings.dataset_hash}), "
                                      f"not on {source.name} (hash {data.content_hash}); give the study's own "
                                      "--dataset or --templates")
    result = confirm(spec.cls, settings, data, best.user_attrs.get("params", best.params),
                     Budget.parse(settings.budget) if settings.budget else Budget(episodes=1), torch_device, seeds,
                     episodes, reporter)
    the_study.set_user_attr("confirmation", {**result.to_dict(), "trial": best.number})
    return result


def export_tuned(study: str, out: str | Path, storage: str = DEFAULT_STORAGE):
    """Write a study's best trial to a params file (for ``bench(tuned=[file])``); returns it."""
    from fewshot_cryoet import tuning
    from fewshot_cryoet.core.outputs import check_writable_parent, write_text

    out = Path(out)
    if out.is_dir():
        raise SettingError("export", f"export {out}: is a folder; give a file name such as best.json")
    check_writable_parent(out, "export")
    params = tuning.tuned_params(tuning.load_study(storage, study), f"{tuning.safe_url(storage)}#{study}")
    write_text(out, params.to_json() + "\n")
    return params


def study_summary(study: optuna.Study, storage: str, top: int = 10) -> tuple[str, pd.DataFrame]:
    """(one line on what a study tunes and its trial counts, its best completed trials)."""
    from optuna.trial import TrialState

    from fewshot_cryoet.tuning import safe_url

    s = study.user_attrs["fsc"]
    trials = study.get_trials(deepcopy=False)
    counts = ", ".join(f"{n} {state.name.lower()}" for state in TrialState
                       if (n := sum(t.state == state for t in trials)))
    header = (f"study {study.study_name} ({safe_url(storage)}): {s['method']}/{s['variant']}, SNR {s['snr']}, "
              f"{s['ways']}-way {s['shots']}-shot, budget {s['budget'] or 'none'} per trial, objective "
              f"{s['objective']}; trials: {counts}")
    confirmation = study.user_attrs.get("confirmation")
    if confirmation is not None:
        from fewshot_cryoet.tuning.confirm import Confirmation

        kept = Confirmation(**{k: v for k, v in confirmation.items() if k != "trial"})
        header += f"\ntrial {confirmation['trial']} against the defaults, {kept.describe()}"
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-sum(t.values), t.number))

    def fmt(value) -> str:
        return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = [{"trial": f"{t.number}{' (defaults)' if t.user_attrs.get('untuned') else ''}",
             "objective": ", ".join(f"{v:.4f}" for v in t.values), "accuracy": fmt(t.user_attrs.get("accuracy")),
             "CRF Dice": fmt(t.user_attrs.get("dice_crf")), "train episodes": fmt(t.user_attrs.get("fit_episodes")),
             "parameters": " ".join(f"{k}={fmt(v)}" for k, v in sorted(t.params.items()))} for t in complete[:top]]
    return header, pd.DataFrame(rows)


def load_study(study: str, storage: str = DEFAULT_STORAGE):
    """An existing study (``fsc tune show``); a missing one is a one-line error naming it."""
    from fewshot_cryoet import tuning

    return tuning.load_study(storage, study)
