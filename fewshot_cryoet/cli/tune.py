"""``fsc tune run | show | export``: Optuna searches over a method's declared search space.

The spelling before subcommands (``fsc tune --method X``, ``--show STUDY``, ``--study S --export
F``) still works for one release, with a deprecation warning.
"""

from __future__ import annotations

from pathlib import Path

import click

from fewshot_cryoet import api
from fewshot_cryoet.cli.options import (
    data_options,
    device_option,
    method_params,
    parse_list,
    queries_per_class_option,
    run_options,
    storage_option,
)
from fewshot_cryoet.cli.terminal import RichReporter, print_table, print_warning, progress_bars, say


class TuneGroup(click.Group):
    """Turns the old option spelling into a subcommand, with a warning."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = list(args)
            if "--show" in args:
                i = args.index("--show")
                args = ["show", args[i + 1], *args[:i], *args[i + 2:]]
            elif "--export" in args and "--method" not in args and "--study" in args:
                i, j = args.index("--study"), args.index("--export")
                rest = [a for k, a in enumerate(args) if k not in (i, i + 1, j, j + 1)]
                args = ["export", args[i + 1], args[j + 1], *rest]
            else:
                args = ["run", *args]
            print_warning(f"'fsc tune {' '.join(args[1:2])}…' without a subcommand is deprecated; use "
                          f"fsc tune {args[0]} …")
        return super().parse_args(ctx, args)


@click.group(cls=TuneGroup)
def tune() -> None:
    """Tune hyper-parameters on validation classes with Optuna (resumable, distributable)."""


@tune.command("run")
@click.option("--method", required=True, help="Method to tune, optionally METHOD/VARIANT (see fsc methods).")
@click.option("--variant", default=None, help="Its variant [default: the method's first].")
@click.option("--param", "param_texts", multiple=True, metavar="METHOD.KEY=VALUE", help="Fixed hyper-parameter; repeatable.")
@click.option("--snr", default=None, help="SNR level of the data [default: a --dataset folder's noisiest; 1000 when simulated].")
@click.option("--ways", type=click.IntRange(min=2), default=4, show_default=True, help="N of the validation episodes scored.")
@click.option("--shots", type=click.IntRange(min=1), default=1, show_default=True, help="K of the validation episodes scored.")
@queries_per_class_option
@click.option("--val-episodes", type=click.IntRange(min=1), default=100, show_default=True,
              help="Fixed validation-class episodes scored per trial.")
@data_options
@click.option("--budget", default="300ep", show_default=True, help="Training budget per trial: episodes, a time, or both.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Finished trials the study should hold (a rerun continues up to this number).")
@click.option("--timeout", default=None, help="Stop this worker after e.g. 2h, 30m.")
@storage_option
@click.option("--study", default=None, help="Study name [default: METHOD-VARIANT-snrS-NwayKshot-OBJECTIVE].")
@click.option("--sampler", type=click.Choice(api.SAMPLERS), default="tpe", show_default=True, help="Optuna sampler.")
@click.option("--pruner", type=click.Choice(api.PRUNERS), default="median", show_default=True, help="Optuna pruner.")
@click.option("--objective", type=click.Choice(list(api.OBJECTIVES)), default="accuracy", show_default=True,
              help="accuracy; accuracy+dice = (accuracy + CRF Dice)/2; accuracy,dice = two objectives.")
@run_options
@click.option("--export", type=click.Path(path_type=Path), default=None,
              help="Also write the best trial's parameters to this JSON file (for fsc bench --params).")
def run(method, variant, param_texts, snr, ways, shots, queries_per_class, val_episodes, dataset, templates,
        test_classes, per_class, budget, trials, timeout, storage, study, sampler, pruner, objective, seed, device,
        export) -> None:
    """Run (or continue) a study."""
    def on_trial(trial) -> None:
        if trial.state.name == "PRUNED":
            text = f"pruned at training episode {trial.last_step}"
        elif trial.state.name == "FAIL":
            text = f"failed: {trial.user_attrs.get('error', 'see the log above')}"
        else:
            text = "objective " + ", ".join(f"{v:.4f}" for v in trial.values)
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        say(f"trial {trial.number}: {text} ({params})", progress.console)

    if export is not None and export.is_dir():
        raise click.BadParameter(f"{export} is a folder; give a file name such as best.json", param_hint="--export")
    with progress_bars() as progress:
        result = api.tune(
            method, variant=variant, params=method_params(param_texts, method), snr=api.parse_snr(snr) if snr is not None else None, ways=ways,
            shots=shots, queries_per_class=queries_per_class, val_episodes=val_episodes, dataset=dataset,
            templates=templates, test_classes=test_classes and test_classes.split(","), per_class=per_class,
            budget=budget, trials=trials, timeout=timeout, storage=storage, study=study, sampler=sampler,
            pruner=pruner, objective=objective, seed=seed, device=device, reporter=RichReporter(progress),
            on_trial=on_trial)
    _show(result, storage)
    if export is not None:
        _export(result.study_name, export, storage)


@tune.command("show")
@click.argument("study")
@storage_option
def show(study, storage) -> None:
    """Print a study's best trials."""
    _show(api.load_study(study, storage), storage)


@tune.command("confirm")
@click.argument("study")
@click.option("--seeds", "seed_texts", default="0,1,2", show_default=True,
              help="Training seeds: the best trial and the defaults are each retrained once per seed.")
@click.option("--episodes", type=click.IntRange(min=1), default=200, show_default=True,
              help="Fresh validation-class episodes (none of them scored a trial).")
@data_options
@storage_option
@device_option
def confirm(study, seed_texts, episodes, dataset, templates, test_classes, per_class, storage, device) -> None:
    """Test a study's best trial against the defaults before calling it better: both retrained with
    several seeds, scored on fresh validation episodes, paired test (the test split is never read)."""
    with progress_bars() as progress:
        result = api.confirm_tuning(study, seeds=parse_list(seed_texts, "--seeds", int), episodes=episodes,
                                    dataset=dataset, templates=templates,
                                    test_classes=test_classes and test_classes.split(","), per_class=per_class,
                                    storage=storage, device=device, reporter=RichReporter(progress))
    say(result.describe())


@tune.command("export")
@click.argument("study")
@click.argument("out", type=click.Path(path_type=Path))
@storage_option
def export(study, out, storage) -> None:
    """Write a study's best trial to a JSON file (for fsc bench --params)."""
    _export(study, out, storage)


def _export(study: str, out: Path, storage: str) -> None:
    params = api.export_tuned(study, out, storage)
    say(f"wrote {out}: best trial of {params.study} ({params.trials} finished trials); use it with "
        f"fsc bench --methods {params.method}/{params.variant} --params {out}")


def _show(study, storage: str) -> None:
    header, best = api.study_summary(study, storage)
    say(header)
    print_table(best, f"best trials of {study.study_name}") if len(best) else say("no completed trial yet")
