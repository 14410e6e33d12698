"""A run continues from its results archive on a machine that has neither its store nor its
checkpoints; unfinished models stay out of it; a damaged or foreign archive is refused before it
changes anything (real bench, real SQLite stores, real archive files)."""

from __future__ import annotations

import gzip
import shutil
import sqlite3
from pathlib import Path

import pytest

from fewshot_cryoet import api
from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.core.reporting import CallbackReporter
from fewshot_cryoet.results.archive import MARKER, ResultsArchive
from fewshot_cryoet.results.store import ResultsStore

#: a trained method, a segmenting one (per-query Dice, CRF), and a training-free one
METHODS = ["protonet", "cosnet/duse-decoder", "xcorr"]
PARAMS = {"protonet": {"channels": [4, 8, 8, 8], "val_every": 2},
          "cosnet": {"profile": "paper", "channels": 4, "embedding": 16, "box": 16, "val_every": 2}}


def _bench(dataset, store, archive, messages=None, shots=(1,)):
    reporter = CallbackReporter(on_log=messages.append if messages is not None else None)
    return api.bench(METHODS, dataset=dataset, params=PARAMS, snrs=[1.0], ways=[2], shots=list(shots), episodes=3,
                     queries_per_class=2, budget="4ep", store=store, resume=True, archive=archive, reporter=reporter)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _frames(store):
    with ResultsStore(store, create=False) as results:
        frame = results.frame().drop(columns=["id", "created"]).sort_values(["cell", "episode"]).reset_index(drop=True)
        dice = results.query_dice_frame().sort_values(["cell", "episode", "query"]).reset_index(drop=True)
        predictions = results.query_predictions_frame().sort_values(["cell", "episode", "query"]).reset_index(drop=True)
    return frame, dice, predictions


@pytest.fixture(scope="module")
def archived(tiny_val2_dataset, tmp_path_factory):
    """(store, archive) of one finished run: the archive as a machine would leave it."""
    folder = tmp_path_factory.mktemp("first")
    _bench(tiny_val2_dataset, folder / "r.sqlite", folder / "archive")
    return folder / "r.sqlite", folder / "archive"


def test_a_run_continues_from_its_archive_without_training_or_scoring_again(archived, tiny_val2_dataset, tmp_path):
    first, archive = archived
    cells = ResultsArchive(archive).cells()
    assert len(cells) == 3 and (archive / MARKER).exists()
    written = _files(archive)

    # another machine: the committed archive, no store, no checkpoints
    messages: list[str] = []
    second = tmp_path / "r.sqlite"
    _bench(tiny_val2_dataset, second, archive, messages)
    assert any("3 finished cells loaded" in m for m in messages)
    assert sum("already complete" in m for m in messages) == 3  # nothing trained, nothing scored
    assert not list(tmp_path.glob("r.models/*.pt"))
    for before, again in zip(_frames(first), _frames(second)):
        assert len(before) and before.equals(again)
    assert _frames(second)[1]["dice_crf"].notna().all()  # the CRF's Dice travelled too
    assert _files(archive) == written  # nothing rewritten

    # the archive is reproducible: the loaded store archives to the same bytes
    ResultsArchive(tmp_path / "again").save_finished(ResultsStore(second, create=False))
    assert _files(tmp_path / "again") == written


def test_an_archive_loads_into_sqlite_and_postgresql_stores_alike(archived, store_url):
    first, archive = archived
    with ResultsStore(store_url) as results:
        assert len(ResultsArchive(archive).load_into(results).added) == 3
        assert ResultsArchive(archive).load_into(results).already == ResultsArchive(archive).cells()  # once only
    for before, loaded in zip(_frames(first), _frames(store_url)):
        assert len(before) and before.equals(loaded)


def test_a_model_with_an_unfinished_cell_stays_out_of_the_archive(tiny_val2_dataset, tmp_path):
    store = tmp_path / "r.sqlite"
    _bench(tiny_val2_dataset, store, None, shots=(1, 2))
    with sqlite3.connect(store) as db:  # as if the run had stopped before protonet's last 2-shot episode
        cell, = db.execute("SELECT DISTINCT cell FROM episodes WHERE method = 'protonet' AND k_shot = 2").fetchone()
        db.execute("DELETE FROM episodes WHERE cell = ? AND episode = 2", (cell,))
    archive = ResultsArchive(tmp_path / "archive")
    added = archive.save_finished(ResultsStore(store, create=False)).added
    with sqlite3.connect(store) as db:
        methods = dict(db.execute("SELECT DISTINCT cell, method FROM episodes").fetchall())
    assert sorted(methods[c] for c in added) == ["cosnet", "cosnet", "xcorr", "xcorr"]  # protonet's 1-shot cell waits too


def test_a_folder_fsc_did_not_make_is_refused_before_any_work_and_left_untouched(tiny_val2_dataset, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "mine.txt").write_text("a user's notes")
    with pytest.raises(SettingError, match=f"archive {folder}: holds files but no {MARKER}"):
        _bench(tiny_val2_dataset, tmp_path / "r.sqlite", folder)
    assert not (tmp_path / "r.sqlite").exists()  # refused before the store was even created
    assert _files(folder) == {(folder / "mine.txt").relative_to(folder): b"a user's notes"}


def test_a_changed_file_or_a_clashing_store_is_refused_and_nothing_is_loaded(archived, tmp_path):
    first, archive = archived
    archive = Path(shutil.copytree(archive, tmp_path / "archive"))
    cells = ResultsArchive(archive).cells()
    episodes = archive / cells[-1] / "episodes.jsonl.gz"
    original = episodes.read_bytes()
    text = gzip.decompress(original).decode()
    episodes.write_bytes(gzip.compress(text.replace('"accuracy": 0.', '"accuracy": 1.', 1).encode(), mtime=0))
    fresh = tmp_path / "fresh.sqlite"
    with pytest.raises(SettingError, match=f"archive {episodes}: changed since it was written"):
        ResultsArchive(archive).load_into(ResultsStore(fresh))
    assert ResultsStore(fresh, create=False).frame().empty  # checked whole before anything was inserted

    episodes.write_bytes(original)
    partial = tmp_path / "partial.sqlite"
    with sqlite3.connect(first) as source, sqlite3.connect(partial) as copy:
        source.backup(copy)
    with sqlite3.connect(partial) as db:  # a store that holds part of one of those cells
        db.execute("DELETE FROM episodes WHERE cell = ? AND episode = 0", (cells[0],))
    with pytest.raises(SettingError, match="holds 2 of this cell's episodes and the archive 3"):
        ResultsArchive(archive).load_into(ResultsStore(partial, create=False))
