"""``predict``: classify and segment users' subtomograms against 1 to K examples per class, with
a trained model folder or a training-free method."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter

if TYPE_CHECKING:

    pass
from fewshot_cryoet.api.specs import method_specs


# -- predict, leaderboard ----------------------------------------------------------------------------
def predict(support: str | Path, queries: str | Path | Sequence[str | Path], out: str | Path, *,
            model: str | Path | None = None, method: str | None = None, params: dict[str, Any] | None = None,
            voxel_size: float | None = None, invert: bool = False, batch_size: int = 32,
            save_probabilities: bool = False, crf: bool = True, on_error: str = "skip", device: str = "auto",
            overwrite: bool = False, reporter: Reporter | None = None) -> pd.DataFrame:
    """Classify (and segment) ``queries`` against 1 to K ``support`` examples per class with a
    trained ``model`` folder or a training-free ``method``; writes ``out`` and returns its
    predictions table (skipped queries in ``frame.attrs["skipped"]``)."""
    from fewshot_cryoet.core.devices import resolve_device
    from fewshot_cryoet.core.outputs import check_output_folder
    from fewshot_cryoet.datasets.mrc_io import read_volume
    from fewshot_cryoet.datasets.user_files import VOXEL_SIZE_SETTING, Preparer, read_support
    from fewshot_cryoet.inference.predict import (
        PredictOptions,
        check_files_exist,
        duplicate_queries,
        predict_folder,
        read_queries,
    )
    from fewshot_cryoet.models.model_dir import load_model

    if model is None and method is None:
        raise SettingError("model", "model: give a model folder (from fsc train), or a training-free method with "
                                    "method (e.g. xcorr)")
    if model is not None and method is not None:
        raise SettingError("model", "model and method are alternatives: give a model folder or a training-free "
                                    "method, not both")
    if batch_size < 1:
        raise SettingError("batch_size", f"batch_size must be ≥ 1, got {batch_size}")
    reporter = as_reporter(reporter)
    out = Path(out)
    check_output_folder(out, overwrite, "predictions")
    support_set = read_support(Path(support))
    sources = [queries] if isinstance(queries, (str, Path)) else list(queries)
    query_table, query_paths = read_queries([Path(q) for q in sources])
    check_files_exist(support_set.paths + query_paths)  # every unreadable file, before any work
    repeated = duplicate_queries(query_paths)
    if repeated:
        reporter.log(f"warning: {repeated} query entr{'y repeats' if repeated == 1 else 'ies repeat'} an earlier "
                     "one; each is predicted again")
    torch_device = resolve_device(device)
    if model is not None:
        instance, card = load_model(Path(model), torch_device)
        box, model_voxel = card.box, card.voxel_size
    else:
        spec = method_specs([method], {method.split("/")[0]: params} if params else None)[0]
        if spec.cls.trainable:
            raise SettingError("method", f"method {spec.cls.name} must be trained first (fsc train --method "
                                         f"{spec.cls.name}), then predicted with its model folder")
        instance = spec.cls(spec.params, spec.variant, torch_device)
        first, model_voxel = read_volume(support_set.paths[0], voxel_size, VOXEL_SIZE_SETTING)
        box = first.shape[0]
    prepare = Preparer(box, model_voxel, voxel_size, invert, warn=lambda m: reporter.log(f"warning: {m}"))
    options = PredictOptions(batch_size, save_probabilities, crf=crf, on_error=on_error)
    summary = predict_folder(instance, support_set, query_table, query_paths, prepare, out, options, reporter,
                             overwrite=overwrite)
    frame = pd.read_csv(out / "predictions.csv")
    frame.attrs["skipped"] = summary.skipped
    frame.attrs["classes"] = support_set.class_names
    frame.attrs["support_examples"] = len(support_set.paths)
    return frame
