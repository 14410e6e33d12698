"""The ``fsc`` command line: a thin face over :mod:`fewshot_cryoet.api`.

Each command parses its options, calls one API function and prints what it returns. Every command
turns :class:`FscError` into one line on stderr and exit status 2 (credentials masked, paths
printed literally, a library setting shown as its option), Ctrl-C into exit status 130 and SIGTERM
into 143; outputs are written atomically, so neither leaves half-written data that looks complete.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
from rich.text import Text

from fewshot_cryoet.core.version import __version__
from fewshot_cryoet import api
from fewshot_cryoet.cli.options import (
    data_options, method_options, out_options, parse_list, parse_range, parse_value_or_range, queries_per_class_option,
    run_options, snrs, store_option,
)
from fewshot_cryoet.cli.terminal import (
    RichReporter, console, error_text, make_console, print_error, print_table, print_warning, progress_bars, say,
)
from fewshot_cryoet.datasets.presets import PRESETS
from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.core.local_workers import cpu_threads, launch, stopped_on_exit, thread_env
from fewshot_cryoet.results.store import STALE_SECONDS
from fewshot_cryoet.results.location import StoreLocation, locate


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every partial output is cleaned up the same way."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


#: Options that take several values after one flag, as users type them (``--templates maps/ model.cif``).
LIST_OPTIONS = ("--templates",)


def expand_list_options(args: list[str]) -> list[str]:
    """``--templates a b --snr 1`` → ``--templates a --templates b --snr 1``: click options take one
    value per flag, so the values after one flag are spelled out; a token starting with ``-`` ends
    the list. No command with such an option takes positional arguments, so nothing is swallowed."""
    out: list[str] = []
    current: str | None = None  # the list option whose values follow
    awaiting = False  # its own value (``--templates a``) has not come yet
    for token in args:
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            current = name if name in LIST_OPTIONS else None
            awaiting = current is not None and "=" not in token
            out.append(token)
        elif current is not None and not awaiting:
            out += [current, token]
        else:
            awaiting = False
            out.append(token)
    return out


class FscGroup(click.Group):
    """Reports FscError as one line and exit status 2, Ctrl-C as 130, SIGTERM as 143; several
    values after one list option are accepted (:func:`expand_list_options`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not ctx.parent:  # the top-level group sees every token once
            args = expand_list_options(list(args))
            ctx.meta["fsc.args"] = list(args)  # the command as given, for --workers to repeat
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except FscError as exc:
            print_error(error_text(exc))
            sys.exit(2)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            console.print(Text.assemble(("fsc: terminated" if terminated else "fsc: interrupted", "bold red"),
                                        "; partial output was removed"))
            sys.exit(143 if terminated else 130)


@click.group(cls=FscGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fsc")
def main() -> None:
    """fewshot-cryoet: few-shot classification and segmentation benchmarks for cryo-ET."""


@main.command()
@click.option("--templates", multiple=True, metavar="DIR|FILE", help="Density maps (MRC) or atomic models (PDB/mmCIF), "
              "or folders of them; repeatable. Default: built-in synthetic macromolecules.")
@click.option("--classes", type=click.IntRange(min=1), default=22, show_default=True, help="Synthetic classes (without --templates).")
@click.option("--synthetic-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the first synthetic class.")
@click.option("--template-voxel-size", type=float, default=None, help="Override the voxel size (Å) in map headers.")
@click.option("--resolution", type=float, default=None, help="Resolution (Å) of atomic models and synthetic classes [2 × voxel size].")
@click.option("--snr", "snr_texts", multiple=True, default=("1000",), show_default=True,
              help="SNR (var signal / var noise; inf = noise-free); repeatable, levels share the particles.")
@click.option("--per-class", type=click.IntRange(min=1), default=200, show_default=True, help="Subtomograms per class.")
@out_options("Data set folder")
@click.option("--route", type=click.Choice(["tilt-series", "fourier"]), default="tilt-series", show_default=True,
              help="Imaging: tilt series + weighted back-projection, or the fast Fourier-space model.")
@click.option("--box", type=int, default=32, show_default=True, help="Subtomogram edge (voxels).")
@click.option("--voxel-size", type=float, default=10.0, show_default=True, help="Voxel size (Å).")
@click.option("--tilt-range", default="-60,60", show_default=True,
              help="Tilt range in degrees, MIN,MAX; each end may be a range drawn per particle, e.g. -70..-50,50..70.")
@click.option("--tilt-step", default="2", show_default=True, help="Tilt increment (degrees): a value or MIN..MAX per particle.")
@click.option("--alignment-jitter", default="0", show_default=True,
              help="Residual tilt-series misalignment: random shift per projection (voxels, SD), a value or MIN..MAX.")
@click.option("--acquisition-voxel-size", default=None,
              help="Image each particle at this pixel size (Å), a value or MIN..MAX, then resample to --voxel-size [same].")
@click.option("--defocus", default="2-6", show_default=True, help="Underfocus range (µm), uniform per particle.")
@click.option("--no-ctf", is_flag=True, help="Image without CTF (pure projection and missing wedge).")
@click.option("--crowding", default="0", show_default=True, help="Neighbour particles per subtomogram: N or MIN-MAX in 0-4.")
@click.option("--max-shift", type=float, default=1.0, show_default=True, help="Random shift per axis (voxels).")
@click.option("--contour", type=float, default=0.1, show_default=True, help="Mask contour, fraction of the template maximum.")
@click.option("--amplitude-contrast", default="0.07", show_default=True, help="Amplitude contrast: a value or MIN-MAX per particle.")
@click.option("--envelope", default="0.4", show_default=True,
              help="CTF envelope σ, fraction of Nyquist (smaller = stronger B-factor): a value or MIN-MAX per particle.")
@click.option("--lowpass", default=None, help="Extra Gaussian low-pass: resolution (Å) where the amplitude halves, "
              "a value or MIN-MAX per particle [none].")
@click.option("--background", type=float, default=0.0, show_default=True,
              help="Share of the noise variance from a structured 1/f background, in [0, 1).")
@click.option("--contrast", type=click.Choice(["positive", "negative"]), default="positive", show_default=True,
              help="negative: dark particles on a bright background, as in raw tomograms.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Named shifted imaging (see README); options given here override it.")
@click.option("--split", "split_text", default="0.4,0.2,0.4", show_default=True, help="Class fractions train,val,test.")
@click.option("--val-classes", default=None, help="Comma-separated validation classes (overrides --split).")
@click.option("--test-classes", default=None, help="Comma-separated test classes (overrides --split).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of everything random.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Simulation processes.")
@click.option("--scene", is_flag=True, help="Write a crowded tomogram instead: tomogram.mrc, labels.mrc, RELION 4/5 "
              "particle STAR files and a copick project (then fsc import them).")
@click.option("--scene-size", default="256,256,128", show_default=True, help="With --scene: tomogram size x,y,z (voxels).")
@click.option("--scene-particles", type=click.IntRange(min=1), default=120, show_default=True,
              help="With --scene: particles placed.")
def simulate(templates, classes, synthetic_seed, template_voxel_size, resolution, snr_texts, per_class, out, overwrite,
             route, box, voxel_size, tilt_range, tilt_step, alignment_jitter, acquisition_voxel_size, defocus, no_ctf, crowding, max_shift, contour,
             amplitude_contrast, envelope, lowpass, background, contrast, preset, split_text, val_classes,
             test_classes, seed, workers, scene, scene_size, scene_particles) -> None:
    """Simulate a data set of subtomograms with ground-truth masks (or, with --scene, a tomogram)."""
    from fewshot_cryoet.datasets.presets import apply_preset
    from fewshot_cryoet.datasets.simulate import SimulationConfig

    if scene:
        _simulate_scene(templates, classes, synthetic_seed, template_voxel_size, resolution, snr_texts, out,
                        voxel_size, tilt_range, tilt_step, defocus, contour, seed, scene_size, scene_particles)
        return

    value_or_range = parse_value_or_range
    tilt_min, tilt_max = _tilt_range(tilt_range)
    chosen = {  # option → the config settings it sets
        "box": {"box": box}, "voxel_size": {"voxel_size": voxel_size}, "route": {"route": route},
        "tilt_range": {"tilt_min": tilt_min, "tilt_max": tilt_max},
        "tilt_step": {"tilt_step": value_or_range(tilt_step, "--tilt-step")},
        "alignment_jitter": {"alignment_jitter": value_or_range(alignment_jitter, "--alignment-jitter")},
        "acquisition_voxel_size": {"acquisition_voxel_size": value_or_range(acquisition_voxel_size, "--acquisition-voxel-size")
                                   if acquisition_voxel_size else None},
        "no_ctf": {"ctf": not no_ctf}, "defocus": {"defocus_um": parse_range(defocus, "--defocus")},
        "max_shift": {"max_shift": max_shift}, "crowding": {"crowding": parse_range(crowding, "--crowding", int)},
        "contour": {"contour": contour}, "background": {"background": background}, "contrast": {"contrast": contrast},
        "amplitude_contrast": {"amplitude_contrast": value_or_range(amplitude_contrast, "--amplitude-contrast")},
        "envelope": {"envelope_sigma": value_or_range(envelope, "--envelope")},
        "lowpass": {"lowpass_angstrom": value_or_range(lowpass, "--lowpass") if lowpass else None},
    }
    ctx = click.get_current_context()
    given = {k: v for option, settings in chosen.items() for k, v in settings.items()
             if preset is None or ctx.get_parameter_source(option) is click.core.ParameterSource.COMMANDLINE}
    config = apply_preset(SimulationConfig(), preset, given)
    with progress_bars() as progress:
        dataset = api.simulate(
            out, templates=templates, classes=classes, synthetic_seed=synthetic_seed,
            template_voxel_size=template_voxel_size, resolution=resolution, snrs=snrs(snr_texts), per_class=per_class,
            config=config, split=parse_list(split_text, "--split", float), val_classes=parse_list(val_classes, "--val-classes"),
            test_classes=parse_list(test_classes, "--test-classes"), seed=seed, workers=workers, overwrite=overwrite,
            reporter=RichReporter(progress))
    _print_summary(dataset)


@main.command(name="import")
@click.argument("source", type=click.Path(path_type=Path))
@out_options("Data set folder")
@click.option("--format", "format_", default=None,
              help="Kind of source (folder, table, tomograms, copick, or a plugin's) [recognised from SOURCE].")
@click.option("--box", type=click.IntRange(min=4), default=None, help="Subtomogram edge (voxels) [the source's; 32 "
              "for tomograms].")
@click.option("--voxel-size", type=float, default=None, help="Voxel size (Å) to resample to [the source's].")
@click.option("--tomograms", type=click.Path(path_type=Path), default=None,
              help="Coordinates' tomograms: one MRC file, or a folder of <name>.mrc.")
@click.option("--masks", type=click.Path(path_type=Path), default=None,
              help="Masks: a folder mirroring the class folders, or label volumes named like the tomograms.")
@click.option("--class-column", default=None, help="Table column holding the class [class, rlnClassNumber, ...].")
@click.option("--class-map", type=click.Path(path_type=Path), default=None,
              help="CSV with columns value,name mapping class values (e.g. RELION class numbers) to names.")
@click.option("--invert", is_flag=True, help="Invert contrast (dark particles, as in raw tomograms); recorded.")
@click.option("--voxel-spacing", type=float, default=None, help="copick: voxel spacing (Å) of the tomograms to read.")
@click.option("--tomo-type", default=None, help="copick: reconstruction to read [the first].")
@click.option("--objects", default=None, help="copick: comma-separated objects that become classes [all picked].")
@click.option("--user-id", default=None, help="copick: only this user's picks.")
@click.option("--segmentation", default=None, help="copick: multilabel segmentation whose labels become masks.")
@click.option("--val-classes", default=None, help="Comma-separated validation classes [drawn from --seed].")
@click.option("--test-classes", default=None, help="Comma-separated test classes [drawn from --seed].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the drawn splits.")
def import_(source, out, overwrite, format_, box, voxel_size, tomograms, masks, class_column, class_map, invert,
            voxel_spacing, tomo_type, objects, user_id, segmentation, val_classes, test_classes, seed) -> None:
    """Turn your own particles into a data set for bench, train, tune, show, info and export:
    class folders of MRC files, RELION STAR or CSV tables, coordinates plus tomograms, or a copick
    project. Resumable: run the same command again after an interruption."""
    with progress_bars() as progress:
        dataset = api.import_data(
            source, out, format=format_, box=box, voxel_size=voxel_size, tomograms=tomograms, masks=masks,
            class_column=class_column, class_map=class_map, invert=invert, voxel_spacing=voxel_spacing,
            tomo_type=tomo_type, objects=parse_list(objects, "--objects") or (), user_id=user_id,
            segmentation=segmentation, val_classes=parse_list(val_classes, "--val-classes"),
            test_classes=parse_list(test_classes, "--test-classes"), seed=seed, overwrite=overwrite,
            reporter=RichReporter(progress))
    _print_summary(dataset)


def _simulate_scene(templates, classes, synthetic_seed, template_voxel_size, resolution, snr_texts, out, voxel_size,
                    tilt_range, tilt_step, defocus, contour, seed, scene_size, scene_particles) -> None:
    from fewshot_cryoet.datasets.scene import SceneConfig

    levels = snrs(snr_texts)
    if len(levels) != 1:
        raise SettingError("snr", "snr: a scene is imaged at one SNR level; give --snr once")
    size = parse_list(scene_size, "--scene-size", int)
    if len(size) != 3 or min(size) < 16:
        raise SettingError("scene_size", f"scene_size {scene_size!r}: give x,y,z, each at least 16 voxels")
    low, high = _tilt_range(tilt_range)
    defocus_range = parse_range(defocus, "--defocus")
    config = SceneConfig(shape_xyz=tuple(size), voxel_size=voxel_size, particles=scene_particles, snr=levels[0],
                         tilt_min=float(low), tilt_max=float(high), tilt_step=float(parse_value_or_range(tilt_step, "--tilt-step")),
                         defocus_um=float(sum(defocus_range)) / 2, contour=contour, seed=seed)
    with progress_bars() as progress:
        path = api.simulate_scene(out, templates=templates, classes=classes, synthetic_seed=synthetic_seed,
                                  template_voxel_size=template_voxel_size, resolution=resolution, config=config,
                                  reporter=RichReporter(progress))
    say(f"wrote {path}: tomogram.mrc, labels.mrc, particles_relion4.star, particles_relion5.star, classes.csv, "
        f"copick.json; import it with: fsc import {path}/particles_relion5.star --tomograms {path}/tomogram.mrc "
        f"--class-map {path}/classes.csv --masks {path}/labels.mrc --out DATASET")


def _tilt_range(text: str) -> tuple:
    """``-60,60`` → (-60, 60); ``-70..-50,50..70`` → ((-70, -50), (50, 70)); ``-60,60`` may also
    be written ``-60-60``, as before ranges existed."""
    parts = text.split(",")
    if len(parts) == 2 and ".." in text:
        return tuple(parse_value_or_range(p.strip(), "--tilt-range") for p in parts)
    return parse_range(text, "--tilt-range")


def _print_summary(dataset) -> None:
    classes, lines = api.dataset_summary(dataset)
    print_table(classes, f"{dataset.path}  ({len(dataset)} subtomograms, {dataset.box}³ at {dataset.voxel_size:g} Å)")
    for line in lines:
        say(line)


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("montage.png"), show_default=True, help="PNG to write.")
@click.option("--snr", default=None, help="SNR level to show [the noisiest].")
@click.option("--per-class", type=click.IntRange(min=1), default=3, show_default=True, help="Subtomograms shown per class.")
@click.option("--axis", type=click.Choice(["z", "y", "x"]), default="z", show_default=True,
              help="Slice normal: z (XY slice) or y (XZ slice, shows the missing wedge).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="A segmenting method's model folder or "
              "checkpoint (e.g. from <store>.models/): draw its raw and CRF-refined masks per test class instead.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def show(dataset, out, snr, per_class, axis, model, device) -> None:
    """Draw central slices of subtomograms and masks per class (or a model's segmentations) into a PNG."""
    say(f"wrote {api.show(dataset, out, snr, per_class, axis, model, device)}")


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@out_options("Export folder")
@click.option("--snr", default=None, help="SNR level to export [the noisiest].")
def export(dataset, out, overwrite, snr) -> None:
    """Export a data set to MRC files and a RELION-style particles.star."""
    with progress_bars() as progress:
        star = api.export(dataset, out, snr, overwrite, RichReporter(progress))
    say(f"wrote {star}")


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Also rehash every file (slow on large data sets).")
def info(dataset, verify) -> None:
    """Summarise a data set (classes, splits, SNR levels) after checking it."""
    _print_summary(api.open_dataset(dataset, verify))
    if verify:
        say("verified: files match the manifest's hashes")


@main.command()
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
              help="Folder of trained checkpoints, which every worker of one store must share [beside a SQLite "
                   "store: <store>.models; for PostgreSQL: fsc-<database>.models here].")
@click.option("--lease", "lease_seconds", type=click.FloatRange(min=1), default=STALE_SECONDS, show_default=True,
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
@click.option("--archive", type=click.Path(path_type=Path), default=None,
              help="Folder that keeps each model's results once all its cells are scored (plain files to commit), "
                   "loaded into --store first: a run continues from it on a machine without the store or checkpoints.")
@click.option("--status", is_flag=True, help="Instead: show --store's progress (claims, heartbeats, episodes per cell).")
def bench(methods, param_texts, tuned, storage, snr_texts, ways, shots, queries_per_class, dataset, templates,
          test_classes, per_class, budgets, episodes, seed, device, store, resume, worker, models, lease_seconds,
          train_dataset, allow_class_overlap, seed_texts, workers, no_crf, archive, status) -> None:
    """Train and score few-shot methods on identical test episodes; results go to a SQLite or
    PostgreSQL store, which several workers may share."""
    from fewshot_cryoet.reports.leaderboard import LEADERBOARD_EPISODES, accuracy_table, domain, summarise

    out = make_console()
    location = locate(store)  # a malformed or unsupported --store is refused before anything starts
    if status:
        claims, cells = api.bench_status(location)
        print_table(claims, f"claims in {location} (trainings and chunks of test episodes)", out)
        print_table(cells, f"cells of the grid in {location}: test episodes planned and stored", out)
        counts = cells["state"].value_counts()
        say(f"{len(cells)} cell(s): " + ", ".join(f"{counts[state]} {state}" for state in
                                                  ("done", "running", "pending", "not planned") if state in counts), out)
        return
    helpers: list = []
    with stopped_on_exit(helpers):  # entered before any worker starts, so none outlives an early stop
        if workers > 1:
            _start_workers(workers, location, device, helpers)
        resume = resume or worker or workers > 1
        if episodes < LEADERBOARD_EPISODES:
            say(f"quick run: {episodes} test episodes per setting (leaderboards use ≥ {LEADERBOARD_EPISODES})", out)
        with progress_bars() as progress:
            frame = api.bench(
                methods, params=api.parse_param_overrides(param_texts), tuned=tuned or (), storage=storage,
                snrs=snrs(snr_texts) if snr_texts else None, ways=parse_list(ways, "--ways", int), shots=parse_list(shots, "--shots", int),
                queries_per_class=queries_per_class, dataset=dataset, templates=templates,
                test_classes=parse_list(test_classes, "--test-classes"), per_class=per_class, budget=list(budgets),
                episodes=episodes, seed=seed, device=device, store=location, resume=resume, models=models,
                lease_seconds=lease_seconds, train_dataset=train_dataset,
                allow_class_overlap=allow_class_overlap, seeds=parse_list(seed_texts, "--seeds", int),
                crf=not no_crf, archive=archive, reporter=RichReporter(progress))
    if not frame.empty:  # the leaderboard's own table (same order, cells and bold ties)
        accuracy = accuracy_table(summarise(frame), frame).map(lambda cell: re.sub(r"\*\*(.+)\*\*", r"[bold]\1[/]", cell))
        where = domain(frame["train_dataset"].iloc[0], frame["dataset"].iloc[0])
        print_table(accuracy.reset_index(names="method"), f"{where}: accuracy ± 95% CI over "
                    f"{episodes} test episodes ({queries_per_class} queries/class)", out, tuple(accuracy.columns))
    say(f"results in {location}; render leaderboards with: fsc leaderboard --store {location}", out)
    failures = frame.attrs.get("failures", [])
    failures += [f"worker {i + 2} exited with status {code}" for i, code in enumerate(p.wait() for p in helpers) if code]
    if failures:
        raise FscError(f"{len(failures)} method run(s) failed, the rest completed: " + "; ".join(failures))


def _start_workers(workers: int, store: StoreLocation, device: str, helpers: list) -> None:
    """``workers − 1`` more processes running this very command with --worker (this one is the
    first), added to ``helpers`` as each starts; each writes its log in ``<store>.workers/``.
    With several GPUs visible and --device auto or cuda, worker i sees only GPU i mod the count;
    otherwise the CPU cores are split evenly (at least one torch thread each), so the workers do
    not fight over them."""
    import torch

    argv = []
    skip = False
    for word in click.get_current_context().meta["fsc.args"]:  # this command as given, without --workers
        if skip:
            skip = False
            continue
        if word == "--workers":
            skip = True
            continue
        if not word.startswith("--workers="):
            argv.append(word)
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    threads = cpu_threads(workers)
    if gpus <= 1:
        torch.set_num_threads(threads)
    logs = store.sibling(".workers")
    for i in range(1, workers):
        devices = {"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus > 1 else thread_env(threads)
        launch([sys.executable, "-m", "fewshot_cryoet", *argv, "--worker"], logs / f"worker-{i + 1}.log",
               {"FSC_WORKER": str(i + 1), **devices}, helpers)
    split = f"one GPU each ({gpus} visible)" if gpus > 1 else f"{threads} CPU thread(s) each"
    say(f"started {workers - 1} more worker(s) on {store}, {split}; their logs: {logs}/")


@main.command("methods")
def list_methods() -> None:
    """List every registered method (built-in and plugins) with its variants and origin."""
    print_table(api.methods(), "few-shot methods")


@main.command()
@store_option("Results store to read.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the Markdown, CSV and PNG tables [leaderboards/<data set name>/].")
@click.option("--compare", nargs=2, default=None, metavar="A B",
              help="Instead: print method A against B, cell by cell (paired test on shared episodes).")
def leaderboard(store, out, compare) -> None:
    """Render Markdown, CSV and PNG leaderboards from a results store."""
    if compare:
        a, b = compare
        print_table(api.compare(store, a, b), f"{a} against {b} (paired Wilcoxon on the same episodes, α = 0.05)")
        return
    from fewshot_cryoet.core.reporting import CallbackReporter

    for path in api.leaderboard(store, out, reporter=CallbackReporter(on_progress=None, on_log=say)):
        say(f"wrote {path}")


def _add_commands() -> None:
    """The built-in commands of other modules, then plugins' commands (``fsc_add_cli_commands``);
    a plugin that fails to load or to add commands is reported, never fatal."""
    from fewshot_cryoet.cli.models import predict, train
    from fewshot_cryoet.cli.tune import tune
    from fewshot_cryoet.plugins import get_plugins

    for command in (tune, train, predict):
        main.add_command(command)
    plugins = get_plugins()
    for failure in plugins.failures:
        print_warning(failure)
    for impl in plugins.manager.hook.fsc_add_cli_commands.get_hookimpls():
        try:
            impl.function(cli=main)
        except (Exception, SystemExit) as exc:
            print_warning(f"plugin {impl.plugin_name} could not add commands: {exc}")


_add_commands()

if __name__ == "__main__":
    main()
