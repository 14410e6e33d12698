"""Data sets on disk: layout, lazy loading, determinism, atomic writes, splits, export."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from fewshot_cryoet import FscError
from fewshot_cryoet.core.reporting import Reporter
from fewshot_cryoet.datasets.build import simulate_dataset
from fewshot_cryoet.datasets.dataset import SubtomogramDataset
from fewshot_cryoet.datasets.export import export_dataset
from fewshot_cryoet.datasets.simulate import SimulationConfig
from fewshot_cryoet.datasets.splits import assign_splits


def test_layout_labels_and_memory_maps(paired_dataset, templates):
    ds = SubtomogramDataset(paired_dataset.path)
    assert len(ds) == 6 * 8 and ds.box == 32 and ds.voxel_size == 10.0
    assert ds.snr_labels == ["inf", "1000", "0.5"]
    volumes = ds.volumes("0.5")
    assert isinstance(volumes, np.memmap) and volumes.dtype == np.float32 and volumes.shape == (48, 32, 32, 32)
    assert isinstance(ds.masks, np.memmap) and ds.masks.dtype == np.uint8
    labels = pd.read_csv(ds.path / "labels.csv")
    for column in ("class", "split", "quat_x", "quat_w", "shift_x_A", "defocus_um", "snr",
                   "snr_measured", "snr_measured_mask", "neighbours"):
        assert column in labels.columns
    assert len(labels) == 3 * 48
    assert (ds.labels["neighbours"] == "").all() and (ds.labels["n_neighbours"] == 0).all()
    manifest = ds.manifest
    assert manifest["seed"] == 3 and manifest["package_version"]
    assert manifest["simulation"]["route"] == "tilt-series" and len(manifest["tilt_angles"]) == 61
    assert [c["name"] for c in manifest["classes"]] == [t.name for t in templates]
    ds.verify()


def test_splits_are_class_disjoint_and_cover_every_class(paired_dataset):
    particles = paired_dataset.particles
    per_class_split = particles.groupby("class")["split"].nunique()
    assert (per_class_split == 1).all()
    splits = paired_dataset.splits
    assert set(splits) == {"train", "val", "test"} and all(splits.values())
    names = sum(splits.values(), [])
    assert sorted(names) == sorted(paired_dataset.classes)
    test_idx = paired_dataset.indices(split="test")
    assert set(particles.loc[test_idx, "class"]) == set(splits["test"])


def test_default_and_explicit_splits():
    names = [f"c{i}" for i in range(20)]
    split = assign_splits(names, seed=0)
    counts = pd.Series(split).value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (8, 4, 8)
    assert assign_splits(names, seed=0) == split and assign_splits(names, seed=1) != split
    explicit = assign_splits(names, 0, explicit={"test": ["c1", "c2"], "val": ["c3"]})
    assert explicit["c1"] == "test" and explicit["c3"] == "val" and explicit["c4"] == "train"
    with pytest.raises(FscError, match="not among"):
        assign_splits(names, 0, explicit={"test": ["nope"]})


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, templates):
    kwargs = dict(snrs=[0.5], per_class=3, config=SimulationConfig(route="fourier"))
    a = simulate_dataset(templates[:3], tmp_path / "a", seed=1, **kwargs)
    b = simulate_dataset(templates[:3], tmp_path / "b", seed=1, **kwargs)
    c = simulate_dataset(templates[:3], tmp_path / "c", seed=2, **kwargs)
    assert a.content_hash == b.content_hash
    assert (a.path / "volumes" / "snr_0.5.npy").read_bytes() == (b.path / "volumes" / "snr_0.5.npy").read_bytes()
    assert c.content_hash != a.content_hash
    assert not np.allclose(np.asarray(a.volumes(0.5)), np.asarray(c.volumes(0.5)))


def test_worker_processes_give_identical_bytes(tmp_path, templates):
    kwargs = dict(snrs=[1000.0], per_class=6, config=SimulationConfig(), seed=4)
    one = simulate_dataset(templates[:3], tmp_path / "one", workers=1, **kwargs)
    two = simulate_dataset(templates[:3], tmp_path / "two", workers=2, **kwargs)
    assert one.content_hash == two.content_hash


def test_existing_output_needs_overwrite_and_foreign_folders_are_kept(tmp_path, templates):
    kwargs = dict(snrs=[math.inf], per_class=2, config=SimulationConfig(route="fourier"))
    first = simulate_dataset(templates[:2], tmp_path / "d", seed=0, **kwargs)
    with pytest.raises(FscError, match="already holds a data set.*--overwrite"):
        simulate_dataset(templates[:2], tmp_path / "d", seed=1, **kwargs)
    second = simulate_dataset(templates[:2], tmp_path / "d", seed=1, overwrite=True, **kwargs)
    assert second.content_hash != first.content_hash
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FscError, match="not empty and is not a data set"):
        simulate_dataset(templates[:2], foreign, seed=0, overwrite=True, **kwargs)
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


class _InterruptingReporter(Reporter):
    """A progress reporter whose second update raises, as Ctrl-C in the middle of a run would."""

    def __init__(self):
        self.calls = 0

    def _update(self, task):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, templates):
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(templates, out, [0.5], per_class=8, config=SimulationConfig(route="fourier"),
                         reporter=_InterruptingReporter())
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_incomplete_or_tampered_folders_are_refused(tmp_path, paired_dataset):
    partial = tmp_path / "partial"
    (partial / "volumes").mkdir(parents=True)
    with pytest.raises(FscError, match="not a complete data set"):
        SubtomogramDataset(partial)
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(paired_dataset.path, copy)
    volumes = np.load(copy / "volumes" / "snr_0.5.npy", mmap_mode="r+")
    volumes[0, 0, 0, 0] += 1.0
    volumes.flush()
    del volumes
    with pytest.raises(FscError, match="data files hash to"):
        SubtomogramDataset(copy).verify()
    with pytest.raises(FscError, match="no SNR 7"):
        SubtomogramDataset(copy).volumes(7)


def test_missing_parents_are_created_and_file_parents_refused(tmp_path, templates):
    nested = simulate_dataset(templates[:2], tmp_path / "new" / "deep" / "d", [1.0], per_class=1,
                              config=SimulationConfig(route="fourier"))
    assert len(nested) == 2
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(FscError, match="is a file, not a folder"):
        simulate_dataset(templates[:2], tmp_path / "plain.txt" / "d", [1.0], per_class=1)


def test_export_to_mrc_and_star(tmp_path, paired_dataset):
    star_path = export_dataset(paired_dataset, tmp_path / "export", "0.5")
    table = starfile.read(star_path)
    if isinstance(table, dict):
        table = table["particles"]
    assert len(table) == len(paired_dataset)
    first = tmp_path / "export" / table["rlnImageName"].iloc[0]
    with mrcfile.open(first) as mrc:
        assert mrc.data.shape == (32, 32, 32)
        assert float(mrc.voxel_size.x) == pytest.approx(10.0)
        assert np.allclose(mrc.data, paired_dataset.volumes(0.5)[0])
    with mrcfile.open(tmp_path / "export" / table["fscMaskName"].iloc[0]) as mrc:
        assert np.array_equal(mrc.data.astype(np.uint8), paired_dataset.masks[0])
    assert set(table["fscClass"]) == set(paired_dataset.classes)
    with pytest.raises(FscError, match="already holds an export"):
        export_dataset(paired_dataset, tmp_path / "export", "0.5")


def test_particles_larger_than_the_box_are_reported_by_class(tmp_path):
    from fewshot_cryoet import api
    from fewshot_cryoet.core.reporting import CallbackReporter
    from fewshot_cryoet.datasets.simulate import SimulationConfig

    lines: list[str] = []
    api.simulate(tmp_path / "small-box", classes=3, per_class=2, snrs=[1.0], seed=0,
                 config=SimulationConfig(box=8, voxel_size=20.0, route="fourier"),
                 reporter=CallbackReporter(on_progress=None, on_log=lines.append))
    clipped = [line for line in lines if "clipped" in line]
    assert clipped and all(line.startswith("warning: syn00") and "of 2 particles" in line for line in clipped)
