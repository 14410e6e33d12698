"""Named data sets that ``fsc bench`` can make on demand, cached in the user cache folder.

A provider turns an SNR level into a :class:`SubtomogramDataset`, simulating it the first time
and reusing the cached copy afterwards (the cache key covers every simulation parameter and the
template files' contents). ``FSC_CACHE_DIR`` overrides the cache location.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fewshot_cryoet.datasets.dataset import MANIFEST, SubtomogramDataset, snr_label
from fewshot_cryoet.datasets.simulate import SimulationConfig
from fewshot_cryoet.datasets.templates import Template


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("FSC_CACHE_DIR") or user_cache_dir("fewshot-cryoet"))


@dataclass(frozen=True)
class DatasetProvider:
    """A named recipe: templates (made lazily) plus simulation settings."""

    name: str
    description: str
    make_templates: Callable[[float], list[Template]]
    key: str
    per_class: int = 100
    seed: int = 0
    config: SimulationConfig = field(default_factory=SimulationConfig)
    explicit_splits: dict | None = None

    def dataset(self, snr: float, reporter=None) -> SubtomogramDataset:
        """The data set at ``snr``, simulated into the cache on first use."""
        from fewshot_cryoet.datasets.build import simulate_dataset

        recipe = json.dumps({"key": self.key, "per_class": self.per_class, "seed": self.seed,
                             "config": self.config.to_dict(), "splits": self.explicit_splits}, sort_keys=True)
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
        folder = cache_dir() / "datasets" / f"{self.name}-{digest}-snr{snr_label(snr)}"
        if (folder / MANIFEST).exists():
            return SubtomogramDataset(folder)
        templates = self.make_templates(self.config.voxel_size)
        count, box = len(templates) * self.per_class, self.config.box
        size = count * box**3 * 5  # float32 volumes plus uint8 masks
        from fewshot_cryoet.core.reporting import as_reporter

        as_reporter(reporter).log(
            f"first use of {self.name} at SNR {snr_label(snr)}: simulating {len(templates)} classes × {self.per_class} "
            f"subtomograms ({box}³ at {self.config.voxel_size:g} Å) into {folder} (about {size / 2**20:.0f} MiB; "
            "later runs reuse it; FSC_CACHE_DIR moves the cache)")
        return simulate_dataset(
            templates, folder, [snr], self.per_class, self.config, self.seed,
            explicit_splits=self.explicit_splits, reporter=reporter,
            extra_manifest={"provider": self.name},
        )


def synthetic_provider(classes: int = 22, per_class: int = 100) -> DatasetProvider:
    from fewshot_cryoet.datasets.synthetic import synthetic_templates

    return DatasetProvider(
        name="synthetic",
        description=f"{classes} built-in synthetic macromolecules, {per_class} per class, tilt series ±60°/2°",
        make_templates=lambda voxel: synthetic_templates(classes, voxel),
        key=f"synthetic-v1-{classes}",
        per_class=per_class,
    )


#: Classes of :func:`many_classes_provider` held out for validation and for a test split.
MANY_CLASSES_HELD_OUT = 32


def many_classes_provider(classes: int = 512, per_class: int = 20) -> DatasetProvider:
    """Training data with many classes (``fsc train``'s default): models trained on a few classes
    learn those classes, and on unseen maps protonet rose from 0.787 with 8 synthetic training
    classes to 0.937 with 512 (benchmarks/results/class_diversity_2026-12-04.md). Classes, not
    particles per class, were what mattered, so 20 per class keep the set near 10,000 particles.
    The last 32 classes validate (model selection), the 32 before them are a test split, and every
    other class trains."""
    from fewshot_cryoet.datasets.synthetic import synthetic_templates

    names = [f"syn{i:03d}" for i in range(classes)]
    held = MANY_CLASSES_HELD_OUT
    return DatasetProvider(
        name=f"synthetic-{classes}",
        description=f"{classes} built-in synthetic macromolecules, {per_class} per class ({classes - 2 * held} "
                    f"training, {held} validation and {held} test classes): many classes to train on",
        make_templates=lambda voxel: synthetic_templates(classes, voxel),
        key=f"synthetic-v1-{classes}",
        per_class=per_class,
        explicit_splits={"val": names[-held:], "test": names[-2 * held:-held]},
    )


def templates_provider(paths: list[str | Path], per_class: int = 100,
                       explicit_splits: dict | None = None) -> DatasetProvider:
    """A provider over the user's template files (maps or models, and ``synthetic:N`` classes
    mixed in: ``datasets.class_sources``), keyed by their contents."""
    from fewshot_cryoet.datasets.class_sources import class_sources

    sources = class_sources(list(paths))
    return DatasetProvider(
        name="templates",
        description=f"{len(sources)} templates from {', '.join(sorted({str(Path(p)) for p in paths}))}",
        make_templates=lambda voxel: sources.load(voxel),
        key=f"templates-{sources.key()}",
        per_class=per_class,
        explicit_splits=explicit_splits,
    )
