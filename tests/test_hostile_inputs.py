"""Hostile and careless input, as a table: every case runs a real ``fsc`` command against a folder
of real files (a trained model, exported MRC subtomograms, data sets, stores) and must

* exit with the expected status and print a one-line error holding the expected text,
* print no traceback (and never the secret it was given),
* change no file that existed before, and leave no partial output behind,
* create no file at all, and no path that holds the secret,
* allocate under 1 GiB (``tracemalloc``: Python and NumPy allocations) before it is refused.

Cases that need a real process (SIGTERM, two concurrent benches) follow the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from click.testing import CliRunner

from fewshot_cryoet.cli import main
from fewshot_cryoet.datasets.mrc_io import write_volume
from fewshot_cryoet.models.checkpoints import file_hash

PROTONET = ["--param", "protonet.channels=[4,4]"]
#: Peak of Python and NumPy allocations (tracemalloc) a refused input may cost.
MEMORY_LIMIT = 1 << 30
SECRET = "secretpw"


class RunsCode:
    """Pickles to ``os.system('touch PWNED')``: what a malicious checkpoint carries."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _fsc(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _copy_dataset(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    edit(target)
    return target


def _edit_manifest(change):
    def edit(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return edit


def _truncate(relative: str):
    def edit(folder: Path) -> None:
        path = folder / relative
        path.write_bytes(path.read_bytes()[:-4096])
    return edit


def _damage_mask(folder: Path) -> None:
    masks = np.load(folder / "masks.npy", mmap_mode="r+")
    masks[1, 2, 3, 4] = 7
    masks.flush()


def _drop_label_rows(folder: Path) -> None:
    labels = pd.read_csv(folder / "labels.csv")
    labels.iloc[:-3].to_csv(folder / "labels.csv", index=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("labels_blake2b", None)  # as a data set from before labels were hashed
    manifest.pop("files_hash", None)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _mrc(path: Path, data: np.ndarray, voxel=(20.0, 20.0, 20.0)) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel


def _round_two(w: Path, tiny_dataset) -> None:
    """Inputs of the second hostile-input round (archive cases are in test_hostile_archive.py)."""
    from fewshot_cryoet import api
    from fewshot_cryoet.models.training_state import MARKER

    good = np.asarray(tiny_dataset.volumes(1)[0], np.float32)
    for name, voxel in (("voxel-tiny", 1e-6), ("voxel-huge", 1e6)):  # class folders whose headers lie
        for c in ("a", "b", "c"):
            (w / name / c).mkdir(parents=True)
            for i in range(2):
                _mrc(w / name / c / f"{i}.mrc", good, (voxel,) * 3)
    _mrc(w / "complex.mrc", (good + 1j * good).astype(np.complex64))
    _mrc(w / "anisotropic.mrc", good, (20.0, 20.0, 40.0))
    write_volume(w / "extended.mrc", good, 20.0)
    raw = bytearray((w / "extended.mrc").read_bytes())
    raw[92:96] = np.array([2**31 - 1], "<i4").tobytes()  # NSYMBT: a 2 GiB extended header
    (w / "extended.mrc").write_bytes(bytes(raw))
    for c in ("a", "b", "c"):
        for name in ("complex", "anisotropic", "extended"):
            (w / f"{name}-folder" / c).mkdir(parents=True)
            shutil.copy(w / f"{name}.mrc", w / f"{name}-folder" / c / "0.mrc")
            shutil.copy(w / f"{name}.mrc", w / f"{name}-folder" / c / "1.mrc")
    card = json.loads((w / "model" / "model.json").read_text())
    for name, edit in {"card-method-number": {"method": 5}, "card-format-text": {"format": "x"},
                       "card-voxel-zero": {"voxel_size": 0}, "card-temperature-negative": {"fit": {"temperature": -1}},
                       "card-a-list": None}.items():
        shutil.copytree(w / "model", w / name)
        (w / name / "model.json").write_text("[]" if edit is None else json.dumps({**card, **edit}))
    shutil.copytree(w / "model", w / "card-voxel-nan")
    (w / "card-voxel-nan" / "model.json").write_text(json.dumps(card).replace(
        f'"voxel_size": {json.dumps(card["voxel_size"])}', '"voxel_size": NaN'))
    torch.save({"marker": MARKER, "format": "x"}, w / "state-model.training.pt")
    shutil.copytree(tiny_dataset.path, w / "manifest-list")
    (w / "manifest-list" / "manifest.json").write_text("[]")
    paths = [str(w / "particles" / p) for p in sorted(os.listdir(w / "particles" / "subtomograms"))[:6]]
    paths = [str(w / "particles" / "subtomograms" / p) for p in sorted(os.listdir(w / "particles" / "subtomograms"))[:6]]
    for name, classes in {"class-empty": ["a", "a", "b", "", "c", "c"], "class-escapes": ["a", "a", "b", "b", "../../x",
                                                                                          "../../x"]}.items():
        pd.DataFrame({"path": paths, "class": classes}).to_csv(w / f"{name}.csv", index=False)
    pd.DataFrame({"path": paths, "class": [1, 1, 2, 2, 3, 3]}).to_csv(w / "numbered.csv", index=False)
    (w / "map-empty.csv").write_text("value,name\n1,a\n,b\n3,c\n")
    (w / "map-twice.csv").write_text("value,name\n1,a\n2,b\n3,c\n1,d\n")
    (w / "user-boards").mkdir()
    (w / "user-boards" / "leaderboard.md").write_text("my own notes")
    api.bench(["xcorr"], dataset=tiny_dataset, snrs=[1.0], ways=[2], episodes=2, store=w / "results.sqlite")


@pytest.fixture(scope="module")
def world(tiny_dataset, tmp_path_factory):
    """Real inputs of every kind, made once: a model, exported subtomograms, support and query
    tables, damaged data sets, a user's own folder, a foreign SQLite file."""
    w = tmp_path_factory.mktemp("world")
    data = tiny_dataset.path
    assert _fsc("export", data, "--out", w / "particles", "--snr", 1).exit_code == 0
    trained = _fsc("train", "--method", "protonet", *PROTONET, "--dataset", data, "--snr", 1, "--budget", "2ep",
                   "--out", w / "model")
    assert trained.exit_code == 0, trained.output
    table = starfile.read(w / "particles" / "particles.star")
    table["rlnImageName"] = [str(w / "particles" / p) for p in table["rlnImageName"]]
    test = table[table["fscClass"].isin(tiny_dataset.splits["test"])].reset_index(drop=True)
    first = test.groupby("fscClass").head(1)
    pd.DataFrame({"path": first["rlnImageName"], "class": first["fscClass"]}).to_csv(w / "support.csv", index=False)
    test.drop(index=first.index).head(6).to_csv(w / "queries.csv", index=False)
    doubled = pd.DataFrame({"path": [first["rlnImageName"].iloc[0]] * 2 + list(first["rlnImageName"].iloc[1:]),
                            "class": [first["fscClass"].iloc[0], first["fscClass"].iloc[1]] + list(first["fscClass"].iloc[1:])})
    doubled.to_csv(w / "support-duplicate.csv", index=False)

    # A model folder whose weights run a command when unpickled.
    shutil.copytree(w / "model", w / "poisoned")
    payload = torch.load(w / "model" / "weights.pt", weights_only=True)
    payload["x"] = RunsCode()
    torch.save(payload, w / "poisoned" / "weights.pt")
    torch.save(payload, w / "poisoned.pt")

    predicted = _fsc("predict", "--model", w / "model", "--support", w / "support.csv", "--queries", w / "queries.csv",
                     "--out", w / "predictions")
    assert predicted.exit_code == 0, predicted.output
    legacy = w / "legacy-export" / "subtomograms"  # an export from before markers, with a user's file inside
    legacy.mkdir(parents=True)
    (w / "legacy-export" / "particles.star").write_text("data_particles\n")
    write_volume(legacy / "000000_a.mrc", np.ones((4, 4, 4), np.float32), 20.0)
    (legacy / "notes.txt").write_text("mine")
    (w / "victim").mkdir()
    (w / "victim" / "thesis.txt").write_text("four years of work")
    (w / "cwd" / "deeper").mkdir(parents=True)
    (w / "home" / "projects").mkdir(parents=True)
    (w / "home" / "projects" / "notes.txt").write_text("a user's home")
    (w / "plain.txt").write_text("not a folder")
    with sqlite3.connect(w / "foreign.sqlite") as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    (w / "store-folder").mkdir()

    _round_two(w, tiny_dataset)

    # Damaged data sets, each a copy of the tiny one.
    damaged = {
        "test-split-edited": _edit_manifest(lambda m: m["splits"].update(test=m["splits"]["train"])),
        "seed-edited": _edit_manifest(lambda m: m.update(seed=99)),
        "truncated-volumes": _truncate("volumes/snr_1.npy"),
        "damaged-masks": _damage_mask,
        "missing-label-rows": _drop_label_rows,
        "manifest-missing-keys": _edit_manifest(lambda m: m.pop("splits")),
    }
    for name, edit in damaged.items():
        _copy_dataset(data, w / name, edit)

    # Query files that must be refused or skipped.
    good = np.asarray(tiny_dataset.volumes(1)[0])
    write_volume(w / "crafted.mrc", good, 20.0)
    raw = bytearray((w / "crafted.mrc").read_bytes())
    raw[0:12] = np.array([900, 900, 900], "<i4").tobytes()
    (w / "crafted.mrc").write_bytes(bytes(raw))
    with mrcfile.new(w / "stack.mrcs") as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=(5, 16, 16)).astype(np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = 20.0
    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["1@stack.mrcs", "2@stack.mrcs"]})},
                   w / "stack-rows.star", overwrite=True)
    (w / "loop.mrc").symlink_to(w / "loop.mrc")
    return w


# case id, command (``{w}`` is the world folder), exit status, text the error must hold
CASES = [
    ("pickle-predict", ["predict", "--model", "{w}/poisoned", "--support", "{w}/support.csv", "--queries",
                        "{w}/queries.csv", "--out", "{w}/o"], 2, "refused: loading it would run code"),
    ("pickle-show", ["show", "{data}", "--model", "{w}/poisoned.pt", "--out", "{w}/o.png"], 2,
     "refused: loading it would run code"),
    ("overwrite-foreign-folder", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                                  "{w}/queries.csv", "--out", "{w}/victim", "--overwrite"], 2,
     "not empty and is not a predictions folder"),
    ("overwrite-model-with-train", ["train", "--method", "protonet", *PROTONET, "--dataset", "{data}", "--snr", "1",
                                    "--budget", "2ep", "--out", "{w}/victim", "--overwrite"], 2,
     "not empty and is not a model folder"),
    ("overwrite-parent", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                          "{w}/queries.csv", "--out", "..", "--overwrite"], 2, "working directory or one of its parents"),
    ("overwrite-cwd", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                       "{w}/queries.csv", "--out", ".", "--overwrite"], 2, "working directory or one of its parents"),
    ("overwrite-root", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                        "{w}/queries.csv", "--out", "/", "--overwrite"], 2, "file-system root"),
    ("overwrite-home", ["export", "{data}", "--out", "~", "--overwrite"], 2, "home folder"),
    ("overwrite-other-kind", ["train", "--method", "protonet", *PROTONET, "--dataset", "{data}", "--snr", "1",
                              "--budget", "2ep", "--out", "{w}/predictions", "--overwrite"], 2,
     "not empty and is not a model folder"),
    ("overwrite-legacy-with-user-file", ["export", "{data}", "--out", "{w}/legacy-export", "--overwrite"], 2,
     "holds 'subtomograms/notes.txt', which fsc did not write"),
    ("out-is-a-file", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                       "{w}/queries.csv", "--out", "{w}/plain.txt"], 2, "exists and is not a folder"),
    ("out-unwritable", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                        "{w}/queries.csv", "--out", "/proc/fsc-out"], 2, "cannot write into /proc"),
    ("train-out-unwritable", ["train", "--method", "protonet", *PROTONET, "--dataset", "{data}", "--snr", "1",
                              "--budget", "2ep", "--out", "/proc/fsc-model"], 2, "cannot write into /proc"),
    ("simulate-out-root", ["simulate", "--classes", "2", "--per-class", "1", "--out", "/"], 2, "file-system root"),
    ("secret-in-query", ["tune", "--method", "protonet", "--storage",
                         f"postgresql://u@127.0.0.1:1/db?password={SECRET}"], 2, "cannot open tuning storage"),
    ("secret-without-scheme", ["tune", "--method", "protonet", "--storage", f"u:{SECRET}@127.0.0.1"], 2,
     "not a database URL"),
    ("secret-libpq", ["tune", "--method", "protonet", "--storage", f"host=127.0.0.1 port=1 password={SECRET}"], 2,
     "not a database URL"),
    ("edited-test-split", ["bench", "--dataset", "{w}/test-split-edited", "--methods", "xcorr", "--snr", "1",
                           "--ways", "2", "--episodes", "2"], 2, "manifest.json was edited"),
    ("edited-seed", ["bench", "--dataset", "{w}/seed-edited", "--methods", "xcorr", "--snr", "1", "--ways", "2",
                     "--episodes", "2"], 2, "manifest.json was edited"),
    ("truncated-npy", ["bench", "--dataset", "{w}/truncated-volumes", "--methods", "xcorr", "--snr", "1",
                       "--ways", "2", "--episodes", "2"], 2, "truncated or damaged"),
    ("damaged-masks", ["bench", "--dataset", "{w}/damaged-masks", "--methods", "xcorr", "--snr", "1", "--ways", "2",
                       "--episodes", "2"], 2, "values other than 0 and 1"),
    ("missing-label-rows", ["bench", "--dataset", "{w}/missing-label-rows", "--methods", "xcorr", "--snr", "1",
                            "--ways", "2", "--episodes", "2"], 2, "rows are missing"),
    ("manifest-missing-keys", ["info", "{w}/manifest-missing-keys"], 2, "damaged manifest, missing splits"),
    ("manifest-missing-keys-verify", ["info", "{w}/manifest-missing-keys", "--verify"], 2, "missing splits"),
    ("store-is-foreign-sqlite", ["bench", "--dataset", "{data}", "--methods", "xcorr", "--snr", "1", "--ways", "2",
                                 "--episodes", "2", "--store", "{w}/foreign.sqlite"], 2,
     "not a fewshot-cryoet results store"),
    ("store-is-a-folder", ["bench", "--dataset", "{data}", "--methods", "xcorr", "--snr", "1", "--ways", "2",
                           "--episodes", "2", "--store", "{w}/store-folder"], 2, "is a folder"),
    ("store-unwritable", ["bench", "--dataset", "{data}", "--methods", "protonet", *PROTONET, "--snr", "1",
                          "--ways", "2", "--episodes", "2", "--store", "/proc/fsc.sqlite"], 2, "cannot write into /proc"),
    ("param-not-a-number", ["bench", "--methods", "protonet", "--param", "protonet.lr=abc"], 2, "lr='abc' is not valid"),
    ("param-negative-lr", ["bench", "--methods", "protonet", "--param", "protonet.lr=-1"], 2, "lr=-1.0 is not valid"),
    ("param-val-every-0", ["bench", "--methods", "protonet", "--param", "protonet.val_every=0"], 2, "val_every=0"),
    ("param-train-way-0", ["bench", "--methods", "protonet", "--param", "protonet.train_way=0"], 2, "train_way=0"),
    ("param-optimizer", ["bench", "--methods", "protonet", "--param", "protonet.optimizer=nonsense"], 2,
     "optimizer='nonsense' is not valid"),
    ("param-channels", ["bench", "--methods", "protonet", "--param", "protonet.channels=abc"], 2,
     "channels='abc' is not valid"),
    ("seed-negative", ["bench", "--methods", "xcorr", "--seed", "-1"], 2, "--seed"),
    ("budget-zero-minutes", ["bench", "--methods", "protonet", "--budget", "0m"], 2, "zero budget"),
    ("budget-zero-episodes", ["train", "--method", "protonet", "--budget", "0ep", "--out", "{w}/m0"], 2, "zero budget"),
    ("crafted-mrc-header", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                            "{w}/crafted.mrc", "--out", "{w}/o", "--on-error", "stop"], 2, "header says 900×900×900"),
    ("image-stack-file", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                          "{w}/stack.mrcs", "--out", "{w}/o", "--on-error", "stop"], 2, "stack of 2D images"),
    ("image-stack-rows", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                          "{w}/stack-rows.star", "--out", "{w}/o"], 2, "names image 1 of the stack stack.mrcs"),
    ("duplicate-support", ["predict", "--model", "{w}/model", "--support", "{w}/support-duplicate.csv", "--queries",
                           "{w}/queries.csv", "--out", "{w}/o"], 2, "is listed in classes"),
    ("markup-in-path", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                        "{w}/tomo[raw].mrc", "--queries", "{w}/a[/y].mrc", "--out", "{w}/o"], 2,
     "tomo[raw].mrc (not found), {w}/a[/y].mrc (not found)"),
    ("symlink-loop", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                      "{w}/loop.mrc", "--out", "{w}/o"], 2, "loop.mrc (a loop of symbolic links)"),
    ("per-class-with-a-folder", ["bench", "--dataset", "{data}", "--methods", "xcorr", "--snr", "1", "--per-class", "5"],
     2, "--per-class applies only to data simulated on demand"),
    ("test-classes-with-a-folder", ["bench", "--dataset", "{data}", "--methods", "xcorr", "--snr", "1",
                                    "--test-classes", "syn000"], 2, "--test-classes applies only to templates"),
    ("param-for-another-method", ["predict", "--method", "xcorr", "--param", "protonet.lr=0.1", "--support",
                                  "{w}/support.csv", "--queries", "{w}/queries.csv", "--out", "{w}/o"], 2,
     "--param for protonet, which this command does not run"),
    ("timeout-not-a-time", ["tune", "run", "--method", "protonet", "--timeout", "2x"], 2, "--timeout '2x': give a time"),
    # Round two (issue 32): secrets, user files, option bounds, headers that lie, crafted model folders.
    ("secret-redis-no-user", ["tune", "--method", "protonet", "--storage", f"redis://:{SECRET}@127.0.0.1/0"], 2,
     "redis://:***@127.0.0.1"),
    ("secret-libpq-as-store", ["bench", "--methods", "xcorr", "--store", f"host=127.0.0.1 password={SECRET}"], 2,
     "looks like libpq key=value settings"),
    ("leaderboard-into-user-folder", ["leaderboard", "--store", "{w}/results.sqlite", "--out", "{w}/user-boards"], 2,
     "holds no leaderboard written by fsc"),
    ("leaderboard-into-victim", ["leaderboard", "--store", "{w}/results.sqlite", "--out", "{w}/victim"], 2,
     "holds no leaderboard written by fsc"),
    ("leaderboard-out-a-file", ["leaderboard", "--store", "{w}/results.sqlite", "--out", "{w}/plain.txt"], 2,
     "exists and is not a folder"),
    ("show-over-user-file", ["show", "{data}", "--out", "{w}/plain.txt"], 2, "exists; pass --overwrite"),
    ("show-over-folder", ["show", "{data}", "--out", "{w}/victim", "--overwrite"], 2, "exists and is not a plain file"),
    *[(f"simulate-{'-'.join(args).strip('-')}", ["simulate", *args, "--out", "{w}/sim"], 2, text) for args, text in [
        (["--box", "100000"], "--box must be an even number from 8 to 256"),
        (["--box", "7"], "--box must be an even number"),
        (["--voxel-size", "inf"], "--voxel-size must be 0.1–1000 Å"),
        (["--voxel-size", "nan"], "--voxel-size must be 0.1–1000 Å"),
        (["--voxel-size", "1e-9"], "--voxel-size must be 0.1–1000 Å"),
        (["--per-class", "100000000"], "a data set holds 1 to 5,000,000"),
        (["--max-shift", "1e9"], "--max-shift must be 0 to half the box"),
        (["--max-shift", "nan"], "--max-shift must be 0 to half the box"),
        (["--classes", "100000"], "--classes must be 1 to 10,000"),
        (["--split", "nan,0.5,0.5"], "three numbers in [0, 1] summing to 1"),
        (["--split", "1,0,0"], "needs training and test classes"),
        (["--split", "2,-1,0"], "three numbers in [0, 1] summing to 1"),
        (["--resolution", "0"], "--resolution must be a positive number"),
        (["--resolution", "-1"], "--resolution must be a positive number"),
        (["--snr", "1", "--snr", "1"], "--snr 1 given twice"),
        (["--snr", "inf", "--snr", "inf"], "--snr inf given twice"),
    ]],
    ("import-voxel-1e-6", ["import", "{w}/voxel-tiny", "--out", "{w}/imported"], 2, "header voxel size is 1e-06 Å"),
    ("import-voxel-1e6", ["import", "{w}/voxel-huge", "--out", "{w}/imported"], 2, "header voxel size is 1e+06 Å"),
    ("import-dev-zero", ["import", "/dev/zero", "--out", "{w}/imported"], 2, "is not a regular file or folder"),
    ("predict-dev-zero", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries", "/dev/zero",
                          "--out", "{w}/o", "--on-error", "stop"], 2, "not a regular file"),
    ("import-complex", ["import", "{w}/complex-folder", "--out", "{w}/imported"], 2, "holds complex numbers"),
    ("import-anisotropic", ["import", "{w}/anisotropic-folder", "--out", "{w}/imported"], 2, "voxels are not cubes"),
    ("import-extended-header", ["import", "{w}/extended-folder", "--out", "{w}/imported"], 2,
     "extended header of 2,147,483,647 bytes"),
    ("predict-extended-header", ["predict", "--model", "{w}/model", "--support", "{w}/support.csv", "--queries",
                                 "{w}/extended.mrc", "--out", "{w}/o", "--on-error", "stop"], 2, "extended header"),
    *[(f"predict-{name}", ["predict", "--model", "{w}/" + name, "--support", "{w}/support.csv", "--queries",
                           "{w}/queries.csv", "--out", "{w}/o"], 2, text) for name, text in [
        ("card-method-number", "invalid method=5"), ("card-format-text", 'invalid format="x"'),
        ("card-voxel-zero", "invalid voxel_size=0"), ("card-voxel-nan", "NaN is not a JSON value"),
        ("card-temperature-negative", "invalid fit="), ("card-a-list", "unreadable model description"),
    ]],
    ("training-state-format-text", ["train", "--method", "protonet", *PROTONET, "--dataset", "{data}", "--snr", "1",
                                    "--budget", "2ep", "--out", "{w}/state-model"], 2, "not a version number"),
    ("manifest-a-list", ["info", "{w}/manifest-list"], 2, "not a complete fewshot-cryoet data set"),
    ("class-cell-empty", ["import", "{w}/class-empty.csv", "--out", "{w}/imported"], 2, "particle 4: has no class"),
    ("class-escapes-folder", ["import", "{w}/class-escapes.csv", "--out", "{w}/imported"], 2, "cannot name a class"),
    ("class-map-empty-entry", ["import", "{w}/numbered.csv", "--class-map", "{w}/map-empty.csv", "--out",
                               "{w}/imported"], 2, "line 3 has an empty value or name"),
    ("class-map-value-twice", ["import", "{w}/numbered.csv", "--class-map", "{w}/map-twice.csv", "--out",
                               "{w}/imported"], 2, "value '1' is given two names"),
    ("predict-neither-model-nor-method", ["predict", "--support", "{w}/support.csv", "--queries", "{w}/queries.csv",
                                          "--out", "{w}/o"], 2, "give a model folder (from fsc train)"),
    ("predict-model-and-method", ["predict", "--model", "{w}/model", "--method", "xcorr", "--support",
                                  "{w}/support.csv", "--queries", "{w}/queries.csv", "--out", "{w}/o"], 2,
     "are alternatives: give a model folder or a training-free method, not both"),
    ("missing-model", ["predict", "--model", "{w}/nothing", "--support", "{w}/support.csv", "--queries",
                       "{w}/queries.csv", "--out", "{w}/o"], 2, "not a model folder"),
    # Round three (issue 34): mixed class sources and the third imaging route.
    ("synthetic-count-zero", ["simulate", "--templates", "synthetic:0", "--out", "{w}/d"], 2,
     "--templates entry 'synthetic:0': write synthetic:N with N from 1 to 10,000"),
    ("synthetic-twice", ["simulate", "--templates", "synthetic:3", "synthetic:4", "--out", "{w}/d"], 2,
     "synthetic:N is given twice"),
    ("direct-fourier-envelope", ["simulate", "--route", "direct-fourier", "--envelope", "0.3", "--out", "{w}/d"], 2,
     "--envelope applies to the tilt-series and fourier routes only"),
    ("direct-fourier-jitter", ["simulate", "--route", "direct-fourier", "--alignment-jitter", "1", "--out", "{w}/d"],
     2, "--alignment-jitter shifts the projections of a tilt series"),
    # Round four (issue 34): combining data set folders.
    ("combine-same-folder-twice", ["combine", "{data}", "{data}", "--out", "{w}/c"], 2,
     "are the same data set; give it once"),
    ("combine-edited-folder", ["combine", "{data}", "{w}/seed-edited", "--out", "{w}/c"], 2,
     "manifest.json was edited after the data set was written"),
    ("combine-not-a-data-set", ["combine", "{data}", "{w}/particles", "--out", "{w}/c"], 2,
     "not a complete data set (no manifest.json)"),
    ("combine-one-folder", ["combine", "{data}", "--out", "{w}/c"], 2, "combine needs at least two data set folders"),
    # Issue 31: the scoring levers.
    ("crf-workers-beyond-the-cores", ["bench", "--methods", "xcorr", "--crf-workers", "100000", "--store",
                                      "{w}/crf.sqlite"], 2, "--crf-workers 100000: this machine has"),
    ("score-batch-negative", ["bench", "--methods", "xcorr", "--score-batch", "-1", "--store", "{w}/sb.sqlite"], 2,
     "-1 is not in the range x>=0"),
]


@pytest.mark.parametrize("case, command, status, text", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_cleanly(case, command, status, text, world, tiny_dataset, monkeypatch):
    monkeypatch.chdir(world / "cwd" / "deeper")
    monkeypatch.setenv("HOME", str(world / "home"))
    argv = [part.replace("{w}", str(world)).replace("{data}", str(tiny_dataset.path)) for part in command]
    argv = [os.path.expanduser(a) if a == "~" else a for a in argv]
    before = _tree(world)
    tracemalloc.start()
    try:
        result = _fsc(*argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"{case}: {peak / 2**30:.2f} GiB traced"
    output = result.output
    assert result.exit_code == status, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    assert text.replace("{w}", str(world)) in output, output
    assert any("error" in line.lower() for line in output.splitlines()), output
    assert SECRET not in output
    after = _tree(world)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"{case} changed {changed}"
    stray = [p for p in after if ".partial-" in p or p.endswith(".tmp") or "PWNED" in p]
    assert not stray, stray
    created = sorted(set(after) - set(before))
    assert not created, f"{case} left {created}"
    assert not [p for p in world.rglob("*") if SECRET in p.name]
    assert not Path("PWNED").exists() and not (world / "PWNED").exists()
    assert not (world / "foreign.sqlite-wal").exists()


def test_bad_queries_are_skipped_and_reported_not_fatal(world, tmp_path, nan_mrc):
    """One unreadable query among good ones: the good ones are predicted, the bad one is listed
    with its reason, and the input columns that clash with output columns are kept, renamed."""
    queries = pd.read_csv(world / "queries.csv")
    nan_file = nan_mrc
    queries.loc[2, "rlnImageName"] = str(nan_file)
    queries["predicted_class"] = "from an earlier run"
    queries["confidence"] = 0.5
    table = tmp_path / "queries.csv"
    queries.to_csv(table, index=False)
    out = tmp_path / "out"
    result = _fsc("predict", "--model", world / "model", "--support", world / "support.csv", "--queries", table,
                  "--out", out)
    assert result.exit_code == 0, result.output
    assert "1 query skipped" in result.output and "nan.mrc" in result.output
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == len(queries) - 1
    assert list(predictions.columns).count("predicted_class") == 1
    assert (predictions["input_predicted_class"] == "from an earlier run").all()
    skipped = pd.read_csv(out / "skipped.csv")
    assert len(skipped) == 1 and "NaN" in skipped["reason"].iloc[0] and skipped["rlnImageName"].iloc[0] == str(nan_file)
    # A predictions folder we wrote is ours to replace; the marker lists what we wrote.
    again = _fsc("predict", "--model", world / "model", "--support", world / "support.csv", "--queries", table,
                 "--out", out, "--overwrite")
    assert again.exit_code == 0, again.output
    (out / "notes.txt").write_text("mine")
    refused = _fsc("predict", "--model", world / "model", "--support", world / "support.csv", "--queries", table,
                   "--out", out, "--overwrite")
    assert refused.exit_code == 2 and "'notes.txt', which fsc did not write" in refused.output
    assert (out / "notes.txt").read_text() == "mine"


def test_class_names_with_spaces_give_valid_star_labels(world, tmp_path):
    support = pd.read_csv(world / "support.csv")
    support["class"] = ["big ribosome", "small/odd [one]", "plain"][: len(support)]
    support.to_csv(tmp_path / "support.csv", index=False)
    out = tmp_path / "out"
    result = _fsc("predict", "--model", world / "model", "--support", tmp_path / "support.csv", "--queries",
                  world / "queries.csv", "--out", out)
    assert result.exit_code == 0, result.output
    star = starfile.read(out / "predictions.star")
    assert "fscScoreBig_ribosome" in star.columns and "fscProbabilitySmall_odd__one_" in star.columns
    assert all(" " not in c for c in star.columns)
    assert set(star["fscPredictedClass"]) <= {"big ribosome", "small/odd [one]", "plain"}
    assert "score_big ribosome" in pd.read_csv(out / "predictions.csv").columns


def test_old_checkpoints_with_numpy_values_still_load(world, tmp_path):
    """A checkpoint whose params hold NumPy scalars (as older versions could write) loads without
    unpickling arbitrary objects; the values come back as plain numbers."""
    from fewshot_cryoet.models.checkpoints import read_checkpoint

    payload = torch.load(world / "model" / "weights.pt", weights_only=True)
    payload["params"]["lr"] = np.float64(payload["params"]["lr"])
    payload["state"]["extra"] = np.arange(3, dtype=np.float32)
    torch.save(payload, tmp_path / "old.pt")
    loaded = read_checkpoint(tmp_path / "old.pt")
    assert type(loaded["params"]["lr"]) is float
    assert torch.equal(loaded["state"]["extra"], torch.arange(3, dtype=torch.float32))


def _fsc_process(*args, cwd=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "fewshot_cryoet", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, COLUMNS="200"), **kwargs)


def test_sigterm_inside_a_finaliser_is_delivered_again():
    """A SIGTERM that lands in a ``__del__`` (where Python ignores exceptions) still stops the
    command, once the finaliser has returned, instead of being lost."""
    import importlib

    cli_module = importlib.import_module("fewshot_cryoet.cli.main")  # ``cli.main`` the name is the click group
    handler, terminated = cli_module._on_sigterm, cli_module.Terminated

    class SignalledWhileFinalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs here, inside the finaliser

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(terminated):
            finalised = SignalledWhileFinalised()
            del finalised
            deadline = time.time() + 10
            while time.time() < deadline:
                time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_removes_partial_output(world, tmp_path):
    """SIGTERM is handled like Ctrl-C: the partial folder is removed, nothing else is touched."""
    queries = pd.read_csv(world / "queries.csv")
    many = pd.concat([queries] * 300, ignore_index=True)  # long enough to be stopped half-way
    many.to_csv(tmp_path / "many.csv", index=False)
    out = tmp_path / "out"
    process = _fsc_process("predict", "--model", world / "model", "--support", world / "support.csv",
                           "--queries", tmp_path / "many.csv", "--out", out, "--no-crf")
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.partial-*")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "prediction ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    said = " ".join(stderr.split())  # rich wraps long lines
    assert "finished work is kept" in said and "--resume" in said  # what is kept, and how to go on
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.csv"]


def test_two_benches_on_one_store_train_once_and_share_the_checkpoint(tiny_val2_dataset, tmp_path):
    """Two processes run the same grid on one store: exactly one trains, the other comes back for
    its checkpoint and reuses it, every episode is stored once, and every row names the checkpoint
    that scored it."""
    args = ["bench", "--dataset", tiny_val2_dataset.path, "--methods", "protonet", *PROTONET, "--snr", 1,
            "--ways", 2, "--episodes", 12, "--budget", "6s", "--store", tmp_path / "r.sqlite", "--resume"]
    first, second = _fsc_process(*args, cwd=tmp_path), _fsc_process(*args, cwd=tmp_path)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    for process, (stdout, stderr) in zip((first, second), outputs):
        assert process.returncode == 0, stdout + stderr
        assert "Traceback" not in stderr
    texts = [stdout + stderr for stdout, stderr in outputs]
    trained = [t for t in texts if "trained " in t and " episodes in " in t]
    assert len(trained) == 1, texts
    assert sum(("doing other work meanwhile" in t or "reusing the model" in t) for t in texts) == 1, texts
    checkpoints = list((tmp_path / "r.models").glob("*.pt"))
    assert len(checkpoints) == 1
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        rows = db.execute("SELECT cell, episode, checkpoint FROM episodes").fetchall()
        fits = db.execute("SELECT state, checkpoint_hash FROM fits WHERE identity NOT LIKE 'eval-%'").fetchall()
    assert len(rows) == 12 and len({(c, e) for c, e, _ in rows}) == 12
    assert {c for _, _, c in rows} == {file_hash(checkpoints[0])}
    assert fits == [("done", file_hash(checkpoints[0]))]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes whatever the permissions say; the /proc cases "
                                              "of the table cover unwritable places for root")
def test_permission_denied_is_one_line(world, tiny_dataset, tmp_path):
    """As an ordinary user: an unreadable templates or support folder, and a read-only store."""
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(world / "crafted.mrc", locked / "a.mrc")
    locked.chmod(0)
    support_folder = tmp_path / "support"  # readable, but one class folder is not
    (support_folder / "a").mkdir(parents=True)
    shutil.copy(world / "crafted.mrc", support_folder / "a" / "x.mrc")
    (support_folder / "b").mkdir()
    (support_folder / "b").chmod(0)
    store = tmp_path / "r.sqlite"
    assert _fsc("bench", "--dataset", tiny_dataset.path, "--methods", "xcorr", "--snr", 1, "--ways", 2,
                "--episodes", 1, "--store", store).exit_code == 0
    store.chmod(0o444)
    try:
        templates = _fsc("simulate", "--templates", locked, "--out", tmp_path / "d")
        assert templates.exit_code == 2 and "cannot read the templates folder" in templates.output
        support = _fsc("predict", "--model", world / "model", "--support", support_folder, "--queries",
                       world / "queries.csv", "--out", tmp_path / "o")
        assert support.exit_code == 2 and "support/b: cannot read the folder (permission denied)" in support.output
        read_only = _fsc("bench", "--dataset", tiny_dataset.path, "--methods", "protonet", *PROTONET, "--snr", 1,
                         "--ways", 2, "--episodes", 2, "--store", store)
        assert read_only.exit_code == 2 and "cannot write to the results store" in read_only.output
        assert "Traceback" not in templates.output + support.output + read_only.output
    finally:
        locked.chmod(0o755)
        (support_folder / "b").chmod(0o755)
        store.chmod(0o644)
