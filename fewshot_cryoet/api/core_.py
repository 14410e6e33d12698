"""The Python API: every ``fsc`` command is one function here.

Functions take plain Python values (numbers, lists, paths, method names) or objects
(:class:`SubtomogramDataset`, :class:`MethodSpec`), return data (a pandas DataFrame, a
:class:`ModelCard`, an ``optuna.Study``), raise :class:`FscError` for bad input, and report progress
through an optional :class:`~fewshot_cryoet.core.reporting.Reporter` (silent by default; the command line
passes one that draws rich progress bars)::

    from fewshot_cryoet import api
    frame = api.bench(["protonet", "xcorr"], dataset="data/synthetic", snrs=[1000], ways=[2, 4],
                      episodes=100, budget="200ep", store="results.sqlite")
    print(frame.groupby(["label", "n_way"])["accuracy"].mean())

The command line (``cli*.py``) only parses options, calls one of these and prints what it returns.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter
from fewshot_cryoet.results.location import DEFAULT_STORE
from fewshot_cryoet.tuning.storage import DEFAULT_STORAGE

if TYPE_CHECKING:
    import optuna

    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.datasets.providers import DatasetProvider
    from fewshot_cryoet.datasets.simulate import SimulationConfig
    from fewshot_cryoet.datasets.templates import Template
    from fewshot_cryoet.models.model_dir import ModelCard
    from fewshot_cryoet.evaluation.runner import MethodSpec

#: Subtomograms per class when a data set is simulated on demand and none is asked for.
DEFAULT_PER_CLASS = 100


# -- methods ---------------------------------------------------------------------------------------
def method_specs(methods: str | Sequence[str], params: dict[str, dict[str, Any]] | None = None,
                 tuned: Sequence[str] = (), storage: str = DEFAULT_STORAGE) -> list[MethodSpec]:
    """Methods to run, validated without building anything: ``"protonet,siamese/variant"`` or a
    list of ``NAME[/VARIANT]``; ``params`` maps a method name to hyper-parameter overrides; each
    ``tuned`` source (``best:STUDY`` in ``storage``, or a file from ``fsc tune export``) gives its
    method/variant the tuned values (explicit ``params`` still win)."""
    from fewshot_cryoet.plugins import get_plugins, require_methods
    from fewshot_cryoet.evaluation.runner import MethodSpec

    entries = [e.strip() for e in (methods.split(",") if isinstance(methods, str) else methods) if e.strip()]
    if not entries:
        raise SettingError("methods", "methods is empty; name at least one (see fsc methods)")
    names = [e.split("/", 1)[0] for e in entries]
    classes = require_methods(names)
    params = dict(params or {})
    strays = sorted(set(params) - set(names))
    if strays:
        raise SettingError("param", f"param for {', '.join(strays)}, which is not among the methods "
                                    f"({', '.join(names)})")
    plugins = get_plugins()
    specs = []
    for entry, name, cls in zip(entries, names, classes):
        variant, resolved = cls.resolve(params.get(name), entry.split("/", 1)[1] if "/" in entry else None)
        specs.append(MethodSpec(cls, variant, dict(params.get(name, {})), str(plugins.methods.origin(name)),
                                cls.display_label(variant, resolved)))
    for source in tuned:
        from fewshot_cryoet.tuning import resolve_params

        specs = apply_tuned(specs, resolve_params(source, storage))
    return specs


def apply_tuned(specs: list[MethodSpec], tuned) -> list[MethodSpec]:
    """Give the spec(s) of the tuned method/variant the tuned hyper-parameters (explicit values
    still win) and a label that says they were tuned, and with how many trials."""
    hits = [i for i, s in enumerate(specs) if s.cls.name == tuned.method and s.variant == tuned.variant]
    if not hits:
        raise SettingError("methods", f"{tuned.source}: tunes {tuned.method}/{tuned.variant}, which is not run; "
                                      f"add it with methods {tuned.method}/{tuned.variant}")
    specs = list(specs)
    for i in hits:
        spec = specs[i]
        merged = {**tuned.params, **spec.params}
        try:
            variant, resolved = spec.cls.resolve(merged, tuned.variant)
        except FscError as exc:
            raise FscError(f"{tuned.source}: {exc}") from None
        explicit = spec.cls.display_label(variant, spec.cls.resolve(spec.params, variant)[1])
        specs[i] = replace(spec, variant=variant, params=merged, label=f"{explicit} · tuned ({tuned.trials} trials)")
    return specs


# -- data --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSource:
    """Where a run's data come from: a recipe simulated on demand into the cache (``provider``)
    or a data set folder (``fixed``); ``name`` is what results record."""

    name: str
    provider: DatasetProvider | None = None
    fixed: SubtomogramDataset | None = None

    def at(self, snr: float, reporter: Reporter | None = None) -> SubtomogramDataset:
        """The data set holding SNR ``snr``, checked (cheaply) before anyone trains on it."""
        from fewshot_cryoet.datasets.dataset import snr_label

        data = self.fixed if self.fixed is not None else self.provider.dataset(snr, reporter)
        data.check()
        if snr_label(snr) not in data.snr_labels:
            raise SettingError("snr", f"snr {snr_label(snr)}: {data.path} has no SNR {snr_label(snr)} "
                                      f"(it has {', '.join(data.snr_labels)})")
        return data


def data_source(dataset: str | Path | SubtomogramDataset | None = None, templates: Sequence[str | Path] = (),
                per_class: int | None = None, test_classes: Sequence[str] | None = None) -> DataSource:
    """A registered data set name (default ``synthetic``), a data set folder or object, or
    ``templates`` to simulate from. ``per_class`` applies to simulated data only, and
    ``test_classes`` to ``templates`` only; given where they do not apply they are refused, not
    ignored."""
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.datasets.providers import templates_provider
    from fewshot_cryoet.plugins import get_plugins

    if templates:
        if dataset is not None:
            raise SettingError("templates", "templates and dataset are alternatives; give one")
        explicit = {"test": list(test_classes)} if test_classes else None
        provider = templates_provider(list(templates), per_class or DEFAULT_PER_CLASS, explicit)
        return DataSource("templates:" + ",".join(Path(p).name for p in templates), provider)
    if test_classes:
        raise SettingError("test_classes", "test_classes applies only to templates (a data set's own "
                                           "splits are fixed when it is made: fsc simulate --test-classes)")
    if isinstance(dataset, SubtomogramDataset):
        fixed = dataset
    else:
        name = str(dataset or "synthetic")
        registry = get_plugins().datasets
        if name in registry:
            provider = registry.get(name)
            if per_class is not None and per_class != provider.per_class:
                provider = replace(provider, per_class=per_class)
            return DataSource(name, provider)
        if not Path(name).exists():
            raise SettingError("dataset", f"unknown data set {name!r}: not a folder or file and not one of: "
                                          f"{', '.join(registry.names())}")
        fixed = SubtomogramDataset(name) if (Path(name) / "manifest.json").exists() else imported(name)
    if per_class is not None:
        raise SettingError("per_class", f"per_class applies only to data simulated on demand, not to the data "
                                        f"set folder {fixed.path}")
    fixed.check()  # before anything is created or trained
    return DataSource(fixed.path.name, fixed=fixed)


def simulate_scene(out: str | Path, *, templates: Sequence[str | Path] = (), classes: int = 6,
                   synthetic_seed: int = 0, template_voxel_size: float | None = None, resolution: float | None = None,
                   config=None, reporter: Reporter | None = None) -> Path:
    """A crowded tomogram with known truth (``fsc simulate --scene``): the tomogram, its label
    map, RELION 4 and 5 particle STAR files and a copick project of it (``datasets.scene``)."""
    from fewshot_cryoet.datasets.scene import SceneConfig, simulate_scene as simulate_

    config = config or SceneConfig()
    loaded = load_templates(templates, classes, synthetic_seed, config.voxel_size, template_voxel_size, resolution,
                            reporter)
    return simulate_(loaded, out, config, reporter)


def import_data(source: str | Path, out: str | Path, *, format: str | None = None, box: int | None = None,
                voxel_size: float | None = None, tomograms: str | Path | None = None, masks: str | Path | None = None,
                class_column: str | None = None, class_map: str | Path | None = None, invert: bool = False,
                voxel_spacing: float | None = None, tomo_type: str | None = None, objects: Sequence[str] = (),
                user_id: str | None = None, segmentation: str | None = None,
                test_classes: Sequence[str] | None = None, val_classes: Sequence[str] | None = None, seed: int = 0,
                overwrite: bool = False, reporter: Reporter | None = None) -> SubtomogramDataset:
    """Turn users' particles into a data set at ``out`` (``fsc import``): class folders, RELION
    STAR or CSV tables, coordinates plus ``tomograms``, or a copick project (``format`` None:
    recognised from the path). Resumable; see ``datasets.importing``."""
    from fewshot_cryoet.datasets.importing import import_source
    from fewshot_cryoet.datasets.sources.base import SourceOptions, open_source

    options = SourceOptions(box=box, voxel_size=voxel_size, tomograms=Path(tomograms) if tomograms else None,
                            masks=Path(masks) if masks else None, class_column=class_column,
                            class_map=Path(class_map) if class_map else None, voxel_spacing=voxel_spacing,
                            tomo_type=tomo_type, objects=tuple(objects), user_id=user_id, segmentation=segmentation)
    return import_source(open_source(source, options, format), out, invert=invert, seed=seed,
                         test_classes=test_classes, val_classes=val_classes, overwrite=overwrite, reporter=reporter)


def imported(source: str | Path, reporter: Reporter | None = None) -> SubtomogramDataset:
    """A user source given where a data set is expected (``--dataset picks/``): imported once with
    the defaults into the cache, keyed by the source's path, sizes and modification times, and
    reused afterwards. Sources that need settings (tomograms) go through :func:`import_data`."""
    import hashlib

    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.datasets.importing import import_source
    from fewshot_cryoet.datasets.providers import cache_dir
    from fewshot_cryoet.datasets.sources.base import open_source

    source_ = open_source(source)
    stamp = hashlib.blake2b(digest_size=6)
    for path in sorted(map(Path, source_.input_files())):
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            info = member.stat()
            stamp.update(f"{member.resolve()}:{info.st_size}:{info.st_mtime_ns}".encode())
    folder = cache_dir() / "datasets" / f"import-{Path(source).name}-{stamp.hexdigest()}"
    if (folder / "manifest.json").exists():
        return SubtomogramDataset(folder)
    return import_source(source_, folder, reporter=reporter)


def _with_preset(source: DataSource, preset: str | None) -> DataSource:
    """The source simulated with a named imaging preset instead (cached apart: the cache key covers
    the settings), and named so (``synthetic@randomised``); a data set folder was imaged when it
    was made, so an explicit ``preset`` for one is refused."""
    from fewshot_cryoet.datasets.presets import PRESETS, apply_preset

    if source.fixed is not None and preset is not None:
        raise SettingError("imaging", f"imaging {preset!r} applies only to data simulated on demand; the data set "
                                      f"folder {source.fixed.path} was imaged when it was made")
    if preset is not None and preset not in PRESETS:
        raise SettingError("imaging", f"imaging {preset!r}: use one of {', '.join(PRESETS)}")
    if preset is None or preset == "default":
        return source

    config = apply_preset(source.provider.config, preset)
    provider = replace(source.provider, config=config, name=f"{source.provider.name}-{preset}")
    return DataSource(f"{source.name}@{preset}", provider)


def load_templates(paths: Sequence[str | Path] = (), classes: int = 22, synthetic_seed: int = 0,
                   voxel_size: float = 10.0, template_voxel_size: float | None = None,
                   resolution: float | None = None, reporter: Reporter | None = None) -> list[Template]:
    """Density maps / atomic models from ``paths``, or ``classes`` built-in synthetic classes."""
    from fewshot_cryoet.datasets.synthetic import synthetic_template
    from fewshot_cryoet.datasets.templates import find_template_files, load_template

    reporter = as_reporter(reporter)
    if paths:
        files = find_template_files(list(paths))
        task = reporter.task("loading templates", total=len(files))
        templates = []
        for f in files:
            templates.append(load_template(f, voxel_size, template_voxel_size, resolution))
            task.advance()
        return templates
    if classes < 1:
        raise SettingError("classes", f"classes must be ≥ 1, got {classes}")
    task = reporter.task("synthetic classes", total=classes)
    templates = []
    for i in range(classes):
        templates.append(synthetic_template(synthetic_seed + i, voxel_size, resolution))
        task.advance()
    return templates


def simulate(out: str | Path, *, templates: Sequence[str | Path] = (), classes: int = 22, synthetic_seed: int = 0,
             template_voxel_size: float | None = None, resolution: float | None = None,
             snrs: Sequence[float] = (1000.0,), per_class: int = 200, config: SimulationConfig | None = None,
             split: Sequence[float] = (0.4, 0.2, 0.4), val_classes: Sequence[str] | None = None,
             test_classes: Sequence[str] | None = None, seed: int = 0, workers: int = 1, overwrite: bool = False,
             preset: str | None = None, reporter: Reporter | None = None) -> SubtomogramDataset:
    """Simulate a data set of subtomograms with ground-truth masks into ``out``; a named imaging
    ``preset`` (``datasets.presets.PRESETS``) replaces the matching settings of ``config``."""
    from fewshot_cryoet.datasets.build import simulate_dataset
    from fewshot_cryoet.datasets.dataset import check_output_folder
    from fewshot_cryoet.datasets.presets import apply_preset
    from fewshot_cryoet.datasets.simulate import SimulationConfig

    config = apply_preset(config or SimulationConfig(), preset)
    explicit = {k: list(v) for k, v in (("val", val_classes), ("test", test_classes)) if v}
    check_output_folder(Path(out), overwrite)  # fail before the slow part
    loaded = load_templates(templates, classes, synthetic_seed, config.voxel_size, template_voxel_size, resolution,
                            reporter)
    return simulate_dataset(loaded, out, list(snrs), per_class, config, seed, workers, tuple(split),
                            explicit or None, overwrite, reporter)


def export(dataset: str | Path | SubtomogramDataset, out: str | Path, snr: float | str | None = None,
           overwrite: bool = False, reporter: Reporter | None = None) -> Path:
    """MRC files plus a RELION-style ``particles.star`` of one SNR level (default: the noisiest)."""
    from fewshot_cryoet.datasets.export import export_dataset

    data = open_dataset(dataset)
    return export_dataset(data, out, snr if snr is not None else data.snr_labels[-1], overwrite, reporter)


def open_dataset(dataset: str | Path | SubtomogramDataset, verify: bool = False) -> SubtomogramDataset:
    """A data set folder, checked cheaply (``verify`` also rehashes every file); a user source
    (class folders, a STAR table, a copick project) is imported first, as ``--dataset`` does."""
    from fewshot_cryoet.datasets.dataset import MANIFEST, SubtomogramDataset

    if isinstance(dataset, SubtomogramDataset):
        data = dataset
    elif Path(dataset).exists() and not (Path(dataset) / MANIFEST).exists():
        data = imported(dataset)
    else:
        data = SubtomogramDataset(dataset)
    data.verify() if verify else data.check()
    return data


def show(dataset: str | Path | SubtomogramDataset, out: str | Path = "montage.png", snr: float | str | None = None,
         per_class: int = 3, axis: str = "z", model: str | Path | None = None, device: str = "auto") -> Path:
    """A PNG of central slices and masks per class, or, with ``model`` (a checkpoint or model
    folder of a segmenting method), its raw and CRF-refined masks per test class."""
    from fewshot_cryoet.datasets.montage import draw_montage

    data = open_dataset(dataset)
    if model is None:
        return draw_montage(data, out, snr, per_class, axis)
    from fewshot_cryoet.reports.figures import draw_segmentations

    return draw_segmentations(data, load_method(model, device), out, snr)


def load_method(path: str | Path, device: str = "auto"):
    """A trained method from a model folder (``fsc train``) or a checkpoint file (``<store>.models``)."""
    from fewshot_cryoet.models.checkpoints import load_method as from_checkpoint
    from fewshot_cryoet.models.model_dir import load_model
    from fewshot_cryoet.evaluation.runner import resolve_device

    path = Path(path)
    if path.is_dir():
        return load_model(path, resolve_device(device))[0]
    return from_checkpoint(path, resolve_device(device))


# -- bench, train, tune ------------------------------------------------------------------------------
#: The default grid's SNR levels: the paper's 1000, and 0.02, where the best baseline on the shared
#: templates falls clearly below 0.9 at 8-way (template matching 0.83; in-mask SNR about 0.16).
DEFAULT_BENCH_SNRS: tuple[float, ...] = (1000.0, 0.02)


def bench(methods: str | Sequence[str] | Sequence[MethodSpec], *, dataset=None, templates: Sequence[str | Path] = (),
          test_classes: Sequence[str] | None = None, per_class: int | None = None,
          snrs: Sequence[float] | None = None, ways: Sequence[int] = (2, 4, 6, 8), shots: Sequence[int] = (1,), queries_per_class: int = 5,
          episodes: int = 600, budget: str | Sequence[str] = "300ep", seed: int = 0, device: str = "auto",
          store: str | Path = DEFAULT_STORE, resume: bool = False, params: dict[str, dict] | None = None,
          tuned: Sequence[str] = (), storage: str = DEFAULT_STORAGE, train_dataset=None,
          allow_class_overlap: bool = False, seeds: Sequence[int] | None = None,
          models: str | Path | None = None, lease_seconds: float | None = None, crf: bool = True,
          archive: str | Path | None = None, reporter: Reporter | None = None) -> pd.DataFrame:
    """Train and score methods on identical test episodes into a results store; returns this
    run's rows (one per episode). Methods that failed are listed in ``frame.attrs["failures"]``
    (the rest of the grid completes). ``seeds`` trains each trainable method once per training
    seed; every model is scored on the same test episodes (those of ``seed``), and the leaderboard
    cell becomes the mean over seeds with an interval that counts both sources of variance.
    ``budget`` may be a list of increasing budgets: each trainable method gets a model at each, for
    accuracy-versus-budget curves (the leaderboard draws them); with episode budgets one training
    to the largest gives them all (see :func:`curve_order`).

    Cross-domain: with ``train_dataset`` (a registered name, folder or data set), methods are
    trained and selected on it and tested on ``dataset``'s test classes; rows record both data
    sets. Classes shared between the two are refused unless ``allow_class_overlap``.

    ``snrs`` None: every level of a ``dataset`` folder, or :data:`DEFAULT_BENCH_SNRS` for data
    simulated on demand.

    ``store``: a SQLite file, or a ``postgresql://`` URL that workers on several machines share.
    Every process running the same call with ``resume=True`` splits its work (trainings and
    chunks of test episodes are claimed in the store; a claim lapses ``lease_seconds`` after its
    holder's last heartbeat). ``models``: the checkpoint folder (default beside a SQLite store),
    which those processes must share.

    ``crf`` False skips the dense CRF of segmenting methods: CRF Dice stays empty, accuracy and
    raw Dice are the same, and scoring takes a fraction of the time. A cell is scored with the
    CRF or without it throughout; resuming it the other way is refused.

    ``archive``: a folder (:mod:`~fewshot_cryoet.results.archive`) that receives each model's
    cells once all are scored, and whose cells are loaded into the store first, so that a run
    carried by machines that do not keep their disks continues from a committed folder."""
    from fewshot_cryoet.datasets.dataset import snr_label
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.results.archive import ResultsArchive
    from fewshot_cryoet.evaluation.runner import BenchSettings, Level, Runner
    from fewshot_cryoet.results.store import STALE_SECONDS, ResultsStore

    specs = _specs(methods, params, tuned, storage)
    if episodes < 1 or queries_per_class < 1:
        raise SettingError("episodes", "episodes and queries_per_class must be ≥ 1")
    budgets = Budget.parse_list([budget] if isinstance(budget, str) else list(budget))
    settings = BenchSettings(ways=list(ways), shots=list(shots), queries=queries_per_class, episodes=episodes,
                             budget=budgets[0], seed=seed, device=device,
                             train_seeds=list(seeds) if seeds is not None else None, crf=crf)
    settings.torch_device  # validate the device now
    source = data_source(dataset, templates, per_class, test_classes)
    if snrs is None:
        snrs = source.fixed.snr_levels if source.fixed is not None else DEFAULT_BENCH_SNRS
    if source.fixed is not None:
        missing = [snr_label(s) for s in snrs if snr_label(s) not in source.fixed.snr_labels]
        if missing:
            raise SettingError("snr", f"snr {', '.join(missing)}: {source.fixed.path} has no SNR {', '.join(missing)} "
                                      f"(it has {', '.join(source.fixed.snr_labels)})")
    train_source = data_source(train_dataset) if train_dataset is not None else None
    kept = ResultsArchive(archive) if archive is not None else None  # a foreign folder is refused first
    results = ResultsStore(store, lease_seconds=STALE_SECONDS if lease_seconds is None else lease_seconds)
    try:
        failures = []
        if kept is not None:
            loaded = kept.load_into(results)
            as_reporter(reporter).log(f"archive {kept.folder}: {len(loaded.added)} finished cells loaded into "
                                      f"{results.name}, {len(loaded.already)} already there")
        def level(snr: float) -> Level:  # the data of a level are loaded when a process gets there
            return snr, lambda: (source.at(snr, reporter),
                                 train_source.at(snr, reporter) if train_source is not None else None)

        for step, (each, smaller) in enumerate(curve_order(budgets)):  # training-free: scored once, first
            runner = Runner(results, replace(settings, budget=each, snapshot_budgets=smaller), reporter, resume,
                            models_dir=models, archive=kept)
            runner.run_levels(specs if step == 0 else [s for s in specs if s.cls.trainable],
                              [level(snr) for snr in snrs], source.name,
                              train_source.name if train_source is not None else "", allow_class_overlap)
            runner.archive_finished()  # models other processes finished last
            failures += runner.failures
        frame = results.frame(label=sorted({spec.label for spec in specs}), snr=[snr_label(s) for s in snrs],
                              seed=seed, dataset=source.name,
                              train_dataset=train_source.name if train_source is not None else "")
    finally:
        results.close()
    frame.attrs["failures"] = failures
    return frame


def curve_order(budgets: list) -> list[tuple]:
    """(budget, smaller budgets its training should also leave) in the order a budget curve is
    run. Episode budgets run largest first, and that training keeps the models of the smaller
    ones on its way (``FitContext.snapshots``: the same models a training of each would select),
    so the curve costs its largest budget instead of the sum; the smaller runs reuse them. Time
    budgets end at a moment, not a step, so each is trained on its own, smallest first."""
    if len(budgets) > 1 and all(b.minutes is None and b.episodes is not None for b in budgets):
        return [(budgets[-1], list(budgets[:-1]))] + [(b, []) for b in budgets[:-1]]
    return [(b, []) for b in budgets]


def _specs(methods, params, tuned, storage) -> list[MethodSpec]:
    from fewshot_cryoet.evaluation.runner import MethodSpec

    if not isinstance(methods, str) and methods and all(isinstance(m, MethodSpec) for m in methods):
        return list(methods)
    return method_specs(methods, params, tuned, storage)


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
    ``imaging="default"`` simulates the default microscope instead."""
    from fewshot_cryoet.core.version import __version__
    from fewshot_cryoet.datasets.dataset import snr_label
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.models.model_dir import ModelCard, save_model
    from fewshot_cryoet.core.outputs import check_output_folder
    from fewshot_cryoet.evaluation.runner import fit_context, resolve_device
    from fewshot_cryoet.models.training_state import TrainingStateFile

    from fewshot_cryoet.methods.inputs import ROBUST_INPUTS

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

    source = data_source(dataset, templates, per_class, test_classes)
    source = _with_preset(source, imaging if imaging is not None or source.fixed is not None else TRAINING_IMAGING)
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
    task = reporter.task(f"train {instance.label}", total=1.0)
    context = fit_context(data, levels if len(levels) > 1 else snr, instance.segments, budget_, torch_device,
                          queries_per_class, seed, progress=lambda fraction, _: task.update(fraction))
    report = instance.fit(replace(context, resume=resume))
    task.update(1.0)
    card = ModelCard(
        method=instance.name, variant=instance.variant, params=instance.params, box=data.box,
        voxel_size=data.voxel_size, normalisation=instance.inputs.describe(), dataset=source.name, dataset_hash=data.content_hash,
        snr=",".join(snr_label(s) for s in levels), budget=str(budget_), package_version=__version__,
        train_classes=list(context.train.classes), fit={**asdict(report), "label": spec.label or instance.label},
    )
    save_model(instance, card, Path(out), overwrite)
    resume.remove()
    return card


def tune(method: str, *, variant: str | None = None, params: dict[str, Any] | None = None, snr: float | None = None,
         ways: int = 4, shots: int = 1, queries_per_class: int = 5, val_episodes: int = 100, dataset=None,
         templates: Sequence[str | Path] = (), test_classes: Sequence[str] | None = None,
         per_class: int | None = None, budget: str = "300ep", trials: int = 20, timeout: str | None = None,
         storage: str = DEFAULT_STORAGE, study: str | None = None, sampler: str = "tpe", pruner: str = "median",
         objective: str = "accuracy", seed: int = 0, device: str = "auto", reporter: Reporter | None = None,
         on_trial: Callable[[Any], None] | None = None) -> optuna.Study:
    """Tune a method's hyper-parameters on validation classes (the test split is never read) in
    an Optuna study; running it again continues the study up to ``trials`` finished trials."""
    from fewshot_cryoet import tuning
    from fewshot_cryoet.datasets.dataset import snr_label
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.evaluation.runner import resolve_device

    entry = method if variant is None else f"{method.split('/', 1)[0]}/{variant}"
    spec = method_specs([entry], {entry.split("/")[0]: params} if params else None)[0]
    cls, variant = spec.cls, spec.variant
    if trials < 1 or val_episodes < 1:
        raise SettingError("trials", "trials and val_episodes must be ≥ 1")
    if objective not in tuning.OBJECTIVES:
        raise SettingError("objective", f"objective {objective!r}: use one of {', '.join(tuning.OBJECTIVES)}")
    budget_ = Budget.parse(budget)
    timeout_s = tuning.parse_timeout(timeout)
    torch_device = resolve_device(device)
    variant_params = cls.resolve(spec.params, variant)[1]
    distributions = tuning.probe_search_space(cls, variant_params)  # refuses an empty space early
    optuna_storage = tuning.open_storage(storage)  # refuses an unreachable server before simulating
    source = data_source(dataset, templates, per_class, test_classes)
    reporter = as_reporter(reporter)
    if snr is None:  # a data set folder's noisiest level (an imported one's only: recorded), else 1000
        snr = source.fixed.snr_levels[-1] if source.fixed is not None else 1000.0
    data = source.at(snr, reporter)
    settings = tuning.TuneSettings(
        method=cls.name, variant=variant, fixed_params=spec.params, dataset=source.name,
        dataset_hash=data.content_hash, snr=snr_label(snr), ways=ways, shots=shots, queries=queries_per_class,
        val_episodes=val_episodes, budget=str(budget_) if cls.trainable else "", objective=objective, seed=seed,
    )
    name = study or tuning.default_study_name(cls.name, variant, settings.snr, ways, shots, objective)
    the_study = tuning.open_study(optuna_storage, name, settings, sampler, pruner, distributions)
    if sampler != "grid" and tuning.enqueue_defaults(the_study, cls, variant_params, distributions):
        reporter.log("trial 0 runs the untuned defaults, for comparison")
    done = len(tuning.finished_trials(the_study))
    reporter.log(f"study {name} in {tuning.safe_url(storage)}: {done} finished trial(s), tuning "
                 f"{len(distributions)} hyper-parameter(s) of {cls.name}/{variant} up to {trials} trials; "
                 f"objective: {tuning.OBJECTIVES[objective]}")
    objective_fn = tuning.TuningObjective(cls, settings, data, budget_, torch_device, reporter)
    task = reporter.task(f"tune {cls.name}/{variant}", total=trials, completed=min(done, trials))

    def after_trial(trial) -> None:
        task.update(min(len(tuning.finished_trials(the_study)), trials))
        if on_trial is not None:
            on_trial(trial)

    tuning.run_study(the_study, objective_fn, trials, timeout_s, after_trial)
    return the_study


def confirm_tuning(study: str, *, seeds: Sequence[int] = (0, 1, 2), episodes: int = 200, dataset=None,
                   templates: Sequence[str | Path] = (), test_classes: Sequence[str] | None = None,
                   per_class: int | None = None, storage: str = DEFAULT_STORAGE, device: str = "auto",
                   reporter: Reporter | None = None):
    """Retrain a study's best trial and the untuned defaults once per seed, score both on fresh
    validation-class episodes, and test the difference (see ``tuning.confirm``); the result is
    stored with the study, shown by ``fsc tune show`` and written into exported params files.
    The data must be the study's own (checked by hash)."""
    from fewshot_cryoet import tuning
    from fewshot_cryoet.datasets.dataset import parse_snr
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.evaluation.runner import resolve_device
    from fewshot_cryoet.tuning.confirm import confirm

    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise SettingError("seeds", f"seeds {','.join(map(str, seeds))}: give distinct seeds, e.g. 0,1,2")
    if episodes < 1:
        raise SettingError("episodes", "episodes must be ≥ 1")
    torch_device = resolve_device(device)
    the_study = tuning.load_study(storage, study)
    settings = tuning.TuneSettings(**the_study.user_attrs["fsc"])
    best = tuning.best_trial(the_study)
    spec = method_specs([f"{settings.method}/{settings.variant}"])[0]
    source = data_source(dataset, templates, per_class, test_classes)
    data = source.at(parse_snr(settings.snr), reporter)
    if data.content_hash != settings.dataset_hash:
        raise SettingError("dataset", f"study {study!r} was tuned on {settings.dataset} (hash {settings.dataset_hash}), "
                                      f"not on {source.name} (hash {data.content_hash}); give the study's own "
                                      "--dataset or --templates")
    result = confirm(spec.cls, settings, data, best.user_attrs.get("params", best.params),
                     Budget.parse(settings.budget) if settings.budget else Budget(episodes=1), torch_device, seeds,
                     episodes, reporter)
    the_study.set_user_attr("confirmation", {**result.to_dict(), "trial": best.number})
    return result


def export_tuned(study: str, out: str | Path, storage: str = DEFAULT_STORAGE):
    """Write a study's best trial to a params file (for ``bench(tuned=[file])``); returns it."""
    from fewshot_cryoet import tuning
    from fewshot_cryoet.core.outputs import check_writable_parent, write_text

    out = Path(out)
    if out.is_dir():
        raise SettingError("export", f"export {out}: is a folder; give a file name such as best.json")
    check_writable_parent(out, "export")
    params = tuning.tuned_params(tuning.load_study(storage, study), f"{tuning.safe_url(storage)}#{study}")
    write_text(out, params.to_json() + "\n")
    return params


# -- predict, leaderboard ----------------------------------------------------------------------------
def predict(support: str | Path, queries: str | Path | Sequence[str | Path], out: str | Path, *,
            model: str | Path | None = None, method: str | None = None, params: dict[str, Any] | None = None,
            voxel_size: float | None = None, invert: bool = False, batch_size: int = 32,
            save_probabilities: bool = False, crf: bool = True, on_error: str = "skip", device: str = "auto",
            overwrite: bool = False, reporter: Reporter | None = None) -> pd.DataFrame:
    """Classify (and segment) ``queries`` against 1 to K ``support`` examples per class with a
    trained ``model`` folder or a training-free ``method``; writes ``out`` and returns its
    predictions table (skipped queries in ``frame.attrs["skipped"]``)."""
    from fewshot_cryoet.datasets.mrc_io import read_volume
    from fewshot_cryoet.models.model_dir import load_model
    from fewshot_cryoet.core.outputs import check_output_folder
    from fewshot_cryoet.datasets.user_files import VOXEL_SIZE_SETTING, Preparer, read_support
    from fewshot_cryoet.inference.predict import (
        PredictOptions, check_files_exist, duplicate_queries, predict_folder, read_queries,
    )
    from fewshot_cryoet.evaluation.runner import resolve_device

    if (model is None) == (method is None):
        raise SettingError("model", "model and method are alternatives: give a model folder (fsc train) or a "
                                    "training-free method")
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


def leaderboard(store: str | Path = DEFAULT_STORE, out: str | Path | None = None,
                reporter: Reporter | None = None) -> list[Path]:
    """Markdown, CSV and PNG leaderboards from a results store; returns the files written. By
    default they go to ``leaderboards/<data set name>/`` (the store's name when it holds several
    test data sets), so two stores never overwrite each other's tables. Rows an older version
    wrote without training seeds are read as trained with the episode seed, and that is said."""
    from fewshot_cryoet.reports.leaderboard import render

    with _existing_store(store) as results:
        frame = results.frame()
        if frame.empty:
            raise SettingError("store", f"store {results.name}: holds no results yet; run bench first")
        if out is None:
            names = frame["dataset"].unique()
            stem = results.location.stem
            name = str(names[0]) if len(names) == 1 else stem
            out = Path("leaderboards") / (re.sub(r"[^\w.-]+", "-", name).strip("-.") or stem)
        notes = []
        before = results.rows_before_training_seeds()
        if before and frame["train_seed"].notna().any() and (frame["id"] <= before).any():
            old = frame[frame["id"] <= before]
            notes.append(f"{len(old)} episode rows were written by a version that did not store training seeds; "
                         f"they are read as trained with their episode seed ({', '.join(map(str, sorted(old['seed'].unique())))})")
            as_reporter(reporter).log(f"note: {notes[-1]}")
        return render(frame, results.query_dice_frame(), Path(out), results.location.label,
                      results.query_predictions_frame(),
                      notes=notes)


def bench_status(store: str | Path = DEFAULT_STORE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(claims, cells) of a store that one or several workers fill: every training and every chunk
    of test episodes claimed, by whom, in which state and how long ago its holder's last heartbeat
    was; and per cell (row, data set, SNR, N-way, K-shot, training seed) the test episodes planned
    and stored, the chunks claimed now, and whether it is done, running or pending. Cells of runs
    from before the store recorded plans show their stored episodes only."""
    with _existing_store(store) as results:
        claims = results.claims_frame()
        progress = results.progress_frame()
        frame = results.frame()
    claims = pd.DataFrame({
        "work": ["test episodes" if i.startswith("eval-") else "training" for i in claims["identity"]],
        "state": claims["state"].replace({"training": "claimed"}), "worker": claims["owner"], "age": claims["age"],
    })
    summary = (claims.groupby(["work", "state", "worker"]).agg(claims=("age", "size"), newest=("age", "min"))
               .reset_index() if len(claims) else claims)
    if len(summary):
        summary["last heartbeat"] = [f"{a:.0f} s ago" for a in summary.pop("newest")]
    unplanned = frame[~frame["cell"].isin(progress["cell"])]
    if len(unplanned):
        old = unplanned.assign(train_seed=unplanned["train_seed"].fillna(unplanned["seed"]).astype(int)).groupby(
            ["cell", "label", "dataset", "snr", "n_way", "k_shot", "train_seed"])["episode"].nunique()
        progress = pd.concat([progress, old.reset_index(name="stored").assign(state="not planned")])
    cells = progress.drop(columns=["cell"]).rename(columns={"train_seed": "seed", "episodes": "planned"})
    return summary, cells.reset_index(drop=True)


@contextmanager
def _existing_store(store: str | Path):
    """A results store that must exist already (reading never creates one), closed afterwards."""
    from fewshot_cryoet.results.store import ResultsStore

    with ResultsStore(store, create=False) as results:
        yield results


def compare(store: str | Path, a: str, b: str) -> pd.DataFrame:
    """One method (a label, or a method name with one row) against another, cell by cell, on the
    episodes both were scored on: the paired difference, its CI and a Wilcoxon test."""
    from fewshot_cryoet.reports.leaderboard import compare as compare_rows

    with _existing_store(store) as results:
        return compare_rows(results.frame(), a, b)


def parse_param_overrides(texts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["protonet.lr=1e-3", "cosnet.channels=[8,16]"]`` → ``{"protonet": {"lr": 0.001}, ...}``;
    values are JSON where they parse as JSON, strings otherwise."""
    overrides: dict[str, dict[str, Any]] = {}
    for text in texts:
        match = re.fullmatch(r"([\w-]+)\.(\w+)=(.*)", text)
        if not match:
            raise SettingError("param", f"param {text!r}: use METHOD.KEY=VALUE")
        try:
            value = json.loads(match.group(3))
        except ValueError:
            value = match.group(3)
        overrides.setdefault(match.group(1), {})[match.group(2)] = value
    return overrides


# -- summaries (what the command line prints, as data) ---------------------------------------------
def dataset_summary(dataset: SubtomogramDataset) -> tuple[pd.DataFrame, list[str]]:
    """(one row per class: split, extent, particles; lines on each SNR level and the hash)."""
    import math

    counts = dataset.particles["class"].value_counts()
    classes = pd.DataFrame([{"class": c["name"], "split": c["split"],
                             **({"extent (Å)": round(c["extent_angstrom"])} if "extent_angstrom" in c else {}),
                             "particles": int(counts.get(c["name"], 0))} for c in dataset.manifest["classes"]])
    lines = []
    labels = dataset.labels
    source = dataset.manifest.get("source")
    if source is not None:  # imported: say from where, and how it was read
        lines.append(f"imported from {dataset.manifest.get('source_path')} ({source['kind']}, content hash "
                     f"{source['content_hash']}); {'contrast inverted, ' if source.get('invert') else ''}"
                     f"{dataset.manifest.get('padded_particles', 0)} particles padded at a tomogram border; "
                     f"masks: {'yes' if dataset.has_masks else 'none'}")
    for label in dataset.snr_labels:
        if label == "recorded":
            lines.append("SNR recorded: data from a microscope, noise unknown")
            continue
        rows = labels[labels["volume_file"] == f"volumes/snr_{label}.npy"]
        measured = rows["snr_measured"].astype(float)
        lines.append(f"SNR {label}: " + ("noise-free" if math.isinf(measured.iloc[0]) else
                     f"measured {measured.mean():.4g} (box), {dataset.mask_snr(label):.4g} median inside masks"))
    return classes, [*lines, f"content hash {dataset.content_hash}"]


def methods() -> pd.DataFrame:
    """Every registered method (built-in and plugins): variants, origin, whether it segments and trains."""
    from fewshot_cryoet.plugins import get_plugins

    registry = get_plugins().methods
    return pd.DataFrame([{"method": name, "variants": ", ".join(cls.variants), "origin": str(registry.origin(name)),
                          "segments": "yes" if cls.segments else "no", "trains": "yes" if cls.trainable else "no",
                          "description": cls.description}
                         for name in registry.names() for cls in [registry.get(name)]])


def study_summary(study: optuna.Study, storage: str, top: int = 10) -> tuple[str, pd.DataFrame]:
    """(one line on what a study tunes and its trial counts, its best completed trials)."""
    from optuna.trial import TrialState

    from fewshot_cryoet.tuning import safe_url

    s = study.user_attrs["fsc"]
    trials = study.get_trials(deepcopy=False)
    counts = ", ".join(f"{n} {state.name.lower()}" for state in TrialState
                       if (n := sum(t.state == state for t in trials)))
    header = (f"study {study.study_name} ({safe_url(storage)}): {s['method']}/{s['variant']}, SNR {s['snr']}, "
              f"{s['ways']}-way {s['shots']}-shot, budget {s['budget'] or 'none'} per trial, objective "
              f"{s['objective']}; trials: {counts}")
    confirmation = study.user_attrs.get("confirmation")
    if confirmation is not None:
        from fewshot_cryoet.tuning.confirm import Confirmation

        kept = Confirmation(**{k: v for k, v in confirmation.items() if k != "trial"})
        header += f"\ntrial {confirmation['trial']} against the defaults, {kept.describe()}"
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-sum(t.values), t.number))

    def fmt(value) -> str:
        return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = [{"trial": f"{t.number}{' (defaults)' if t.user_attrs.get('untuned') else ''}",
             "objective": ", ".join(f"{v:.4f}" for v in t.values), "accuracy": fmt(t.user_attrs.get("accuracy")),
             "CRF Dice": fmt(t.user_attrs.get("dice_crf")), "train episodes": fmt(t.user_attrs.get("fit_episodes")),
             "parameters": " ".join(f"{k}={fmt(v)}" for k, v in sorted(t.params.items()))} for t in complete[:top]]
    return header, pd.DataFrame(rows)
