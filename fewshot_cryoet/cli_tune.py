"""``fsc tune``: Optuna searches over a method's declared search space (see ``tuning``)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fewshot_cryoet.errors import FscError
from fewshot_cryoet.tuning import DEFAULT_STORAGE, OBJECTIVES, PRUNERS, SAMPLERS


@click.command()
@click.option("--method", default=None, help="Method to tune (see fsc methods).")
@click.option("--variant", default=None, help="Its variant [the method's first].")
@click.option("--param", "param_texts", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Fixed hyper-parameter (not tuned); repeatable.")
@click.option("--snr", "snr_text", default="1000", show_default=True, help="SNR level of the data.")
@click.option("--ways", type=click.IntRange(min=2), default=4, show_default=True, help="N of the validation episodes scored.")
@click.option("--shots", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--queries", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--val-episodes", type=click.IntRange(min=1), default=100, show_default=True,
              help="Fixed validation-class episodes scored per trial.")
@click.option("--dataset", default=None, help="Registered data set name or a data set folder [synthetic].")
@click.option("--templates", "template_paths", multiple=True, metavar="DIR|FILE", help="Simulate from these templates instead.")
@click.option("--test-classes", default=None, help="With --templates: comma-separated test classes (never read here).")
@click.option("--per-class", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--budget", "budget_text", default="1m", show_default=True, help="Training budget per trial.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Finished trials the study should hold (a rerun continues up to this number).")
@click.option("--timeout", "timeout_text", default=None, help="Stop this worker after e.g. 2h, 30m.")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True,
              help="Optuna storage URL: sqlite:///FILE or postgresql://user:password@host/db.")
@click.option("--study", "study_name", default=None, help="Study name [METHOD-VARIANT-snrS-NwayKshot-OBJECTIVE].")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="tpe", show_default=True)
@click.option("--pruner", type=click.Choice(PRUNERS), default="median", show_default=True)
@click.option("--objective", type=click.Choice(list(OBJECTIVES)), default="accuracy", show_default=True,
              help="accuracy; accuracy+dice = (accuracy + CRF Dice)/2; accuracy,dice = two objectives.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--show", "show_study", default=None, metavar="STUDY", help="Print a study's best trials and stop.")
@click.option("--export", "export_path", type=click.Path(path_type=Path), default=None,
              help="With --study: write the best trial's parameters to this JSON file (for fsc bench --params).")
def tune(method, variant, param_texts, snr_text, ways, shots, queries, val_episodes, dataset, template_paths,
         test_classes, per_class, budget_text, trials, timeout_text, storage, study_name, sampler, pruner,
         objective, seed, device, show_study, export_path) -> None:
    """Tune a method's hyper-parameters on validation classes with Optuna (resumable, distributable)."""
    from fewshot_cryoet import tuning

    if show_study:
        _show(tuning.load_study(storage, show_study), storage)
        return
    if export_path is not None and method is None:
        if not study_name:
            raise FscError("--export needs --study NAME (and --storage where the study lives)")
        _export(tuning.load_study(storage, study_name), storage, export_path)
        return
    if not method:
        raise FscError("--method is required (or --show STUDY / --study NAME --export FILE)")
    _tune(method, variant, param_texts, snr_text, ways, shots, queries, val_episodes, dataset, template_paths,
          test_classes, per_class, budget_text, trials, timeout_text, storage, study_name, sampler, pruner,
          objective, seed, device, export_path)


def _tune(method, variant, param_texts, snr_text, ways, shots, queries, val_episodes, dataset, template_paths,
          test_classes, per_class, budget_text, trials, timeout_text, storage_url, study_name, sampler, pruner,
          objective, seed, device, export_path) -> None:
    from fewshot_cryoet import tuning
    from fewshot_cryoet.cli import _dataset_at, _method_spec, _resolve_dataset, make_progress, say
    from fewshot_cryoet.datasets.dataset import parse_snr, snr_label
    from fewshot_cryoet.methods.base import Budget
    from fewshot_cryoet.runner import resolve_device

    spec = _method_spec(method, variant, param_texts)
    cls, variant = spec.cls, spec.variant
    if export_path is not None:
        _check_export_path(export_path)
    if trials < 1 or val_episodes < 1:
        raise FscError("--trials and --val-episodes must be ≥ 1")
    budget = Budget.parse(budget_text)
    timeout_s = tuning.parse_timeout(timeout_text)
    snr = parse_snr(snr_text)
    torch_device = resolve_device(device)
    variant_params = cls.resolve(spec.params, variant)[1]
    distributions = tuning.probe_search_space(cls, variant_params)  # refuses an empty space early
    storage = tuning.open_storage(storage_url)  # refuses an unreachable server before simulating
    name, provider, fixed = _resolve_dataset(dataset, template_paths, per_class, test_classes)
    out = Console()
    with make_progress() as progress:
        data = _dataset_at(provider, fixed, snr, progress)
        settings = tuning.TuneSettings(
            method=cls.name, variant=variant, fixed_params=spec.params, dataset=name,
            dataset_hash=data.content_hash, snr=snr_label(snr), ways=ways, shots=shots, queries=queries,
            val_episodes=val_episodes, budget=str(budget) if cls.trainable else "", objective=objective, seed=seed,
        )
        study_name = study_name or tuning.default_study_name(cls.name, variant, settings.snr, ways, shots, objective)
        study = tuning.open_study(storage, study_name, settings, sampler, pruner, distributions)
        if sampler != "grid" and tuning.enqueue_defaults(study, cls, variant_params, distributions):
            out.print("trial 0 runs the untuned defaults, for comparison")
        done = len(tuning.finished_trials(study))
        out.print(f"study [bold]{escape(study_name)}[/] in {escape(tuning.safe_url(storage_url))}: {done} finished trial(s), "
                  f"tuning {len(distributions)} hyper-parameter(s) of {cls.name}/{variant} up to {trials} trials; "
                  f"objective: {tuning.OBJECTIVES[objective]}")
        objective_fn = tuning.TuningObjective(cls, settings, data, budget, torch_device,
                                              log=lambda m: say(m, progress.console))
        task = progress.add_task(f"tune {cls.name}/{variant}", total=trials, completed=min(done, trials))

        def on_trial(trial) -> None:
            progress.update(task, completed=min(len(tuning.finished_trials(study)), trials))
            if trial.state.name == "PRUNED":
                text = f"pruned at training episode {trial.last_step}"
            elif trial.state.name == "FAIL":
                text = f"failed: {trial.user_attrs.get('error', 'see the log above')}"
            else:
                text = "objective " + ", ".join(f"{v:.4f}" for v in trial.values)
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
            say(f"trial {trial.number}: {text} ({params})", progress.console)

        tuning.run_study(study, objective_fn, trials, timeout_s, on_trial)
    _show(study, storage_url)
    if export_path is not None:
        _export(study, storage_url, export_path)


def _show(study, storage_url: str, top: int = 10) -> None:
    from optuna.trial import TrialState

    from fewshot_cryoet import tuning

    settings = study.user_attrs["fsc"]
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    out = Console()
    out.print(f"study [bold]{escape(study.study_name)}[/] ({escape(tuning.safe_url(storage_url))}): {settings['method']}/"
              f"{settings['variant']}, SNR {settings['snr']}, {settings['ways']}-way {settings['shots']}-shot, "
              f"budget {settings['budget'] or 'none'} per trial, objective {settings['objective']}; trials: "
              + ", ".join(f"{n} {state}" for state, n in counts.items() if n), highlight=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        out.print("no completed trial yet")
        return
    complete.sort(key=lambda t: (-sum(t.values), t.number))
    table = Table(title=f"best trials of {escape(study.study_name)}")
    for column in ("trial", "objective", "accuracy", "CRF Dice", "train episodes"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("parameters", overflow="fold")

    def fmt(value) -> str:
        if value is None:
            return "—"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    for t in complete[:top]:
        untuned = " (defaults)" if t.user_attrs.get("untuned") else ""
        table.add_row(f"{t.number}{untuned}", ", ".join(f"{v:.4f}" for v in t.values),
                      fmt(t.user_attrs.get("accuracy")), fmt(t.user_attrs.get("dice_crf")),
                      fmt(t.user_attrs.get("fit_episodes")),
                      escape(" ".join(f"{k}={fmt(v)}" for k, v in sorted(t.params.items()))))
    out.print(table)


def _check_export_path(path: Path) -> None:
    """Refuse an --export target we cannot write, before a study runs."""
    from fewshot_cryoet.outputs import check_writable_parent

    if path.is_dir():
        raise FscError(f"--export {path}: is a folder; give a file name such as best.json")
    check_writable_parent(path, "--export")


def _export(study, storage_url: str, path: Path) -> None:
    from fewshot_cryoet import tuning
    from fewshot_cryoet.cli import say

    params = tuning.tuned_params(study, f"{tuning.safe_url(storage_url)}#{study.study_name}")
    from fewshot_cryoet.outputs import write_text

    _check_export_path(path)
    write_text(path, params.to_json() + "\n")
    say(f"wrote {path}: best trial of {params.study} ({params.trials} finished trials); use it with "
        f"fsc bench --methods {params.method}/{params.variant} --params {path}")
