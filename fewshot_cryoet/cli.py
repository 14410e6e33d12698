"""The ``fsc`` command line.

Every command turns :class:`FscError` into one line on stderr and exit status 2, and Ctrl-C into
exit status 130; output folders are written atomically, so neither leaves half-written data that
looks complete.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

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


class FscGroup(click.Group):
    """Click group that reports FscError as one line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FscError as exc:
            console.print(f"[bold red]fsc: error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[bold red]fsc: interrupted[/]; partial output was removed")
            sys.exit(130)


@click.group(cls=FscGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(fewshot_cryoet.__version__, prog_name="fsc")
def main() -> None:
    """fewshot-cryoet: few-shot classification and segmentation benchmarks for cryo-ET."""


@main.command()
@click.option("--templates", "template_paths", multiple=True, metavar="DIR|FILE",
              help="Density maps (MRC) or atomic models (PDB/mmCIF), or folders of them; repeatable. "
                   "Default: built-in synthetic macromolecules.")
@click.option("--classes", type=int, default=22, show_default=True, help="Number of synthetic classes (without --templates).")
@click.option("--synthetic-seed", type=int, default=0, show_default=True, help="Seed of the first synthetic class.")
@click.option("--template-voxel-size", type=float, default=None, help="Override the voxel size (Å) in map headers.")
@click.option("--resolution", type=float, default=None, help="Resolution (Å) for atomic models and synthetic classes [2 × voxel size].")
@click.option("--snr", "snr_texts", multiple=True, default=("1000",), show_default=True,
              help="SNR level (var signal / var noise; 'inf' for noise-free); repeatable, levels share the same particles.")
@click.option("--per-class", type=int, default=200, show_default=True, help="Subtomograms per class.")
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
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of everything random.")
@click.option("--workers", type=int, default=1, show_default=True, help="Simulation processes (1 = this process, all cores).")
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
        explicit["val"] = [c.strip() for c in val_classes.split(",") if c.strip()]
    if test_classes:
        explicit["test"] = [c.strip() for c in test_classes.split(",") if c.strip()]
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
    table = Table(title=f"{dataset.path}  ({len(dataset)} subtomograms, {dataset.box}³ at {dataset.voxel_size:g} Å)")
    table.add_column("class")
    table.add_column("split")
    table.add_column("extent (Å)", justify="right")
    table.add_column("particles", justify="right")
    counts = dataset.particles["class"].value_counts()
    for c in dataset.manifest["classes"]:
        table.add_row(c["name"], c["split"], f"{c['extent_angstrom']:.0f}", str(counts.get(c["name"], 0)))
    out.print(table)
    labels = dataset.labels
    for label in dataset.snr_labels:
        rows = labels[labels["volume_file"] == f"volumes/snr_{label}.npy"]
        measured = rows["snr_measured"].astype(float)
        masked = rows["snr_measured_mask"].astype(float)
        text = "noise-free" if math.isinf(measured.iloc[0]) else (
            f"measured {measured.mean():.4g} (box), {masked.median():.4g} median inside masks"
        )
        out.print(f"SNR {label}: {text}")
    out.print(f"content hash {dataset.content_hash}")


@main.command()
@click.argument("dataset_path", metavar="DATASET", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("montage.png"), show_default=True)
@click.option("--snr", default=None, help="SNR level to show [the noisiest].")
@click.option("--per-class", type=int, default=3, show_default=True)
@click.option("--axis", type=click.Choice(["z", "y", "x"]), default="z", show_default=True,
              help="Slice normal: z (XY slice) or y (XZ slice, shows the missing wedge).")
def show(dataset_path, out, snr, per_class, axis) -> None:
    """Draw central slices of subtomograms and masks per class into a PNG."""
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.datasets.montage import draw_montage

    path = draw_montage(SubtomogramDataset(dataset_path), out, snr, per_class, axis)
    Console().print(f"wrote {path}")


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
    Console().print(f"wrote {star}")


@main.command()
@click.argument("dataset_path", metavar="DATASET", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Recompute the content hash.")
def info(dataset_path, verify) -> None:
    """Summarise a data set (classes, splits, SNR levels) and optionally verify its files."""
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset

    dataset = SubtomogramDataset(dataset_path)
    if verify:
        dataset.verify()
    _print_summary(dataset)
    if verify:
        Console().print("[green]verified[/]: files match the manifest's content hash")


if __name__ == "__main__":
    main()
