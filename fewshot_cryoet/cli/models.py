"""``fsc train`` (meta-train a method into a model folder) and ``fsc predict`` (classify and
segment your own subtomograms against a few picked examples): option parsing over ``api``."""

from __future__ import annotations

from pathlib import Path

import click

from fewshot_cryoet import api
from fewshot_cryoet.cli.options import (
    data_options_for,
    method_options,
    method_params,
    out_options,
    parse_list,
    queries_per_class_option,
    run_options,
)
from fewshot_cryoet.cli.terminal import RichReporter, print_warning, progress_bars, say


@click.command()
@method_options(single=True)
@click.option("--variant", default=None, help="The method's variant (same as METHOD/VARIANT) [default: its first].")
@data_options_for(f"{api.DEFAULT_TRAINING_DATASET}, 512 synthetic classes to train on", "100; 20 for synthetic-512")
@click.option("--snr", "snr_texts", multiple=True,
              help="SNR level to train at; repeatable, as in fsc bench (several levels of one --dataset: each "
                   "episode draws one; 1000,0.5 is read too) [default: every level of a --dataset folder; 1000 when "
                   "simulated].")
@click.option("--budget", default="2000ep", show_default=True, help="Training budget: 2000ep (reproducible), 30m, or 2000ep,30m.")
@click.option("--inputs", type=click.Choice(["robust", "plain"]), default="plain", show_default=True,
              help="Input normalisation and test-time augmentation: the robust settings (docs/tutorials/robustness.md) "
                   "or the method's own defaults; --param wins over both.")
@click.option("--imaging", default=None, metavar="PRESET",
              help="Imaging of training data simulated on demand (without --dataset); the preset 'default' gives the "
                   "simulator's default microscope [default: randomised, domain-randomised (see docs/tutorials/robustness.md)].")
@queries_per_class_option
@run_options
@out_options("Model folder")
def train(methods, param_texts, tuned, storage, variant, dataset, templates, test_classes, per_class, snr_texts, budget,
          inputs, imaging, queries_per_class, seed, device, out, overwrite) -> None:
    """Meta-train a method on a data set's training classes into a self-describing model folder."""
    levels = [api.parse_snr(text) for given in snr_texts for text in parse_list(given, "--snr")] or [None]
    method = f"{methods.split('/', 1)[0]}/{variant}" if variant else methods
    with progress_bars() as progress:
        card = api.train(method, out, params=method_params(param_texts, method), tuned=tuned, storage=storage,
                         dataset=dataset, templates=templates, test_classes=parse_list(test_classes, "--test-classes"),
                         per_class=per_class, snr=levels if len(levels) > 1 else levels[0], budget=budget, queries_per_class=queries_per_class,
                         seed=seed, device=device, overwrite=overwrite, inputs=inputs, imaging=imaging,
                         reporter=RichReporter(progress))
    say(f"{card.fit['label']}: {api.FitReport.from_dict(card.fit).describe()}; model in {out}")


@click.command()
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Model folder from fsc train.")
@click.option("--method", default=None, help="A training-free method instead of --model (e.g. xcorr).")
@click.option("--param", "param_texts", multiple=True, metavar="METHOD.KEY=VALUE", help="With --method; repeatable.")
@click.option("--support", type=click.Path(path_type=Path), required=True,
              help="Folder with one sub-folder per class of MRC files, or CSV/STAR with path and class columns.")
@click.option("--queries", "queries", type=click.Path(path_type=Path), multiple=True, required=True,
              help="MRC files, folders of them, or a CSV/STAR table (rlnImageName); repeatable.")
@out_options("Predictions folder")
@click.option("--voxel-size", type=float, default=None, help="Voxel size (Å) for files whose header says 0.")
@click.option("--invert", is_flag=True, help="Invert contrast (for data with dark particles on a bright background).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Queries per batch (bounds memory).")
@click.option("--save-probabilities", is_flag=True, help="Also write the raw probability map of each query.")
@click.option("--no-crf", is_flag=True, help="Save raw (probability > 0.5) masks instead of CRF-refined ones.")
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="A query that cannot be read or scored: skip it (listed in skipped.csv with the reason) or stop.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def predict(model, method, param_texts, support, queries, out, overwrite, voxel_size, invert, batch_size,
            save_probabilities, no_crf, on_error, device) -> None:
    """Classify (and segment) subtomograms against 1 to K picked examples per class."""
    params = method_params(param_texts, method)
    with progress_bars() as progress:
        frame = api.predict(support, list(queries), out, model=model, method=method, params=params, voxel_size=voxel_size, invert=invert,
                            batch_size=batch_size, save_probabilities=save_probabilities, crf=not no_crf,
                            on_error=on_error, device=device, overwrite=overwrite, reporter=RichReporter(progress))
    say(f"predicted {len(frame)} subtomograms against {len(frame.attrs['classes'])} classes "
        f"({frame.attrs['support_examples']} support examples); results in {out}")
    skipped = frame.attrs["skipped"]
    if skipped:
        print_warning(f"{len(skipped)} quer{'y' if len(skipped) == 1 else 'ies'} skipped (reasons in "
                      f"{out / 'skipped.csv'}); the first: {skipped[0][2]}")
