"""``fsc train`` (meta-train a method into a model folder) and ``fsc predict`` (classify and
segment your own subtomograms against a few picked examples)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from fewshot_cryoet.errors import FscError
from fewshot_cryoet.outputs import check_output_folder


@click.command()
@click.option("--method", "method_text", required=True, help="Method, optionally METHOD/VARIANT.")
@click.option("--variant", default=None)
@click.option("--param", "param_texts", multiple=True, metavar="METHOD.KEY=VALUE", help="Hyper-parameter; repeatable.")
@click.option("--params", "params_source", default=None, metavar="best:STUDY|FILE", help="Tuned hyper-parameters.")
@click.option("--tune-storage", default="sqlite:///fsc-tune.sqlite", show_default=True)
@click.option("--dataset", default=None, help="Registered data set name or a data set folder [synthetic].")
@click.option("--templates", "template_paths", multiple=True, metavar="DIR|FILE", help="Simulate from these templates.")
@click.option("--test-classes", default=None, help="With --templates: classes held out of training.")
@click.option("--per-class", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--snr", "snr_text", default="1000", show_default=True, help="SNR level to train at.")
@click.option("--budget", "budget_text", default="30m", show_default=True, help="Training budget: 30m, 2000ep, ...")
@click.option("--queries", type=click.IntRange(min=1), default=5, show_default=True, help="Queries per class of validation episodes.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model folder.")
def train(method_text, variant, param_texts, params_source, tune_storage, dataset, template_paths, test_classes,
          per_class, snr_text, budget_text, queries, seed, device, out, overwrite) -> None:
    """Meta-train a method on a data set's training classes into a self-describing model folder."""
    from dataclasses import asdict

    import fewshot_cryoet
    from fewshot_cryoet.cli import _apply_tuned, _dataset_at, _method_spec, _resolve_dataset, make_progress, say
    from fewshot_cryoet.datasets.dataset import parse_snr, snr_label
    from fewshot_cryoet.methods.base import Budget, FitContext
    from fewshot_cryoet.model_dir import NORMALISATION, ModelCard, save_model
    from fewshot_cryoet.runner import BenchSettings, fit_data, resolve_device

    spec = _method_spec(method_text, variant, param_texts)
    if params_source:
        from fewshot_cryoet.tuning import resolve_params

        spec = _apply_tuned([spec], resolve_params(params_source, tune_storage))[0]
    if not spec.cls.trainable:
        raise FscError(f"{spec.cls.name} needs no training; use it directly: fsc predict --method {spec.cls.name}")
    check_output_folder(out, overwrite, "model")  # before hours of training, not after
    budget = Budget.parse(budget_text)
    snr = parse_snr(snr_text)
    torch_device = resolve_device(device)
    name, provider, fixed = _resolve_dataset(dataset, template_paths, per_class, test_classes)
    console = Console()
    with make_progress() as progress:
        data = _dataset_at(provider, fixed, snr, progress)
        method = spec.cls(spec.params, spec.variant, torch_device)
        settings = BenchSettings(ways=[5], shots=[1], queries=queries, seed=seed)
        train_source, validation = fit_data(data, settings, snr, method.segments)
        task = progress.add_task(f"train {method.label}", total=1.0)
        context = FitContext(train_source, validation, budget, torch_device, seed,
                             lambda fraction, message: progress.update(task, completed=fraction))
        report = method.fit(context)
        progress.update(task, completed=1.0)
    card = ModelCard(
        method=method.name, variant=method.variant, params=method.params, box=data.box,
        voxel_size=data.voxel_size, normalisation=NORMALISATION, dataset=name, dataset_hash=data.content_hash,
        snr=snr_label(snr), budget=str(budget), package_version=fewshot_cryoet.__version__,
        train_classes=list(train_source.classes),
        fit={**asdict(report), "label": spec.label or method.label},
    )
    save_model(method, card, out, overwrite)
    say(f"{method.label}: {report.describe()}; model in {out}", console)


@click.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="Model folder from fsc train.")
@click.option("--method", "method_text", default=None, help="A training-free method instead of --model (e.g. xcorr).")
@click.option("--param", "param_texts", multiple=True, metavar="METHOD.KEY=VALUE", help="With --method; repeatable.")
@click.option("--support", type=click.Path(path_type=Path), required=True,
              help="Folder with one sub-folder per class of MRC files, or CSV/STAR with path and class columns.")
@click.option("--queries", "query_sources", type=click.Path(path_type=Path), multiple=True, required=True,
              help="MRC files, folders of them, or a CSV/STAR table (rlnImageName); repeatable.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Results folder to create.")
@click.option("--voxel-size", type=float, default=None, help="Voxel size (Å) for files whose header says 0.")
@click.option("--invert", is_flag=True, help="Invert contrast (for data with dark particles on a bright background).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Queries per batch (bounds memory).")
@click.option("--save-probabilities", is_flag=True, help="Also write the raw probability map of each query.")
@click.option("--no-crf", is_flag=True, help="Save raw (probability > 0.5) masks instead of CRF-refined ones.")
@click.option("--device", default="auto", show_default=True)
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="A query that cannot be read or scored: skip it (listed in skipped.csv with the reason) or stop.")
@click.option("--overwrite", is_flag=True, help="Replace a predictions folder written earlier by fsc predict.")
def predict(model_dir, method_text, param_texts, support, query_sources, out, voxel_size, invert, batch_size,
            save_probabilities, no_crf, device, on_error, overwrite) -> None:
    """Classify (and segment) subtomograms against 1 to K picked examples per class."""
    from fewshot_cryoet.cli import _method_spec, make_progress, print_warning, say
    from fewshot_cryoet.datasets.mrc_io import read_volume
    from fewshot_cryoet.model_dir import load_model
    from fewshot_cryoet.predict import (
        VOXEL_SIZE_OPTION, Preparer, PredictOptions, check_files_exist, duplicate_queries, predict_folder,
        read_queries, read_support,
    )
    from fewshot_cryoet.runner import resolve_device

    if (model_dir is None) == (method_text is None):
        raise FscError("give either --model FOLDER (from fsc train) or --method NAME (a training-free method)")
    if batch_size < 1:
        raise FscError("--batch-size must be ≥ 1")
    check_output_folder(out, overwrite, "predictions")
    support_set = read_support(support)
    query_table, query_paths = read_queries(list(query_sources))
    check_files_exist(support_set.paths + query_paths)  # every missing file, before any work
    repeated = duplicate_queries(query_paths)
    if repeated:
        print_warning(f"{repeated} query entr{'y repeats' if repeated == 1 else 'ies repeat'} an earlier one; "
                      "each is predicted again")
    torch_device = resolve_device(device)
    console = Console(stderr=True)
    if model_dir is not None:
        method, card = load_model(model_dir, torch_device)
        box, model_voxel = card.box, card.voxel_size
    else:
        spec = _method_spec(method_text, None, param_texts)
        if spec.cls.trainable:
            raise FscError(f"{spec.cls.name} must be trained first: fsc train --method {spec.cls.name} --out MODEL, "
                           "then fsc predict --model MODEL")
        method = spec.cls(spec.params, spec.variant, torch_device)
        first, model_voxel = read_volume(support_set.paths[0], voxel_size, VOXEL_SIZE_OPTION)
        box = first.shape[0]
    prepare = Preparer(box, model_voxel, voxel_size, invert, warn=print_warning)
    options = PredictOptions(batch_size, save_probabilities, crf=not no_crf, on_error=on_error)
    with make_progress() as progress:
        summary = predict_folder(method, support_set, query_table, query_paths, prepare, out, options, progress,
                                 log=lambda m: say(m, progress.console), overwrite=overwrite)
    say(f"predicted {summary.predicted} subtomograms against {len(support_set.class_names)} classes "
        f"({len(support_set.paths)} support examples); results in {out}")
    if summary.skipped:
        print_warning(f"{len(summary.skipped)} quer{'y' if len(summary.skipped) == 1 else 'ies'} skipped (reasons in "
                      f"{out / 'skipped.csv'}); the first: {summary.skipped[0][2]}")
