"""``train``: meta-train one method into a self-describing model folder, resumable."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.tuning.storage import DEFAULT_STORAGE

if TYPE_CHECKING:

    from fewshot_cryoet.evaluation.grid import MethodSpec
    from fewshot_cryoet.models.model_dir import ModelCard
from fewshot_cryoet.api.data import data_source, with_imaging_preset
from fewshot_cryoet.api.specs import method_specs


#: What :func:`train` trains on when given neither ``dataset`` nor ``templates``: many classes
#: (``datasets.providers.many_classes_provider``), since classes, not particles, were what models
#: trained on few classes lacked on complexes they never saw.
DEFAULT_TRAINING_DATASET = "synthetic-512"


def train(method: str | MethodSpec, out: str | Path, *, dataset=None, templates: Sequence[str | Path] = (),
          test_classes: Sequence[str] | None = None, per_class: int | None = None,
          snr: float | Sequence[float] | None = None, budget: str = "2000ep", queries_per_class: int = 5, seed: int = 0,
          device: str = "auto", overwrite: bool = False, params: dict[str, Any] | None = None, tuned: str | None = None,
          storage: str = DEFAULT_STORAGE, inputs: str = "plain", imaging: str | None = None,
          reporter: Reporter | None = None) -> ModelCard:
    """Meta-train a method on a data set's training classes (model selection on its validation
    classes) into a self-describing model folder ``out``; returns the folder's card. ``snr`` may
    list several levels of one data set: each training episode then draws its level, for a model
    meant for data whose noise is not known. ``inputs="robust"`` starts from the input normalisation
    that helped models trained on the default imaging (``methods.inputs.ROBUST_INPUTS``); ``"plain"``
    (the default) from the method's own defaults, which did better together with domain-randomised
    data (leaderboards/robustness). ``params`` win over both. ``snr`` None: every level of a
    ``dataset`` folder (an imported one has one, ``recorded``), else 1000.
    Data simulated on demand (no ``dataset`` folder) are imaged with the ``imaging`` preset, by
    default ``randomised`` (``datasets.presets.TRAINING_IMAGING``: domain-randomised training);
    ``imaging="default"`` simulates the default microscope instead. Without ``dataset`` and
    ``templates`` the data are :data:`DEFAULT_TRAINING_DATASET`: 512 synthetic classes, 20
    subtomograms each."""
    from fewshot_cryoet.core.devices import resolve_device
    from fewshot_cryoet.core.outputs import check_output_folder
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.core.version import __version__
    from fewshot_cryoet.datasets.dataset import snr_label
    from fewshot_cryoet.evaluation.fitting import fit_context, training_task
    from fewshot_cryoet.methods.inputs import ROBUST_INPUTS
    from fewshot_cryoet.models.model_dir import ModelCard, save_model
    from fewshot_cryoet.models.training_state import TrainingStateFile

    if inputs not in ("robust", "plain"):
        raise SettingError("inputs", f"inputs {inputs!r}: use robust or plain")
    if isinstance(method, str):
        start = dict(ROBUST_INPUTS) if inputs == "robust" else {}
        merged = {**start, **(params or {})}
        spec = method_specs([method], {method.split("/")[0]: merged} if merged else None, [tuned] if tuned else [],
                            storage)[0]
    else:
        spec = method
    if not spec.cls.trainable:
        raise SettingError("method", f"method {spec.cls.name} needs no training; use it directly "
                                     f"(fsc predict --method {spec.cls.name})")
    check_output_folder(Path(out), overwrite, "model")  # before hours of training, not after
    state_path = Path(out).with_name(Path(out).name + ".training.pt")
    TrainingStateFile.refuse_foreign(state_path)  # before the data are simulated or read
    budget_ = Budget.parse(budget)
    torch_device = resolve_device(device)
    from fewshot_cryoet.datasets.presets import TRAINING_IMAGING

    if dataset is None and not templates:
        dataset = DEFAULT_TRAINING_DATASET
    source = data_source(dataset, templates, per_class, test_classes)
    source = with_imaging_preset(source, imaging if imaging is not None or source.fixed is not None else TRAINING_IMAGING)
    reporter = as_reporter(reporter)
    if snr is None:
        snr = source.fixed.snr_levels if source.fixed is not None else 1000.0
    levels = list(snr) if isinstance(snr, (list, tuple)) else [snr]
    if len(levels) > 1 and source.fixed is None:  # refused before anything is simulated
        raise SettingError("snr", f"snr {','.join(snr_label(s) for s in levels)}: training at several SNR levels "
                                  "needs one data set holding them all (fsc simulate --snr A --snr B, then dataset)")
    data = source.at(levels[0], reporter)
    for level in levels[1:]:
        source.at(level, reporter)  # each level must be in the data set
    instance = spec.cls(spec.params, spec.variant, torch_device)
    # Interrupted, the same command resumes from this file (fewshot_cryoet.models.training_state); it is
    # named after the model folder and removed once the folder is written.
    identity = (f"{instance.name}-{instance.variant}-{instance.params_hash()}-{budget_}-{data.content_hash}-"
                f"{','.join(snr_label(s) for s in levels)}-{seed}-{queries_per_class}q")
    resume = TrainingStateFile(state_path, identity, reporter.log)
    task, progress = training_task(reporter, f"train {instance.label}", budget_)
    context = fit_context(data, levels if len(levels) > 1 else snr, instance.segments, budget_, torch_device,
                          queries_per_class, seed, progress=progress, warn=reporter.log)
    report = instance.fit(replace(context, resume=resume))
    task.update(task.total)
    card = ModelCard(
        method=instance.name, variant=instance.variant, params=instance.params, box=data.box,
        voxel_size=data.voxel_size, normalisation=instance.inputs.describe(), dataset=source.name, dataset_hash=data.content_hash,
        snr=",".join(snr_label(s) for s in levels), budget=str(budget_), package_version=__version__,
        train_classes=list(context.train.classes), fit={**asdict(report), "label": spec.label or instance.label},
    )
    save_model(instance, card, Path(out), overwrite)
    resume.remove()
    return card
