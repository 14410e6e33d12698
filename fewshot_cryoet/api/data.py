"""Where a run's data come from, and the data verbs: ``simulate``, ``simulate_scene``,
``import_data``, ``export``, ``open_dataset``, ``show`` and the summary ``fsc info`` prints. One input
pipeline (:func:`data_source`) serves every verb: a registered name simulated on demand, a data set
folder, users' particles imported once into the cache, or templates."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.reporting import Reporter, as_reporter

if TYPE_CHECKING:

    from fewshot_cryoet.datasets.dataset import SubtomogramDataset
    from fewshot_cryoet.datasets.providers import DatasetProvider
    from fewshot_cryoet.datasets.simulate import SimulationConfig
    from fewshot_cryoet.datasets.templates import Template
from fewshot_cryoet.api.specs import load_method

#: Subtomograms per class when a data set is simulated on demand and none is asked for.
DEFAULT_PER_CLASS = 100


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
    from fewshot_cryoet.datasets.scene import SceneConfig
    from fewshot_cryoet.datasets.scene import simulate_scene as simulate_

    config = config or SceneConfig()
    loaded = load_templates(templates, classes, synthetic_seed, config.voxel_size, template_voxel_size, resolution,
                            reporter)
    return simulate_(loaded, out, config, reporter)


def combine(folders: Sequence[str | Path | SubtomogramDataset], out: str | Path, *,
            levels: Sequence[str] | None = None, overwrite: bool = False,
            reporter: Reporter | None = None) -> SubtomogramDataset:
    """One data set at ``out`` of every particle of ``folders`` (``fsc combine``): the same box and
    voxel size, the SNR levels all have (or the one level per folder named in ``levels``), classes
    in their folders' splits; see ``datasets.combine``."""
    from fewshot_cryoet.datasets.combine import combine_datasets

    return combine_datasets(folders, out, levels=levels, overwrite=overwrite, reporter=reporter)


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


def with_imaging_preset(source: DataSource, preset: str | None) -> DataSource:
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
    """Density maps / atomic models from ``paths``, which may mix in ``synthetic:N`` built-in
    classes (``datasets.class_sources``), or ``classes`` built-in synthetic classes alone."""
    return _load(template_sources(paths, classes, synthetic_seed), bool(paths), voxel_size, template_voxel_size,
                 resolution, reporter)


def _load(sources, from_paths: bool, voxel_size: float, template_voxel_size: float | None, resolution: float | None,
          reporter: Reporter | None) -> list[Template]:
    """Every class of resolved ``sources`` as a template, with a progress bar."""
    if resolution is not None and not 0 < resolution < 1e4:  # NaN fails too
        raise SettingError("resolution", f"resolution must be a positive number of Å, got {resolution}")
    task = as_reporter(reporter).task("loading templates" if from_paths else "synthetic classes", total=len(sources))
    return sources.load(voxel_size, template_voxel_size, resolution, task.advance)


def template_sources(paths: Sequence[str | Path] = (), classes: int = 22, synthetic_seed: int = 0):
    """The classes ``paths`` name (``synthetic:N`` included), or ``classes`` synthetic ones when
    no path is given; checked (files exist, names unique, counts in range) but not yet loaded."""
    from fewshot_cryoet.datasets.build import MAX_CLASSES
    from fewshot_cryoet.datasets.class_sources import SYNTHETIC_PREFIX, class_sources

    if not paths and not 1 <= classes <= MAX_CLASSES:
        raise SettingError("classes", f"classes must be 1 to {MAX_CLASSES:,}, got {classes:,}")
    return class_sources(list(paths) or [f"{SYNTHETIC_PREFIX}{classes}"], synthetic_seed)


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
    from fewshot_cryoet.datasets.build import check_size

    sources = template_sources(templates, classes, synthetic_seed)  # resolved once: counted, then loaded
    check_size(len(sources), per_class, config.box, len(snrs), Path(out))
    loaded = _load(sources, bool(templates), config.voxel_size, template_voxel_size, resolution, reporter)
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
         per_class: int = 3, axis: str = "z", model: str | Path | None = None, device: str = "auto",
         overwrite: bool = False) -> Path:
    """A PNG of central slices and masks per class, or, with ``model`` (a checkpoint or model
    folder of a segmenting method), its raw and CRF-refined masks per test class."""
    from fewshot_cryoet.core.outputs import check_output_file
    from fewshot_cryoet.datasets.montage import draw_montage

    check_output_file(Path(out), overwrite)  # an existing picture may be the user's
    data = open_dataset(dataset)
    if model is None:
        return draw_montage(data, out, snr, per_class, axis)
    from fewshot_cryoet.reports.figures import draw_segmentations

    return draw_segmentations(data, load_method(model, device), out, snr)


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
        padded = dataset.manifest.get("padded_particles", 0)
        from_tomograms = source["kind"] in ("tomograms", "copick")  # only cut-outs can cross a border
        lines.append(f"imported from {dataset.manifest.get('source_path')} ({source['kind']}, content hash "
                     f"{source['content_hash']}); {'contrast inverted, ' if source.get('invert') else ''}"
                     + (f"{padded} particles padded at a tomogram border; " if from_tomograms or padded else "")
                     + f"masks: {'yes' if dataset.has_masks else 'none'}")
    for label in dataset.snr_labels:
        if label == "recorded":
            lines.append("SNR recorded: data from a microscope, noise unknown")
            continue
        rows = labels[labels["volume_file"] == f"volumes/snr_{label}.npy"]
        measured = rows["snr_measured"].astype(float)
        lines.append(f"SNR {label}: " + ("noise-free" if math.isinf(measured.iloc[0]) else
                     f"measured {measured.mean():.4g} (box), {dataset.mask_snr(label):.4g} median inside masks"))
    return classes, [*lines, f"content hash {dataset.content_hash}"]


def simulation_config(preset: str | None = None, **settings):
    """The ``SimulationConfig`` of an imaging ``preset`` (``datasets.presets``; None: the default
    microscope) with ``settings`` on top: what ``fsc simulate`` builds from its options."""
    from fewshot_cryoet.datasets.presets import apply_preset
    from fewshot_cryoet.datasets.simulate import SimulationConfig

    return apply_preset(SimulationConfig(), preset, settings)


def scene_config(**settings):
    """The ``SceneConfig`` of a crowded tomogram (``datasets.scene``) from keyword settings."""
    from fewshot_cryoet.datasets.scene import SceneConfig

    return SceneConfig(**settings)
