"""``fsc simulate``, ``fsc import``, ``fsc show``, ``fsc export`` and ``fsc info``: the data
commands, as option declarations and printing over :mod:`fewshot_cryoet.api.data`."""

from __future__ import annotations

from pathlib import Path

import click

from fewshot_cryoet import api
from fewshot_cryoet.cli.options import out_options, parse_list, parse_range, parse_value_or_range, snrs
from fewshot_cryoet.cli.terminal import RichReporter, print_table, progress_bars, say
from fewshot_cryoet.core.errors import SettingError


@click.command()
@click.option("--templates", multiple=True, metavar="DIR|FILE|synthetic:N",
              help="Density maps (MRC) or atomic models (PDB/mmCIF), folders of them, or synthetic:N (N built-in "
                   "synthetic classes mixed in); repeatable. Default: --classes synthetic classes.")
@click.option("--classes", type=click.IntRange(min=1), default=22, show_default=True,
              help="Synthetic classes (without --templates; with them, list synthetic:N).")
@click.option("--synthetic-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the first synthetic class.")
@click.option("--template-voxel-size", type=float, default=None, help="Override the voxel size (Å) in map headers.")
@click.option("--resolution", type=float, default=None, help="Resolution (Å) of atomic models and synthetic classes [default: 2 × voxel size].")
@click.option("--snr", "snr_texts", multiple=True, default=("1000",), show_default=True,
              help="SNR (var signal / var noise; inf = noise-free); repeatable, levels share the particles.")
@click.option("--per-class", type=click.IntRange(min=1), default=200, show_default=True, help="Subtomograms per class.")
@out_options("Data set folder")
@click.option("--route", type=click.Choice(["tilt-series", "fourier", "direct-fourier"]), default="tilt-series",
              show_default=True, help="Imaging: tilt series + weighted back-projection, the fast Fourier-space model, "
                                      "or an independent third model (central slices, dose damage, phase flipping, "
                                      "direct Fourier inversion) for cross-simulator tests.")
@click.option("--box", type=int, default=32, show_default=True, help="Subtomogram edge (voxels).")
@click.option("--voxel-size", type=float, default=10.0, show_default=True, help="Voxel size (Å).")
@click.option("--tilt-range", default="-60,60", show_default=True,
              help="Tilt range in degrees, MIN,MAX; each end may be a range drawn per particle, e.g. -70..-50,50..70.")
@click.option("--tilt-step", default="2", show_default=True, help="Tilt increment (degrees): a value or MIN..MAX per particle.")
@click.option("--alignment-jitter", default="0", show_default=True,
              help="Residual tilt-series misalignment: random shift per projection (voxels, SD), a value or MIN..MAX.")
@click.option("--acquisition-voxel-size", default=None,
              help="Image each particle at this pixel size (Å), a value or MIN..MAX, then resample to --voxel-size [default: same].")
@click.option("--defocus", default="2..6", show_default=True, help="Underfocus range (µm), MIN..MAX, uniform per particle.")
@click.option("--no-ctf", is_flag=True, help="Image without CTF (pure projection and missing wedge).")
@click.option("--crowding", default="0", show_default=True, help="Neighbour particles per subtomogram: N or MIN..MAX in 0..4.")
@click.option("--max-shift", type=float, default=1.0, show_default=True, help="Random shift per axis (voxels).")
@click.option("--contour", type=float, default=0.1, show_default=True, help="Mask contour, fraction of the template maximum.")
@click.option("--amplitude-contrast", default="0.07", show_default=True, help="Amplitude contrast: a value or MIN..MAX per particle.")
@click.option("--envelope", default="0.4", show_default=True,
              help="CTF envelope σ, fraction of Nyquist (smaller = stronger B-factor): a value or MIN..MAX per particle.")
@click.option("--lowpass", default=None, help="Extra Gaussian low-pass: resolution (Å) where the amplitude halves, "
              "a value or MIN..MAX per particle [default: none].")
@click.option("--background", type=float, default=0.0, show_default=True,
              help="Share of the noise variance from a structured 1/f background, in [0, 1).")
@click.option("--contrast", type=click.Choice(["positive", "negative"]), default="positive", show_default=True,
              help="negative: dark particles on a bright background, as in raw tomograms.")
@click.option("--preset", type=click.Choice(list(api.PRESETS)), default=None,
              help="Named shifted imaging (docs/tutorials/simulate.md lists them); options given here override it.")
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
    config = api.simulation_config(preset, **given)
    with progress_bars() as progress:
        dataset = api.simulate(
            out, templates=templates, classes=classes, synthetic_seed=synthetic_seed,
            template_voxel_size=template_voxel_size, resolution=resolution, snrs=snrs(snr_texts), per_class=per_class,
            config=config, split=parse_list(split_text, "--split", float), val_classes=parse_list(val_classes, "--val-classes"),
            test_classes=parse_list(test_classes, "--test-classes"), seed=seed, workers=workers, overwrite=overwrite,
            reporter=RichReporter(progress))
    _print_summary(dataset)


@click.command(name="import")
@click.argument("source", type=click.Path(path_type=Path))
@out_options("Data set folder")
@click.option("--format", "format_", default=None,
              help="Kind of source (folder, table, tomograms, copick, or a plugin's) [default: recognised from SOURCE].")
@click.option("--box", type=click.IntRange(min=4), default=None, help="Subtomogram edge (voxels) [default: the source's; 32 "
              "for tomograms].")
@click.option("--voxel-size", type=float, default=None, help="Voxel size (Å) to resample to [default: the source's].")
@click.option("--tomograms", type=click.Path(path_type=Path), default=None,
              help="Coordinates' tomograms: one MRC file, or a folder of <name>.mrc.")
@click.option("--masks", type=click.Path(path_type=Path), default=None,
              help="Masks: a folder mirroring the class folders, or label volumes named like the tomograms.")
@click.option("--class-column", default=None, help="Table column holding the class [default: class, rlnClassNumber, ...].")
@click.option("--class-map", type=click.Path(path_type=Path), default=None,
              help="CSV with columns value,name mapping class values (e.g. RELION class numbers) to names.")
@click.option("--invert", is_flag=True, help="Invert contrast (dark particles, as in raw tomograms); recorded.")
@click.option("--voxel-spacing", type=float, default=None, help="copick: voxel spacing (Å) of the tomograms to read.")
@click.option("--tomo-type", default=None, help="copick: reconstruction to read [default: the first].")
@click.option("--objects", default=None, help="copick: comma-separated objects that become classes [default: all picked].")
@click.option("--user-id", default=None, help="copick: only this user's picks.")
@click.option("--segmentation", default=None, help="copick: multilabel segmentation whose labels become masks.")
@click.option("--val-classes", default=None, help="Comma-separated validation classes [default: drawn from --seed].")
@click.option("--test-classes", default=None, help="Comma-separated test classes [default: drawn from --seed].")
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


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@out_options("Data set folder")
@click.option("--levels", default=None, metavar="L1,L2,...",
              help="One SNR level per folder, in order, combined into one level (named recorded unless all are "
                   "the same), e.g. recorded,0.5 for imported particles beside simulated ones [default: the levels "
                   "every folder has].")
def combine(folders, out, overwrite, levels) -> None:
    """Combine data set folders (simulated, imported or combined) into one, e.g. your particles
    beside many synthetic classes to train on: one box and voxel size, the SNR levels all have,
    each class in its folder's split; a class name in two folders must be the same map."""
    with progress_bars() as progress:
        dataset = api.combine(folders, out, levels=parse_list(levels, "--levels"), overwrite=overwrite,
                              reporter=RichReporter(progress))
    _print_summary(dataset)


def _simulate_scene(templates, classes, synthetic_seed, template_voxel_size, resolution, snr_texts, out, voxel_size,
                    tilt_range, tilt_step, defocus, contour, seed, scene_size, scene_particles) -> None:
    levels = snrs(snr_texts)
    if len(levels) != 1:
        raise SettingError("snr", "snr: a scene is imaged at one SNR level; give --snr once")
    size = parse_list(scene_size, "--scene-size", int)
    if len(size) != 3 or min(size) < 16:
        raise SettingError("scene_size", f"scene_size {scene_size!r}: give x,y,z, each at least 16 voxels")
    low, high = _tilt_range(tilt_range)
    defocus_range = parse_range(defocus, "--defocus")
    config = api.scene_config(shape_xyz=tuple(size), voxel_size=voxel_size, particles=scene_particles, snr=levels[0],
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


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("montage.png"), show_default=True, help="PNG to write.")
@click.option("--snr", default=None, help="SNR level to show [default: the noisiest].")
@click.option("--per-class", type=click.IntRange(min=1), default=3, show_default=True, help="Subtomograms shown per class.")
@click.option("--axis", type=click.Choice(["z", "y", "x"]), default="z", show_default=True,
              help="Slice normal: z (XY slice) or y (XZ slice, shows the missing wedge).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="A segmenting method's model folder or "
              "checkpoint (e.g. from <store>.models/): draw its raw and CRF-refined masks per test class instead.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def show(dataset, out, snr, per_class, axis, model, device, overwrite) -> None:
    """Draw central slices of subtomograms and masks per class (or a model's segmentations) into a PNG."""
    say(f"wrote {api.show(dataset, out, snr, per_class, axis, model, device, overwrite)}")


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@out_options("Export folder")
@click.option("--snr", default=None, help="SNR level to export [default: the noisiest].")
def export(dataset, out, overwrite, snr) -> None:
    """Export a data set to MRC files and a RELION-style particles.star."""
    with progress_bars() as progress:
        star = api.export(dataset, out, snr, overwrite, RichReporter(progress))
    say(f"wrote {star}")


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Also rehash every file (slow on large data sets).")
def info(dataset, verify) -> None:
    """Summarise a data set (classes, splits, SNR levels) after checking it."""
    _print_summary(api.open_dataset(dataset, verify))
    if verify:
        say("verified: files match the manifest's hashes")
