"""The ``fsc`` command line.

Every command turns :class:`FscError` into one line on stderr and exit status 2 (credentials
masked, paths printed literally), Ctrl-C into exit status 130 and SIGTERM into 143; output folders
are written atomically, so neither leaves half-written data that looks complete.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.markup import escape
from rich.table import Table
from rich.text import Text

import fewshot_cryoet
from fewshot_cryoet.errors import FscError

console = Console(stderr=True)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _parse_range(text: str, option: str, cast=float) -> tuple:
    """``"2-6"`` or ``"-60,60"`` → (low, high); ``"3"`` → (3, 3)."""
    match = re.fullmatch(r"\s*(-?[\d.]+)\s*(?:[-,]\s*(-?[\d.]+)\s*)?", text)
    try:
        low = cast(match.group(1))
        high = cast(match.group(2)) if match.group(2) is not None else low
    except (AttributeError, ValueError):
        raise FscError(f"{option} {text!r}: expected a number or a range such as 2-6 or -60,60") from None
    if low > high:
        raise FscError(f"{option} {text!r}: expected a range low-high with low ≤ high")
    return low, high


def print_error(message: object) -> None:
    """One error line on stderr: credentials masked, the text printed literally (a path such as
    ``tomo[raw].mrc`` is not rich markup)."""
    from fewshot_cryoet.redact import mask_secrets

    console.print(Text.assemble(("fsc: error: ", "bold red"), mask_secrets(str(message))), highlight=False,
                  soft_wrap=True)


def print_warning(message: object) -> None:
    from fewshot_cryoet.redact import mask_secrets

    console.print(Text.assemble(("fsc: warning: ", "yellow"), mask_secrets(str(message))), highlight=False,
                  soft_wrap=True)


def say(message: object, console_: Console | None = None) -> None:
    """A plain line (paths, labels, numbers) printed literally, credentials masked."""
    from fewshot_cryoet.redact import mask_secrets

    (console_ or Console()).print(mask_secrets(str(message)), markup=False, highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every partial output is cleaned up the same way."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


class FscGroup(click.Group):
    """Click group that reports FscError as one line and exit status 2, Ctrl-C as status 130 and
    SIGTERM as status 143, both after partial output was removed."""

    def invoke(self, ctx: click.Context):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except FscError as exc:
            print_error(exc)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            console.print(Text.assemble(("fsc: terminated" if terminated else "fsc: interrupted", "bold red"),
                                        "; partial output was removed"))
            sys.exit(143 if terminated else 130)


@click.group(cls=FscGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(fewshot_cryoet.__version__, prog_name="fsc")
def main() -> None:
    """fewshot-cryoet: few-shot classification and segmentation benchmarks for cryo-ET."""


@main.command()
@click.option("--templates", "template_paths", multiple=True, metavar="DIR|FILE",
              help="Density maps (MRC) or atomic models (PDB/mmCIF), or folders of them; repeatable. "
                   "Default: built-in synthetic macromolecules.")
@click.option("--classes", type=click.IntRange(min=1), default=22, show_default=True, help="Number of synthetic classes (without --templates).")
@click.option("--synthetic-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the first synthetic class.")
@click.option("--template-voxel-size", type=float, default=None, help="Override the voxel size (Å) in map headers.")
@click.option("--resolution", type=float, default=None, help="Resolution (Å) for atomic models and synthetic classes [2 × voxel size].")
@click.option("--snr", "snr_texts", multiple=True, default=("1000",), show_default=True,
              help="SNR level (var signal / var noise; 'inf' for noise-free); repeatable, levels share the same particles.")
@click.option("--per-class", type=click.IntRange(min=1), default=200, show_default=True, help="Subtomograms per class.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output data set folder.")
@click.option("--route", type=click.Choice(["tilt-series", "fourier"]), default="tilt-series", show_default=True,
              help="Imaging: tilt series + weighted back-projection, or the fast Fourier-space model.")
@click.option("--box", type=int, default=32, show_default=True, help="Subtomogram edge (voxels).")
@click.option("--voxel-size", type=float, default=10.0, show_default=True, help="Voxel size (Å).")
@click.option("--tilt-range", default="-60,60", show_default=True, help="Tilt range in degrees, min,max.")
@click.option("--tilt-step", type=float, default=2.0, show_default=True, help="Tilt increment (degrees).")
@click.option("--defocus", default="2-6", show_default=True, help="Underfocus range (µm), drawn uniformly per particle.")
@click.option("--no-ctf", is_flag=True, help="Image without CTF (pure projection and missing wedge).")
@click.option("--crowding", default="0", show_default=True, help="Neighbour particles per subtomogram: N or MIN-MAX within 0-4.")
@click.option("--max-shift", type=float, default=1.0, show_default=True, help="Random shift per axis (voxels).")
@click.option("--contour", type=float, default=0.1, show_default=True, help="Mask contour as a fraction of the template maximum.")
@click.option("--split", "split_text", default="0.4,0.2,0.4", show_default=True, help="Class fractions train,val,test.")
@click.option("--val-classes", default=None, help="Comma-separated validation classes (overrides --split).")
@click.option("--test-classes", default=None, help="Comma-separated test classes (overrides --split).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of everything random.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Simulation processes (1 = this process, all cores).")
@click.option("--overwrite", is_flag=True, help="Replace an existing data set at --out.")
def simulate(
    template_paths, classes, synthetic_seed, template_voxel_size, resolution, snr_texts, per_class, out,
    route, box, voxel_size, tilt_range, tilt_step, defocus, no_ctf, crowding, max_shift, contour,
    split_text, val_classes, test_classes, seed, workers, overwrite,
) -> None:
    """Simulate a data set of subtomograms with ground-truth masks."""
    from fewshot_cryoet.datasets.build import simulate_dataset
    from fewshot_cryoet.datasets.dataset import check_output_folder, parse_snr
    from fewshot_cryoet.datasets.simulate import SimulationConfig

    snrs = [parse_snr(s) for s in snr_texts]
    tilt_min, tilt_max = _parse_range(tilt_range, "--tilt-range")
    config = SimulationConfig(
        box=box, voxel_size=voxel_size, route=route, tilt_min=tilt_min, tilt_max=tilt_max,
        tilt_step=tilt_step, ctf=not no_ctf, defocus_um=_parse_range(defocus, "--defocus"),
        max_shift=max_shift, crowding=_parse_range(crowding, "--crowding", int), contour=contour,
    )
    try:
        fractions = tuple(float(x) for x in split_text.split(","))
    except ValueError:
        raise FscError(f"--split {split_text!r}: expected three fractions such as 0.4,0.2,0.4") from None
    explicit = {}
    if val_classes:
        explicit["val"] = _split_list(val_classes, "--val-classes")
    if test_classes:
        explicit["test"] = _split_list(test_classes, "--test-classes")
    check_output_folder(out, overwrite)  # fail before the slow part
    with make_progress() as progress:
        templates = _load_templates(template_paths, classes, synthetic_seed, voxel_size,
                                    template_voxel_size, resolution, progress)
        dataset = simulate_dataset(
            templates, out, snrs, per_class, config, seed, workers, fractions, explicit or None,
            overwrite, progress,
        )
    _print_summary(dataset)


def _load_templates(paths, classes, synthetic_seed, voxel_size, template_voxel_size, resolution, progress):
    from fewshot_cryoet.datasets.synthetic import synthetic_template
    from fewshot_cryoet.datasets.templates import find_template_files, load_template

    if paths:
        files = find_template_files(list(paths))
        task = progress.add_task("loading templates", total=len(files))
        templates = []
        for f in files:
            templates.append(load_template(f, voxel_size, template_voxel_size, resolution))
            progress.advance(task)
        return templates
    if classes < 1:
        raise FscError(f"--classes must be ≥ 1, got {classes}")
    task = progress.add_task("synthetic classes", total=classes)
    templates = []
    for i in range(classes):
        templates.append(synthetic_template(synthetic_seed + i, voxel_size, resolution))
        progress.advance(task)
    return templates


def _print_summary(dataset) -> None:
    out = Console()
    table = Table(title=f"{escape(str(dataset.path))}  ({len(dataset)} subtomograms, {dataset.box}³ at {dataset.voxel_size:g} Å)")
    table.add_column("class")
    table.add_column("split")
    table.add_column("extent (Å)", justify="right")
    table.add_column("particles", justify="right")
    counts = dataset.particles["class"].value_counts()
    for c in dataset.manifest["classes"]:
        table.add_row(escape(c["name"]), c["split"], f"{c['extent_angstrom']:.0f}", str(counts.get(c["name"], 0)))
    out.print(table)
    labels = dataset.labels
    for label in dataset.snr_labels:
        rows = labels[labels["volume_file"] == f"volumes/snr_{label}.npy"]
        measured = rows["snr_measured"].astype(float)
        masked = rows["snr_measured_mask"].astype(float)
        text = "noise-free" if math.isinf(measured.iloc[0]) else (
            f"measured {measured.mean():.4g} (box), {masked.median():.4g} median inside masks"
        )
        say(f"SNR {label}: {text}", out)
    say(f"content hash {dataset.content_hash}", out)


@main.command()
@click.argument("dataset_path", metavar="DATASET", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("montage.png"), show_default=True)
@click.option("--snr", default=None, help="SNR level to show [the noisiest].")
@click.option("--per-class", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--axis", type=click.Choice(["z", "y", "x"]), default="z", show_default=True,
              help="Slice normal: z (XY slice) or y (XZ slice, shows the missing wedge).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="A segmenting method's checkpoint (e.g. from <store>.models/): draw its raw and "
                   "CRF-refined masks per test class instead.")
@click.option("--device", default="auto", show_default=True)
def show(dataset_path, out, snr, per_class, axis, model, device) -> None:
    """Draw central slices of subtomograms and masks per class (or a model's segmentations) into a PNG."""
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.datasets.montage import draw_montage, draw_segmentations

    dataset = SubtomogramDataset(dataset_path)
    if model is not None:
        from fewshot_cryoet.methods.base import FewShotMethod
        from fewshot_cryoet.runner import resolve_device

        method = FewShotMethod.from_checkpoint(model, resolve_device(device))
        path = draw_segmentations(dataset, method, out, snr)
    else:
        path = draw_montage(dataset, out, snr, per_class, axis)
    say(f"wrote {path}")


@main.command()
@click.argument("dataset_path", metavar="DATASET", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export folder.")
@click.option("--snr", default=None, help="SNR level to export [the noisiest].")
@click.option("--overwrite", is_flag=True)
def export(dataset_path, out, snr, overwrite) -> None:
    """Export a data set to MRC files and a RELION-style particles.star."""
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.datasets.export import export_dataset

    dataset = SubtomogramDataset(dataset_path)
    with make_progress() as progress:
        star = export_dataset(dataset, out, snr or dataset.snr_labels[-1], overwrite, progress)
    say(f"wrote {star}")


@main.command()
@click.argument("dataset_path", metavar="DATASET", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Recompute the content hash.")
def info(dataset_path, verify) -> None:
    """Summarise a data set (classes, splits, SNR levels) and optionally verify its files."""
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset

    dataset = SubtomogramDataset(dataset_path)
    dataset.verify() if verify else dataset.check()
    _print_summary(dataset)
    if verify:
        Console().print("[green]verified[/]: files match the manifest's content hash")


def _split_list(text: str, option: str, cast=str) -> list:
    try:
        values = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FscError(f"{option} {text!r}: expected a comma-separated list such as 2,4,6,8") from None
    if not values:
        raise FscError(f"{option} is empty")
    return values


def _method_specs(methods_text: str, param_texts: tuple[str, ...]):
    """``protonet,siamese/variant`` plus ``--param name.key=value`` overrides → MethodSpecs."""
    import json as _json

    from fewshot_cryoet.plugins import get_plugins, require_methods
    from fewshot_cryoet.runner import MethodSpec

    plugins = get_plugins()
    entries = _split_list(methods_text, "--methods")
    names = [e.split("/", 1)[0] for e in entries]
    classes = require_methods(names)
    overrides: dict[str, dict] = {}
    for text in param_texts:
        match = re.fullmatch(r"([\w-]+)\.(\w+)=(.*)", text)
        if not match or match.group(1) not in names:
            raise FscError(f"--param {text!r}: use METHOD.KEY=VALUE for a method given in --methods")
        try:
            value = _json.loads(match.group(3))
        except ValueError:
            value = match.group(3)
        overrides.setdefault(match.group(1), {})[match.group(2)] = value
    specs = []
    for entry, name, cls in zip(entries, names, classes):
        method = cls(overrides.get(name), entry.split("/", 1)[1] if "/" in entry else None)  # validates now
        specs.append(MethodSpec(cls, method.variant, overrides.get(name, {}), str(plugins.methods.origin(name)),
                                method.label))
    return specs


def _method_spec(method_text: str, variant: str | None, param_texts: tuple[str, ...]):
    """The one MethodSpec of a --method NAME[/VARIANT] option, with --variant overriding."""
    if variant:
        method_text = f"{method_text.split('/', 1)[0]}/{variant}"
    return _method_specs(method_text, param_texts)[0]


def _apply_tuned(specs: list, tuned) -> list:
    """Give the spec(s) of the tuned method/variant the tuned hyper-parameters (explicit --param
    values still win) and a label that says they were tuned, and with how many trials."""
    from dataclasses import replace

    hits = [i for i, s in enumerate(specs)
            if s.cls.name == tuned.method and s.variant == tuned.variant]
    if not hits:
        raise FscError(f"{tuned.source}: tunes {tuned.method}/{tuned.variant}, which --methods does not "
                       f"include; add --methods {tuned.method}/{tuned.variant}")
    specs = list(specs)
    for i in hits:
        spec = specs[i]
        params = {**tuned.params, **spec.params}
        try:
            label = spec.cls(params, tuned.variant).label
        except FscError as exc:
            raise FscError(f"{tuned.source}: {exc}") from None
        specs[i] = replace(spec, variant=tuned.variant, params=params,
                           label=f"{label} · tuned ({tuned.trials} trials)")
    return specs


def _dataset_at(provider, fixed, snr: float, progress):
    """The data set at one SNR level: a fixed folder (which must hold that level) or a provider's
    (simulated into the cache on first use)."""
    from fewshot_cryoet.datasets.dataset import snr_label

    data = fixed if fixed is not None else provider.dataset(snr, progress)
    data.check()  # cheap: an edited manifest, truncated arrays or damaged labels stop here
    if snr_label(snr) not in data.snr_labels:
        raise FscError(f"{data.path}: has no SNR {snr_label(snr)} (it has {', '.join(data.snr_labels)})")
    return data


def _resolve_dataset(dataset: str | None, template_paths, per_class: int, test_classes: str | None):
    """(name, provider or None, fixed data set or None) for --dataset NAME|PATH / --templates."""
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.datasets.providers import templates_provider
    from fewshot_cryoet.plugins import get_plugins

    if template_paths:
        explicit = {"test": _split_list(test_classes, "--test-classes")} if test_classes else None
        provider = templates_provider(list(template_paths), per_class, explicit)
        return "templates:" + ",".join(Path(p).name for p in template_paths), provider, None
    name = dataset or "synthetic"
    registry = get_plugins().datasets
    if name in registry:
        provider = registry.get(name)
        if per_class != provider.per_class:
            from dataclasses import replace

            provider = replace(provider, per_class=per_class)
        return name, provider, None
    path = Path(name)
    if path.is_dir():
        return path.name, None, SubtomogramDataset(path)
    raise FscError(f"unknown data set {name!r}: not a folder and not one of: {', '.join(registry.names())}")


@main.command()
@click.option("--methods", "methods_text", default="protonet,siamese,xcorr", show_default=True,
              help="Comma-separated methods, optionally NAME/VARIANT.")
@click.option("--param", "param_texts", multiple=True, metavar="METHOD.KEY=VALUE", help="Hyper-parameter override; repeatable.")
@click.option("--params", "params_sources", multiple=True, metavar="best:STUDY|FILE",
              help="Tuned hyper-parameters: a study's best trial (in --tune-storage) or a file from fsc tune --export; repeatable.")
@click.option("--tune-storage", default="sqlite:///fsc-tune.sqlite", show_default=True,
              help="Optuna storage holding the studies named by --params best:STUDY.")
@click.option("--snr", "snr_texts", multiple=True, default=("1000",), show_default=True, help="SNR level; repeatable.")
@click.option("--ways", default="2,4,6,8", show_default=True, help="N-way settings.")
@click.option("--shots", default="1", show_default=True, help="K-shot settings.")
@click.option("--queries", type=click.IntRange(min=1), default=5, show_default=True, help="Query subtomograms per class per episode.")
@click.option("--dataset", default=None, help="Registered data set name or a data set folder [synthetic].")
@click.option("--templates", "template_paths", multiple=True, metavar="DIR|FILE", help="Simulate from these templates instead.")
@click.option("--test-classes", default=None, help="With --templates: comma-separated test classes.")
@click.option("--per-class", type=click.IntRange(min=1), default=100, show_default=True, help="Subtomograms per class when simulating.")
@click.option("--budget", "budget_text", default="1m", show_default=True, help="Training budget per method and SNR: 10m, 500ep, 500ep,10m.")
@click.option("--episodes", type=click.IntRange(min=1), default=600, show_default=True, help="Test episodes per setting (≥ 600 for leaderboards).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--store", type=click.Path(path_type=Path), default=Path("fsc-results.sqlite"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --store.")
def bench(methods_text, param_texts, params_sources, tune_storage, snr_texts, ways, shots, queries, dataset, template_paths, test_classes,
          per_class, budget_text, episodes, seed, device, store, resume) -> None:
    """Train and score few-shot methods on identical test episodes; results go to a SQLite store."""
    from fewshot_cryoet.datasets.dataset import parse_snr, snr_label
    from fewshot_cryoet.leaderboard import LEADERBOARD_EPISODES, accuracy_table, summarise
    from fewshot_cryoet.methods.base import Budget
    from fewshot_cryoet.runner import BenchSettings, Runner
    from fewshot_cryoet.store import ResultsStore

    specs = _method_specs(methods_text, param_texts)
    if params_sources:
        from fewshot_cryoet.tuning import resolve_params

        for source in params_sources:
            specs = _apply_tuned(specs, resolve_params(source, tune_storage))
    settings = BenchSettings(
        ways=_split_list(ways, "--ways", int), shots=_split_list(shots, "--shots", int), queries=queries,
        episodes=episodes, budget=Budget.parse(budget_text), seed=seed, device=device,
    )
    if episodes < 1 or queries < 1:
        raise FscError("--episodes and --queries must be ≥ 1")
    settings.torch_device  # validate --device now
    snrs = [parse_snr(s) for s in snr_texts]
    name, provider, fixed = _resolve_dataset(dataset, template_paths, per_class, test_classes)
    if fixed is not None:
        fixed.check()  # before the store is created or anything trains
        missing = [snr_label(s) for s in snrs if snr_label(s) not in fixed.snr_labels]
        if missing:
            raise FscError(f"{fixed.path}: has no SNR {', '.join(missing)} (it has {', '.join(fixed.snr_labels)})")
    results = ResultsStore(store)
    out = Console()
    if episodes < LEADERBOARD_EPISODES:
        out.print(f"[yellow]quick run:[/] {episodes} test episodes per setting (leaderboards use ≥ {LEADERBOARD_EPISODES})")
    with make_progress() as progress:
        runner = Runner(results, settings, progress, resume, log=lambda m: say(m, progress.console))
        for snr in snrs:
            runner.run_snr(specs, _dataset_at(provider, fixed, snr, progress), name, snr)
    frame = results.frame()
    labels = {spec.label for spec in specs}
    frame = frame[frame["label"].isin(labels) & frame["snr"].isin([snr_label(s) for s in snrs])
                  & frame["seed"].eq(seed) & frame["dataset"].eq(name)]
    if not frame.empty:  # the leaderboard's own table (same order, cells and bold ties), drawn with rich
        accuracy = accuracy_table(summarise(frame))
        table = Table(title=f"{escape(name)}: accuracy ± 95% CI over {episodes} test episodes ({settings.queries} queries/class)")
        table.add_column("method")
        for column in accuracy.columns:
            table.add_column(column, justify="right")
        for label, row in accuracy.iterrows():
            table.add_row(escape(label), *(re.sub(r"\*\*(.+)\*\*", r"[bold]\1[/]", cell) for cell in row))
        out.print(table)
    say(f"results in {store}; render leaderboards with: fsc leaderboard --store {store}", out)
    results.close()
    if runner.failures:
        raise FscError(f"{len(runner.failures)} method run(s) failed, the rest completed: " + "; ".join(runner.failures))


@main.command("methods")
def list_methods() -> None:
    """List every registered method (built-in and plugins) with its variants and origin."""
    from fewshot_cryoet.plugins import get_plugins

    plugins = get_plugins()
    table = Table(title="few-shot methods")
    for column in ("method", "variants", "origin", "segments", "trains", "description"):
        table.add_column(column)
    for name in plugins.methods.names():
        cls = plugins.methods.get(name)
        table.add_row(escape(name), escape(", ".join(cls.variants)), escape(str(plugins.methods.origin(name))),
                      "yes" if cls.segments else "no", "yes" if cls.trainable else "no", escape(cls.description))
    Console().print(table)


@main.command()
@click.option("--store", type=click.Path(path_type=Path), default=Path("fsc-results.sqlite"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("leaderboards"), show_default=True)
def leaderboard(store, out) -> None:
    """Render Markdown, CSV and PNG leaderboards from a results store."""
    from fewshot_cryoet.leaderboard import render
    from fewshot_cryoet.store import ResultsStore

    if not store.exists():
        raise FscError(f"{store}: no such results store; run fsc bench first or pass --store")
    results = ResultsStore(store)
    frame = results.frame()
    if frame.empty:
        raise FscError(f"{store}: holds no results yet; run fsc bench first")
    written = render(frame, results.query_dice_frame(), out, store.name)
    results.close()
    for path in written:
        say(f"wrote {path}")


def _add_plugin_commands() -> None:
    """Report plugins that failed to load (once), then let plugins add commands
    (``fsc_add_cli_commands``); a failing plugin is reported, not fatal."""
    from fewshot_cryoet.plugins import get_plugins

    plugins = get_plugins()
    for failure in plugins.failures:
        print_warning(failure)
    for impl in plugins.manager.hook.fsc_add_cli_commands.get_hookimpls():
        try:
            impl.function(cli=main)
        except (Exception, SystemExit) as exc:
            print_warning(f"plugin {impl.plugin_name} could not add commands: {exc}")


def _add_builtin_commands() -> None:
    from fewshot_cryoet.cli_models import predict, train
    from fewshot_cryoet.cli_tune import tune

    for command in (tune, train, predict):
        main.add_command(command)


_add_builtin_commands()
_add_plugin_commands()


if __name__ == "__main__":
    main()
