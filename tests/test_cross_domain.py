"""Cross-domain benchmarks: train and select on one data set, test on another (disjoint classes,
different imaging), with both recorded in every row and the domain pair on the leaderboard."""

from __future__ import annotations

import math

import pytest

from fewshot_cryoet import api
from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.datasets.build import simulate_dataset
from fewshot_cryoet.datasets.simulate import SimulationConfig
from fewshot_cryoet.datasets.synthetic import synthetic_template

TINY = {"protonet": {"channels": [4, 8]}, "xcorr": {"angular_step": 60}}


@pytest.fixture(scope="module")
def shifted_dataset(tmp_path_factory):
    """Six other synthetic classes, imaged differently from the tiny data set: no CTF, a narrower
    tilt range (a wider missing wedge), noise-free and SNR 1, same 16³ grid at 20 Å."""
    templates = [synthetic_template(100 + i, 20.0) for i in range(6)]
    names = [t.name for t in templates]
    config = SimulationConfig(box=16, voxel_size=20.0, route="fourier", ctf=False, tilt_min=-45, tilt_max=45)
    return simulate_dataset(templates, tmp_path_factory.mktemp("shifted") / "shifted", [math.inf, 1.0], per_class=6,
                            config=config, seed=1, explicit_splits={"test": names[:3], "val": names[3:4]})


def test_train_on_one_domain_test_on_another(tiny_val2_dataset, shifted_dataset, tmp_path):
    store = tmp_path / "cross.sqlite"
    frame = api.bench(["protonet", "xcorr"], dataset=shifted_dataset, train_dataset=tiny_val2_dataset, snrs=[1.0],
                      ways=[2, 3], episodes=4, queries_per_class=2, budget="4ep", params=TINY, store=store)
    assert len(frame) == 2 * 2 * 4 and frame.attrs["failures"] == []
    assert set(frame["dataset"]) == {"shifted"} and set(frame["train_dataset"]) == {"tiny-val2"}
    assert set(frame["dataset_hash"]) == {shifted_dataset.content_hash}
    assert set(frame["train_dataset_hash"]) == {tiny_val2_dataset.content_hash}
    # The same training serves a second test domain: the checkpoint is keyed by the training data.
    checkpoints = sorted((tmp_path / "cross.models").glob("*.pt"))
    assert len(checkpoints) == 1 and tiny_val2_dataset.content_hash in checkpoints[0].name
    in_domain = api.bench(["protonet"], dataset=tiny_val2_dataset, snrs=[1.0], ways=[2], episodes=4,
                          queries_per_class=2, budget="4ep", params={"protonet": TINY["protonet"]}, store=store)
    assert set(in_domain["train_dataset"]) == {""} and sorted((tmp_path / "cross.models").glob("*.pt")) == checkpoints
    written = api.leaderboard(store, tmp_path / "boards")
    markdown = (tmp_path / "boards" / "leaderboard.md").read_text()
    assert "## Domains `tiny-val2` → `shifted`" in markdown and "## Data set `tiny-val2`" in markdown
    assert any(p.name == "leaderboard.csv" for p in written)


def test_shared_classes_are_refused_unless_asked_for(tiny_dataset, tiny_val2_dataset, tmp_path):
    with pytest.raises(SettingError, match="which are test classes of") as info:
        api.bench(["xcorr"], dataset=tiny_dataset, train_dataset=tiny_val2_dataset, snrs=[1.0], ways=[2],
                  episodes=2, queries_per_class=2, params={"xcorr": TINY["xcorr"]}, store=tmp_path / "r.sqlite")
    assert info.value.setting == "train_dataset"
    from click.testing import CliRunner

    from fewshot_cryoet.cli import main

    cli = CliRunner().invoke(main, ["bench", "--dataset", str(tiny_dataset.path), "--train-dataset",
                                    str(tiny_val2_dataset.path), "--methods", "xcorr", "--snr", "1", "--ways", "2",
                                    "--store", str(tmp_path / "cli.sqlite")])
    assert cli.exit_code == 2 and "--train-dataset" in cli.output and "--allow-class-overlap" in cli.output
    frame = api.bench(["xcorr"], dataset=tiny_dataset, train_dataset=tiny_val2_dataset, allow_class_overlap=True,
                      snrs=[1.0], ways=[2], episodes=2, queries_per_class=2, params={"xcorr": TINY["xcorr"]}, store=tmp_path / "r.sqlite")
    assert len(frame) == 2


def test_domains_on_different_grids_are_refused(tiny_dataset, paired_dataset, tmp_path):
    with pytest.raises(SettingError, match="simulate both on one grid"):
        api.bench(["xcorr"], dataset=paired_dataset, train_dataset=tiny_dataset, snrs=[math.inf], ways=[2], episodes=2,
                  queries_per_class=2, params={"xcorr": TINY["xcorr"]}, store=tmp_path / "r.sqlite",
                  allow_class_overlap=True)


def test_stores_of_older_schemas_are_migrated_in_place(tmp_path):
    import sqlite3

    from fewshot_cryoet.results.store import SCHEMA_VERSION, ResultsStore

    old = """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE episodes (
        id INTEGER PRIMARY KEY,
        cell TEXT NOT NULL,
        method TEXT NOT NULL, variant TEXT NOT NULL, label TEXT NOT NULL,
        params_hash TEXT NOT NULL, params TEXT NOT NULL, profile TEXT, budget TEXT,
        dataset TEXT NOT NULL, dataset_hash TEXT NOT NULL,
        snr TEXT NOT NULL, n_way INTEGER NOT NULL, k_shot INTEGER NOT NULL, q_query INTEGER NOT NULL,
        seed INTEGER NOT NULL, episode INTEGER NOT NULL,
        accuracy REAL NOT NULL, dice REAL, dice_crf REAL,
        predict_seconds REAL NOT NULL, fit_seconds REAL, fit_episodes INTEGER, val_accuracy REAL,
        device TEXT NOT NULL, package_version TEXT NOT NULL, plugin TEXT NOT NULL, created TEXT NOT NULL,
        UNIQUE (cell, episode)
    );
    CREATE TABLE query_dice (
        cell TEXT NOT NULL, episode INTEGER NOT NULL, query INTEGER NOT NULL,
        class TEXT NOT NULL, dice REAL NOT NULL, dice_crf REAL,
        PRIMARY KEY (cell, episode, query)
    );
    CREATE INDEX episodes_by_cell ON episodes (cell);
    """  # the schema version 1 wrote
    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(old)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("INSERT INTO episodes (cell, method, variant, label, params_hash, params, dataset, dataset_hash, "
                   "snr, n_way, k_shot, q_query, seed, episode, accuracy, predict_seconds, device, package_version, "
                   "plugin, created) VALUES ('c', 'xcorr', 'default', 'xcorr', 'h', '{}', 'd', 'dh', '1', 2, 1, 5, "
                   "0, 0, 0.75, 0.1, 'cpu', '0.1.0', 'built-in', 'now')")
    store = ResultsStore(path)
    frame = store.frame()
    assert len(frame) == 1 and frame["accuracy"].iloc[0] == 0.75
    assert frame["train_dataset"].iloc[0] == "" and frame["checkpoint"].isna().all() and frame["fit_examples"].isna().all()
    assert store.connection.exec_driver_sql("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
