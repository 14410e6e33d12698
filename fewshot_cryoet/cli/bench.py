"""``fsc bench`` (train and score methods on identical episodes into a results store, alone or
as one of several workers), ``fsc methods`` and ``fsc leaderboard``: option declarations and
printing over :mod:`fewshot_cryoet.api`."""

from __future__ import annotations

import re
from pathlib import Path

import click

from fewshot_cryoet import api
from fewshot_cryoet.cli.options import (
    data_options,
    method_options,
    parse_list,
    queries_per_class_option,
    run_options,
    snrs,
    store_option,
)
from fewshot_cryoet.cli.terminal import RichReporter, make_console, print_table, progress_bars, say
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.reporting import CallbackReporter


@click.command()
@method_options(single=False)
@click.option("--snr", "snr_texts", multiple=True,
              help="SNR level (variance of signal / noise over the whole box); repeatable. Default: every level of "
                   "a --dataset folder; for data simulated on demand, "
                   + " and ".join(f"{s:g}" for s in api.DEFAULT_BENCH_SNRS)
                   + " (the paper's 1000, and a level where the best baseline falls clearly below 0.9 at 8-way).")
@click.option("--ways", default="2,4,6,8", show_default=True, help="N-way settings, comma-separated.")
@click.option("--shots", default="1", show_default=True, help="K-shot settings, comma-separated.")
@queries_per_class_option
@data_options
@click.option("--budget", "budgets", multiple=True, default=("300ep",), show_default=True,
              help="Training budget per method and SNR: episodes (reproducible on any machine), a time, or both as a "
                   "cap: 500ep, 10m, 500ep,10m. Repeat it for a budget curve: --budget 100ep --budget 1000ep.")
@click.option("--episodes", type=click.IntRange(min=1), default=600, show_default=True, help="Test episodes per setting (≥ 600 for leaderboards).")
@run_options
@store_option("Results store.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (or join one running) in --store.")
@click.option("--worker", is_flag=True, help="Join the workers of this grid: start the same command with --worker any "
              "number of times, on one machine or many, against one --store (PostgreSQL across machines) and one "
              "--models folder; they split the trainings and test episodes. Implies --resume.")
@click.option("--models", type=click.Path(path_type=Path), default=None,
              help="Folder of trained checkpoints, which every worker of one store must share [default: beside a SQLite "
                   "store: <store>.models; for PostgreSQL: fsc-<database>.models here].")
@click.option("--lease", "lease_seconds", type=click.FloatRange(min=1), default=api.STALE_SECONDS, show_default=True,
              help="Seconds after a worker's last heartbeat before another takes over its claim (a killed worker "
                   "of this host is taken over at once).")
@click.option("--train-dataset", default=None, help="Cross-domain: train and select on this data set (name or "
              "folder), test on --dataset / --templates.")
@click.option("--allow-class-overlap", is_flag=True, help="With --train-dataset: allow training classes that are "
              "also test classes (refused by default).")
@click.option("--seeds", "seed_texts", default=None, metavar="0,1,2",
              help="Train each trainable method once per seed, all scored on the test episodes of --seed; "
                   "cells become the mean over seeds.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Start this many local workers on this grid (one per GPU where several are visible; on CPUs the "
                   "cores are split between them, one torch thread each at least); implies --resume.")
@click.option("--no-crf", "no_crf", is_flag=True, help="Skip the dense CRF of segmenting methods: no CRF Dice, "
              "the same accuracy and raw Dice, scoring several times faster.")
@click.option("--score-batch", type=click.IntRange(min=0), default=None,
              help="Most volumes a method computes at once while scoring a chunk of 50 test episodes together; 0: "
                   "episode by episode. Results are the same either way (to the last bits of the network's "
                   "arithmetic). [default: 0 on CPUs, 256 on a GPU]")
@click.option("--crf-workers", type=click.IntRange(min=0), default=None,
              help="Processes refining segmentations with the dense CRF at once (0: in the main process); the same "
                   "masks either way. [default: 0 on CPUs; on a GPU, the cores but one, at most 8]")
@click.option("--archive", type=click.Path(path_type=Path), default=None,
              help="Folder that keeps each model's results once all its cells are scored (plain files to commit), "
                   "loaded into --store first: a run continues from it on a machine without the store or checkpoints.")
@click.option("--status", is_flag=True, help="Instead: show --store's progress (claims, heartbeats, episodes per cell).")
def bench(methods, param_texts, tuned, storage, snr_texts, ways, shots, queries_per_class, dataset, templates,
          test_classes, per_class, budgets, episodes, seed, device, store, resume, worker, models, lease_seconds,
          train_dataset, allow_class_overlap, seed_texts, workers, no_crf, score_batch, crf_workers, archive,
          status) -> None:
    """Train and score few-shot methods on identical test episodes; results go to a SQLite or
    PostgreSQL store, which several workers may share."""
    out = make_console()
    location = api.locate(store)  # a malformed or unsupported --store is refused before anything starts
    if status:
        claims, cells = api.bench_status(location)
        print_table(claims, f"claims in {location} (trainings and chunks of test episodes)", out)
        print_table(cells, f"cells of the grid in {location}: test episodes planned and stored", out)
        counts = cells["state"].value_counts()
        say(f"{len(cells)} cell(s): " + ", ".join(f"{counts[state]} {state}" for state in
                                                  ("done", "running", "pending", "not planned") if state in counts), out)
        return
    helpers: list = []
    with api.stopped_on_exit(helpers):  # entered before any worker starts, so none outlives an early stop
        if workers > 1:
            say(api.start_workers(_worker_argv(), workers, location, device, helpers))
        resume = resume or worker or workers > 1
        if episodes < api.LEADERBOARD_EPISODES:
            say(f"quick run: {episodes} test episodes per setting (leaderboards use ≥ {api.LEADERBOARD_EPISODES})", out)
        with progress_bars() as progress:
            frame = api.bench(
                methods or api.default_methods(device), params=api.parse_param_overrides(param_texts),
                tuned=tuned or (), storage=storage,
                snrs=snrs(snr_texts) if snr_texts else None, ways=parse_list(ways, "--ways", int), shots=parse_list(shots, "--shots", int),
                queries_per_class=queries_per_class, dataset=dataset, templates=templates,
                test_classes=parse_list(test_classes, "--test-classes"), per_class=per_class, budget=list(budgets),
                episodes=episodes, seed=seed, device=device, store=location, resume=resume, models=models,
                lease_seconds=lease_seconds, train_dataset=train_dataset,
                allow_class_overlap=allow_class_overlap, seeds=parse_list(seed_texts, "--seeds", int),
                crf=not no_crf, score_batch=score_batch, crf_workers=crf_workers, archive=archive,
                reporter=RichReporter(progress),
                on_results=lambda rows: _accuracy_table(rows, "so far (the grid goes on): ", progress.console))
    _accuracy_table(frame, "", out)
    say(f"results in {location}; render leaderboards with: fsc leaderboard --store {location}", out)
    failures = frame.attrs.get("failures", [])
    failures += [f"worker {i + 2} exited with status {code}" for i, code in enumerate(p.wait() for p in helpers) if code]
    if failures:
        raise FscError(f"{len(failures)} method run(s) failed, the rest completed: " + "; ".join(failures))


def _accuracy_table(frame, lead: str, out) -> None:
    """The leaderboard's own accuracy table (same order, cells and bold ties) of ``frame``'s rows."""
    if frame.empty:
        return
    where, accuracy = api.bench_table(frame)
    accuracy = accuracy.map(lambda cell: re.sub(r"\*\*(.+)\*\*", r"[bold]\1[/]", cell))
    episodes = frame.groupby("cell")["episode"].nunique()
    queries = ", ".join(map(str, sorted(frame["q_query"].unique())))
    print_table(accuracy.reset_index(names="method"), f"{lead}{where}: accuracy ± 95% CI over "
                f"{episodes.min()} test episodes per cell ({queries} queries/class)", out, tuple(accuracy.columns))


def _worker_argv() -> list[str]:
    """This command as given, without ``--workers``: what each extra worker runs (with ``--worker``)."""
    argv, skip = [], False
    for word in click.get_current_context().meta["fsc.args"]:
        if skip:
            skip = False
            continue
        if word == "--workers":
            skip = True
            continue
        if not word.startswith("--workers="):
            argv.append(word)
    return argv


@click.command("methods")
def list_methods() -> None:
    """List every registered method (built-in and plugins) with its variants and origin."""
    print_table(api.methods(), "few-shot methods")


@click.command()
@store_option("Results store to read.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the Markdown, CSV and PNG tables [default: leaderboards/<data set name>/].")
@click.option("--compare", nargs=2, default=None, metavar="A B",
              help="Instead: print method A against B, cell by cell (paired test on shared episodes).")
@click.option("--overwrite", is_flag=True, help="Write into an --out folder that holds other files but no leaderboard "
              "(only the leaderboard's files are replaced); a leaderboard folder is updated without it.")
def leaderboard(store, out, compare, overwrite) -> None:
    """Render Markdown, CSV and PNG leaderboards from a results store."""
    if compare:
        a, b = compare
        print_table(api.compare(store, a, b), f"{a} against {b} (paired Wilcoxon on the same episodes, α = 0.05)")
        return
    for path in api.leaderboard(store, out, reporter=CallbackReporter(on_progress=None, on_log=say), overwrite=overwrite):
        say(f"wrote {path}")
