"""Crafted results archives, as a table: each case takes a real archive (``fsc bench --archive`` of a
tiny grid), changes it as someone crafting one would, with every SHA-256 in ``cell.json`` made to
match again, and loads it into a fresh store. Each must be refused with one line naming the
archive file or folder, before any row enters the store, without a traceback, and within bounded
memory (``tracemalloc`` peak under 64 MiB: a gzip bomb is refused after reading what its rows can
take, not after inflating it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest

from fewshot_cryoet import api
from fewshot_cryoet.api.specs import check_row_method
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.results.archive import ResultsArchive
from fewshot_cryoet.results.store import ResultsStore

MEMORY_LIMIT = 64 << 20


@pytest.fixture(scope="module")
def archive(tiny_dataset, tmp_path_factory) -> Path:
    """A real archive: xcorr and radial (training-free, fast) at 2-way, 6 episodes, SNR 1."""
    folder = tmp_path_factory.mktemp("archive")
    api.bench(["xcorr", "radial"], dataset=tiny_dataset, snrs=[1.0], ways=[2], episodes=6, queries_per_class=2,
              store=folder / "made.sqlite", archive=folder / "archive")
    return folder / "archive"


def _cell(root: Path, which: int = 0) -> Path:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[which]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


def _write(path: Path, data: bytes, rows: int | None = None) -> None:
    """Replace a table file and make cell.json's SHA-256 (and row count) match, as a forger would."""
    path.write_bytes(data)
    header_path = path.parent / "cell.json"
    header = json.loads(header_path.read_text())
    entry = header["files"].setdefault(path.name, {"rows": 0, "sha256": ""})
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    if rows is not None:
        entry["rows"] = rows
    header_path.write_text(json.dumps(header))


def _rows(table: str, edit: Callable[[list[dict]], list]) -> Callable[[Path], None]:
    """A case that edits the rows of one table of the first cell."""
    def apply(root: Path) -> None:
        path = _cell(root) / f"{table}.jsonl.gz"
        rows = edit(_read(path))
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in rows)
        _write(path, gzip.compress(text.encode(), mtime=0), len(rows))
    return apply


def _set(table: str, column: str, value, row: int = 0) -> Callable[[Path], None]:
    def edit(rows):
        rows[row][column] = value
        return rows
    return _rows(table, edit)


def _header(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = _cell(root) / "cell.json"
        header = json.loads(path.read_text())
        result = edit(header)
        path.write_text(json.dumps(header if result is None else result))
    return apply


def _raw_header(text: str) -> Callable[[Path], None]:
    return lambda root: (_cell(root) / "cell.json").write_text(text)


def _raw_table(data: bytes, rows: int = 6) -> Callable[[Path], None]:
    return lambda root: _write(_cell(root) / "episodes.jsonl.gz", data, rows)


def _all(table: str, column: str, value) -> Callable[[Path], None]:
    def edit(rows):
        for row in rows:
            row[column] = value
        return rows
    return _rows(table, edit)


def _relabel_everywhere(label: str) -> Callable[[Path], None]:
    """A forger's full job: every episode row, the plan and cell.json say the new label."""
    def apply(root: Path) -> None:
        _all("episodes", "label", label)(root)
        _header(lambda h: h.update(label=label) or h["planned_cells"][0].update(label=label))(root)
    return apply


def _first_label(root: Path) -> str:
    return json.loads((_cell(root) / "cell.json").read_text())["label"]


def _as_other_method_tuned(root: Path) -> None:
    """Relabel the first cell (whichever method its hash sorts first) as the other method, tuned."""
    other = "radial" if _first_label(root) == "xcorr" else "xcorr"
    _relabel_everywhere(f"{other} · tuned (3 trials)")(root)


def _own_params_changed(root: Path) -> None:
    """Valid parameters of the first cell's own method, but not those its params_hash was made of."""
    params = {"xcorr": {"angular_step": 5}, "radial": {"bins": 7}}[_first_label(root)]
    _all("episodes", "params", json.dumps(params))(root)


def _symlink_cell(root: Path) -> None:
    cell = _cell(root)
    outside = root.parent / f"outside-{cell.name}"
    shutil.move(str(cell), outside)
    cell.symlink_to(outside)


def _symlink_file(root: Path) -> None:
    path = _cell(root) / "episodes.jsonl.gz"
    target = root.parent / "elsewhere.jsonl.gz"
    shutil.move(str(path), target)
    path.symlink_to(target)


def _folder_for_file(root: Path) -> None:
    path = _cell(root) / "episodes.jsonl.gz"
    path.unlink()
    path.mkdir()


def _marker(text: str) -> Callable[[Path], None]:
    return lambda root: (root / "fsc-results-archive.json").write_text(text)


def _bomb(root: Path) -> None:
    """300 MB of spaces in a 300 kB gzip, declared as 6 rows."""
    compressor = gzip.GzipFile(fileobj=(buffer := __import__("io").BytesIO()), mode="wb", mtime=0)
    chunk = b" " * (1 << 20)
    for _ in range(300):
        compressor.write(chunk)
    compressor.close()
    _write(_cell(root) / "episodes.jsonl.gz", buffer.getvalue(), 6)


def _episode_value_cases() -> list:
    bad = {
        "accuracy": [1e300, -50, 1.5, "0.5", [1], True, None],
        "dice": [2.0, -0.1, "x"],
        "predict_seconds": [-1.0, "fast", None],
        "fit_seconds": [-5.0],
        "n_way": [0, 1, 2.5, "2", True, 2**70],
        "k_shot": [0, -1, None],
        "q_query": [0],
        "seed": [-1, 1.0],
        "episode": [-1, 10**6, "0"],
        "train_seed": [-3],
        "snr": ["abc", "1 ", "-1", 1.0],
        "label": ["two\nlines", "x" * 30000, 5, None],
        "method": [None, 7],
        "params": ["not json", "[1, 2]", "{"],
        "params_hash": ["NOT-HEX!", "ab"],
        "dataset_hash": ["zz" * 16, ""],
        "cell": ["0" * 20, "short"],
        "checkpoint": ["../../etc/passwd"],
        "created": [12345],
        "device": [None],
        "val_accuracy": [3.0],
        "fit_episodes": [-10],
    }
    cases = []
    for column, values in bad.items():
        for value in values:
            shown = json.dumps(value)[:24]
            cases.append((f"episode-{column}-{shown}", _set("episodes", column, value), "archive"))
            cases.append((f"last-episode-{column}-{shown}", _set("episodes", column, value, row=-1), "archive"))
    return cases


CASES = [
    *_episode_value_cases(),
    ("episode-extra-column", _set("episodes", "comment", "hi"), "unknown column(s) comment"),
    ("episode-missing-column", _rows("episodes", lambda rows: [{k: v for k, v in r.items() if k != "accuracy"}
                                                             for r in rows]), "missing column(s) accuracy"),
    ("episode-not-an-object", _rows("episodes", lambda rows: [[1, 2]] + rows[1:]), "not an object"),
    ("episode-a-number", _rows("episodes", lambda rows: [5] + rows[1:]), "not an object"),
    ("episode-duplicated", _rows("episodes", lambda rows: rows[:-1] + rows[:1]), "holds an episode twice"),
    ("episode-dropped", _rows("episodes", lambda rows: rows[:-1]), "not this complete cell's plan"),
    ("episode-added", _rows("episodes", lambda rows: rows + [dict(rows[0], episode=len(rows))]),
     "not this complete cell's plan"),
    ("episode-nan-token", _rows("episodes", lambda rows: [json.dumps(rows[0]).replace('"accuracy": ', '"accuracy": NaN, "x": ')]
                                + rows[1:]), "is not JSON"),
    ("episode-infinity-token", _rows("episodes", lambda rows: [json.dumps(rows[0]).replace(
        '"accuracy": ' + json.dumps(rows[0]["accuracy"]), '"accuracy": Infinity')] + rows[1:]), "is not JSON"),
    ("episode-not-json", _rows("episodes", lambda rows: ["{not json"] + rows[1:]), "line 1 is not JSON"),
    ("episodes-empty", _rows("episodes", lambda rows: []), "holds no episodes"),
    ("episode-another-data-set", _set("episodes", "dataset_hash", "ab" * 16, row=2), "not of this cell and model"),
    ("episode-another-model", _set("episodes", "checkpoint", "cd" * 10, row=3), "not of this cell and model"),
    ("episodes-all-another-data-set", _all("episodes", "dataset_hash", "ab" * 16), "hashes to another key"),
    ("fake-label", _relabel_everywhere("xcorr (FAKE)"), "is not the one it gives these parameters"),
    ("fake-tuned-label", _as_other_method_tuned, "is not the one it gives"),
    ("fake-params-hash", _own_params_changed, "is not that of its parameters"),
    ("method-not-installed", _all("episodes", "method", "nonesuch"), "hashes to another key"),
    ("query-dice-out-of-range", lambda root: _write(_cell(root) / "query_dice.jsonl.gz", gzip.compress(json.dumps(
        {"cell": _cell(root).name, "episode": 0, "query": 0, "class": "syn000", "dice": 2.0, "dice_crf": None}).encode()
        + b"\n", mtime=0), 1), "outside [0, 1]"),
    ("query-beyond-episode", _set("query_predictions", "query", 999), "not a query of this cell's episodes"),
    ("query-of-missing-episode", _set("query_predictions", "episode", 77), "not a query of this cell's episodes"),
    ("query-repeated", _rows("query_predictions", lambda rows: rows + rows[:1]), "or repeats one"),
    ("query-class-a-number", _set("query_predictions", "truth", 5), "is not text"),
    ("query-confidence-negative", _set("query_predictions", "confidence", -0.5), "outside [0, 1]"),
    ("query-of-another-cell", _set("query_predictions", "cell", "f" * 20), "not a query of this cell"),
    ("plan-more-episodes", _header(lambda h: h["planned_cells"][0].update(episodes=600)), "not this complete cell's plan"),
    ("plan-other-label", _header(lambda h: h["planned_cells"][0].update(label="other")), "not this complete cell's plan"),
    ("plan-two-rows", _header(lambda h: h["planned_cells"].append(dict(h["planned_cells"][0], cell="e" * 20))),
     "not this complete cell's plan"),
    ("plan-of-a-method-never-run", _header(lambda h: h["planned_cells"].__setitem__(0, dict(
        h["planned_cells"][0], cell="e" * 20, label="siamese"))), "not this complete cell's plan"),
    ("plan-missing", _header(lambda h: h.update(planned_cells=[])), "not this complete cell's plan"),
    ("plan-not-a-list", _header(lambda h: h.update(planned_cells={"cell": 1})), "must be a list"),
    ("plan-bad-episodes", _header(lambda h: h["planned_cells"][0].update(episodes=-1)), "out of range"),
    ("fake-mask-snr-negative", _header(lambda h: h.update(snr_levels=[{"dataset_hash": "ab" * 16, "snr": "1",
                                                                        "mask_snr": -3.0}])), "not a positive SNR"),
    ("fake-mask-snr-other-level", _header(lambda h: h.update(snr_levels=[{"dataset_hash": "ab" * 16, "snr": "1",
                                                                           "mask_snr": 3.0}])), "not this cell's level"),
    ("two-snr-levels", _header(lambda h: h.update(snr_levels=h["snr_levels"] * 2)), "not this cell's level"),
    ("header-label-differs", _header(lambda h: h.update(label="something else")), "cell.json says label"),
    ("header-other-cell", _header(lambda h: h.update(cell="a" * 20)), "not the description of cell"),
    ("header-other-format", _header(lambda h: h.update(format="zip")), "not the description of cell"),
    ("header-files-not-a-dict", _header(lambda h: h.update(files=[])), "its 'files' must map"),
    ("header-rows-text", _header(lambda h: h["files"]["episodes.jsonl.gz"].update(rows="six")), "its 'files' must map"),
    ("header-rows-negative", _header(lambda h: h["files"]["episodes.jsonl.gz"].update(rows=-1)), "its 'files' must map"),
    ("header-rows-huge", _header(lambda h: h["files"]["episodes.jsonl.gz"].update(rows=10**9)), "its 'files' must map"),
    ("header-extra-file", _header(lambda h: h["files"].update({"../../x.jsonl.gz": {"rows": 1, "sha256": "0"}})),
     "its 'files' must map"),
    ("header-wrong-count", _header(lambda h: h["files"]["episodes.jsonl.gz"].update(rows=5)), "rows, cell.json says 5"),
    ("header-wrong-sha", _header(lambda h: h["files"]["episodes.jsonl.gz"].update(sha256="0" * 64)),
     "changed since it was written"),
    ("header-not-json", _raw_header("{"), "unreadable"),
    ("header-a-list", _raw_header("[]"), "not the description of cell"),
    ("header-nan", _raw_header('{"format": NaN}'), "unreadable"),
    ("header-not-utf8", lambda root: (_cell(root) / "cell.json").write_bytes(b"\xff\xfe{"), "unreadable"),
    ("header-huge", _raw_header(" " * (2 << 20)), "more than the"),
    ("header-missing", lambda root: (_cell(root) / "cell.json").unlink(), "cell.json: unreadable"),
    ("table-not-gzip", _raw_table(b"plain text"), "not gzip data"),
    ("table-truncated-gzip", lambda root: _write(_cell(root) / "episodes.jsonl.gz",
                                                 (_cell(root) / "episodes.jsonl.gz").read_bytes()[:-12], 6),
     "truncated or followed by other bytes"),
    ("table-trailing-bytes", lambda root: _write(_cell(root) / "episodes.jsonl.gz",
                                                 (_cell(root) / "episodes.jsonl.gz").read_bytes() + b"junk", 6),
     "truncated or followed by other bytes"),
    ("table-not-utf8", _raw_table(gzip.compress(b"\xff\xfe\xfd\n", mtime=0), 1), "not UTF-8 text"),
    ("table-gzip-bomb", _bomb, "inflates to more than"),
    ("table-missing", lambda root: (_cell(root) / "episodes.jsonl.gz").unlink(), "missing"),
    ("table-a-folder", _folder_for_file, "is not a plain file"),
    ("table-a-link", _symlink_file, "is a link"),
    ("cell-a-link-out-of-the-archive", _symlink_cell, "is a link or not a folder"),
    ("marker-not-json", _marker("{"), "unreadable"),
    ("marker-a-list", _marker("[]"), "not a version-1 fsc-results-archive"),
    ("marker-other-version", _marker('{"format": "fsc-results-archive", "version": 99}'), "version 99"),
]


def _load(root: Path, store: Path):
    with ResultsStore(store) as results:
        return ResultsArchive(root).load_into(results, check_row_method)


@pytest.mark.parametrize("case, craft, text", CASES, ids=[c[0] for c in CASES])
def test_a_crafted_archive_is_refused_whole(case, craft, text, archive, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(archive, root, symlinks=True)
    craft(root)
    store = tmp_path / "s.sqlite"
    tracemalloc.start()
    try:
        with pytest.raises(FscError) as refused:
            _load(root, store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(refused.value)
    assert "\n" not in message and "Traceback" not in message
    assert text in message, message
    assert str(root) in message, message  # names the archive's file or folder
    assert peak < MEMORY_LIMIT, f"{case}: {peak / 2**20:.0f} MiB"
    with ResultsStore(store) as results:  # nothing of the archive entered the store
        assert results.frame().empty and results.progress_frame().empty


def test_the_untouched_archive_loads(archive, tmp_path):
    """The table's starting point is sound: unchanged, the archive loads whole."""
    report = _load(archive, tmp_path / "s.sqlite")
    assert len(report.added) == 2 and not report.already


def test_a_staging_folder_left_by_a_killed_process_is_passed_over(archive, tmp_path):
    """kill -9 between writing cell.json and the rename leaves ``.{key}.{uuid}.tmp/``: later runs
    load the archive as if it were not there (it is ours, but another process may be writing it)."""
    root = tmp_path / "archive"
    shutil.copytree(archive, root)
    cell = _cell(root)
    shutil.copytree(cell, root / f".{cell.name}.0123abcd.tmp")
    assert ResultsArchive(root).cells() == sorted(p.name for p in root.iterdir() if p.is_dir()
                                                  and not p.name.startswith("."))
    assert len(_load(root, tmp_path / "s.sqlite").added) == 2


def test_a_level_whose_mask_snr_differs_from_the_store_is_refused(archive, tmp_path):
    store = tmp_path / "s.sqlite"
    header = json.loads((_cell(archive) / "cell.json").read_text())
    level = header["snr_levels"][0] if header["snr_levels"] else None
    if level is None:
        pytest.skip("this archive's level has no in-mask SNR")
    with ResultsStore(store) as results:
        results.record_snr_level(level["dataset_hash"], level["snr"], level["mask_snr"] * 2)
    with pytest.raises(FscError, match="in-mask SNR"):
        _load(archive, store)


def test_a_dangling_archive_link_is_refused_before_any_work(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "gone")
    with pytest.raises(FscError, match="which does not exist"):
        ResultsArchive(tmp_path / "a")


def test_the_store_refuses_rows_outside_its_schema_from_any_caller(archive, tmp_path):
    row = dict(_read(_cell(archive) / "episodes.jsonl.gz")[0], accuracy=float("inf"))
    with ResultsStore(tmp_path / "s.sqlite") as results:
        with pytest.raises(FscError, match="episodes row 1, column accuracy: inf is not finite"):
            results.add_cell_rows({"episodes": [row]})
        assert results.frame().empty
