"""The episode runner, the results store (resume, kill -9) and leaderboards, on real SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from fewshot_cryoet import FscError
from fewshot_cryoet.core.reporting import CallbackReporter
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.evaluation.runner import BenchSettings, MethodSpec, Runner, fit_identity
from fewshot_cryoet.evaluation.scoring import Scorer
from fewshot_cryoet.methods.base import Prediction
from fewshot_cryoet.methods.protonet import ProtoNet
from fewshot_cryoet.methods.xcorr import CrossCorrelation
from fewshot_cryoet.reports.leaderboard import render
from fewshot_cryoet.results.store import ResultsStore

TINY_PROTONET = {"channels": [4, 8, 8, 8], "val_every": 2}
FAST_XCORR = {"angular_step": 60}


def _settings(episodes: int, **kwargs) -> BenchSettings:
    return BenchSettings(ways=[2, 3], shots=[1], queries=2, episodes=episodes, budget=Budget(episodes=3),
                         device="cpu", **kwargs)


def test_every_method_scored_on_the_same_episodes_with_full_rows(tiny_dataset, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    runner = Runner(store, _settings(5))
    specs = [MethodSpec(ProtoNet, params=TINY_PROTONET), MethodSpec(CrossCorrelation, params=FAST_XCORR)]
    runner.run_snr(specs, tiny_dataset, "tiny", 1.0)
    frame = store.frame()
    assert len(frame) == 2 * 2 * 5
    assert set(frame["method"]) == {"protonet", "xcorr"}
    assert set(frame["label"]) == {"protonet (channels=[4, 8, 8, 8], val_every=2)", "xcorr (angular_step=60)"}
    assert (frame["dataset_hash"] == tiny_dataset.content_hash).all() and (frame["device"] == "cpu").all()
    assert frame["package_version"].notna().all() and set(frame["plugin"]) == {"built-in"}
    trained = frame[frame["method"] == "protonet"]
    assert (trained["fit_episodes"] == 3).all() and trained["budget"].eq("3ep").all()
    assert frame[frame["method"] == "xcorr"]["budget"].eq("").all()
    assert ((frame["accuracy"] >= 0) & (frame["accuracy"] <= 1)).all()
    checkpoints = list((tmp_path / "r.models").glob("*.pt"))
    assert len(checkpoints) == 1  # only the trainable method has a model


def test_resume_continues_without_duplicates_and_refuses_silent_reruns(tiny_dataset, tmp_path):
    path = tmp_path / "r.sqlite"
    spec = [MethodSpec(CrossCorrelation, params=FAST_XCORR)]
    Runner(ResultsStore(path), _settings(4)).run_snr(spec, tiny_dataset, "tiny", 1.0)
    before = ResultsStore(path).frame()
    with pytest.raises(FscError, match="--resume"):
        Runner(ResultsStore(path), _settings(8)).run_snr(spec, tiny_dataset, "tiny", 1.0)
    Runner(ResultsStore(path), _settings(8), resume=True).run_snr(spec, tiny_dataset, "tiny", 1.0)
    after = ResultsStore(path).frame()
    assert len(after) == 2 * 8
    assert sorted(after.groupby("n_way")["episode"].apply(list).iloc[0]) == list(range(8))
    merged = before.merge(after, on=["cell", "episode"], suffixes=("_a", "_b"))
    assert len(merged) == len(before) and (merged["accuracy_a"] == merged["accuracy_b"]).all()


def test_a_chunk_finished_by_a_worker_killed_before_it_said_so_is_settled(tiny_dataset, tmp_path):
    """kill -9 between storing a chunk's last episode and marking the chunk done leaves a claim no
    plan revisits (nothing in it is missing); the next run over the cell marks it done."""
    import socket

    path = tmp_path / "r.sqlite"
    spec = [MethodSpec(CrossCorrelation, params=FAST_XCORR)]
    Runner(ResultsStore(path), _settings(60)).run_snr(spec, tiny_dataset, "tiny", 1.0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid of this host that no longer runs
    db = sqlite3.connect(path)
    with db:
        (identity,) = db.execute("SELECT identity FROM fits WHERE identity LIKE 'eval-%-0-50-%' LIMIT 1").fetchone()
        db.execute("UPDATE fits SET state = 'training', owner = 'killed', host = ?, pid = ? WHERE identity = ?",
                   (socket.gethostname(), gone.pid, identity))
    db.close()
    assert (ResultsStore(path).claims_frame()["state"] == "training").sum() == 1
    Runner(ResultsStore(path), _settings(120), resume=True).run_snr(spec, tiny_dataset, "tiny", 1.0)
    store = ResultsStore(path)
    assert len(store.frame()) == 2 * 120 and (store.claims_frame()["state"] == "done").all()


def test_trained_models_are_reused_on_resume(tiny_dataset, tmp_path):
    path = tmp_path / "r.sqlite"
    spec = [MethodSpec(ProtoNet, params=TINY_PROTONET)]
    Runner(ResultsStore(path), _settings(2)).run_snr(spec, tiny_dataset, "tiny", 1.0)
    checkpoint = next((tmp_path / "r.models").glob("*.pt"))
    stamp = checkpoint.stat().st_mtime_ns
    messages = []
    Runner(ResultsStore(path), _settings(3), CallbackReporter(on_log=messages.append), resume=True).run_snr(spec, tiny_dataset, "tiny", 1.0)
    assert checkpoint.stat().st_mtime_ns == stamp and any("reusing" in m for m in messages)
    assert len(ResultsStore(path).frame()) == 2 * 3


def test_kill_9_loses_nothing_and_resume_finishes(tiny_dataset, tmp_path):
    store = tmp_path / "killed.sqlite"
    command = [sys.executable, "-m", "fewshot_cryoet", "bench", "--dataset", str(tiny_dataset.path),
               "--methods", "xcorr", "--param", "xcorr.angular_step=60", "--ways", "2,3", "--queries", "2",
               "--snr", "1", "--episodes", "300", "--store", str(store), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
        if store.exists():
            try:
                with sqlite3.connect(store) as db:
                    count = db.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= 30:
                break
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = ResultsStore(store).frame()
    assert 30 <= len(killed) < 600
    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = ResultsStore(store).frame()
    assert len(final) == 600
    assert not final.duplicated(["cell", "episode"]).any()
    merged = killed.merge(final, on=["cell", "episode"], suffixes=("_a", "_b"))
    assert len(merged) == len(killed) and (merged["accuracy_a"] == merged["accuracy_b"]).all()


def test_impossible_settings_fail_before_training(tiny_dataset, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    runner = Runner(store, BenchSettings(ways=[2, 5], shots=[1], queries=2, episodes=2, budget=Budget(episodes=1),
                                         device="cpu"))
    with pytest.raises(FscError, match="5-way episodes need 5 classes but the test split .* has 3"):
        runner.run_snr([MethodSpec(ProtoNet, params=TINY_PROTONET)], tiny_dataset, "tiny", 1.0)
    runner = Runner(store, BenchSettings(ways=[2], shots=[3], queries=4, episodes=2, device="cpu"))
    with pytest.raises(FscError, match="need 7 subtomograms per class.*has 6"):
        runner.run_snr([MethodSpec(ProtoNet, params=TINY_PROTONET)], tiny_dataset, "tiny", 1.0)
    assert store.frame().empty and not (tmp_path / "r.models").exists()


def test_store_refuses_other_versions_and_other_files(tmp_path):
    path = tmp_path / "old.sqlite"
    ResultsStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(FscError, match="schema version 99"):
        ResultsStore(path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE things (x)")
    with pytest.raises(FscError, match="not a fewshot-cryoet results store"):
        ResultsStore(other)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(FscError, match="garbage.sqlite"):
        ResultsStore(garbage)


def test_score_episode_rejects_malformed_predictions(tiny_dataset):
    from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes

    episode = load_episode(tiny_dataset, sample_episodes(tiny_dataset, EpisodeSpec("test", 2, 1, 2), 1), 0, 1.0)
    with pytest.raises(FscError, match="shape"):
        Scorer().episode(0, episode, Prediction(torch.zeros(3, 2)))
    with pytest.raises(FscError, match="NaN"):
        Scorer().episode(0, episode, Prediction(torch.full((4, 2), float("nan"))))
    probabilities = episode.query_masks.float()  # a perfect segmentation
    result = Scorer().episode(0, episode, Prediction(torch.eye(2).repeat_interleave(2, 0), probabilities))
    assert result.accuracy == 1.0 and result.dice == pytest.approx(1.0) and len(result.query_dice) == 4


def test_leaderboard_files(tiny_dataset, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    specs = [MethodSpec(ProtoNet, params=TINY_PROTONET), MethodSpec(CrossCorrelation, params=FAST_XCORR)]
    Runner(store, _settings(6)).run_snr(specs, tiny_dataset, "tiny", 1.0)
    Runner(store, _settings(6)).run_snr(specs, tiny_dataset, "tiny", float("inf"))
    written = render(store.frame(), store.query_dice_frame(), tmp_path / "boards", "r.sqlite")
    markdown = (tmp_path / "boards" / "leaderboard.md").read_text()
    assert "quick run" in markdown and "SNR ∞ · 2-way" in markdown  # noise-free: no in-mask SNR
    # a noisy level's header carries its median in-mask SNR, the one the data set measured
    mask_snr = tiny_dataset.mask_snr(1.0)
    assert mask_snr is not None and mask_snr > 1.0  # inside the particle there is more signal than over the box
    assert f"SNR 1 (in-mask {mask_snr:.2g}) · 3-way" in markdown
    assert "| protonet" in markdown and "| xcorr" in markdown
    table_lines = [line for line in markdown.splitlines() if line.startswith("| protonet") or line.startswith("| xcorr")]
    columns = len(table_lines[0].split("|")) - 3
    for c in range(columns):  # every column has at least one bold (best) cell
        assert any(line.split("|")[c + 2].strip().startswith("**") for line in table_lines)
    csv = pd.read_csv(tmp_path / "boards" / "leaderboard.csv")
    assert {"label", "snr", "n_way", "accuracy", "ci95", "episodes"} <= set(csv.columns) and len(csv) == 8
    assert (tmp_path / "boards" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "Dice" not in markdown  # nothing here segments
    assert len(written) == 3


@pytest.mark.parametrize("seen", [None, 4])
def test_processes_opening_a_new_store_at_once_do_not_crash(tmp_path, seen):
    """Two benches started together may both find a store empty (or at the previous schema) and
    then create (or migrate) it in turn: the second must open it, not fail on the first's work."""
    from fewshot_cryoet.results.store import SCHEMA_VERSION

    ResultsStore(tmp_path / "s.sqlite").close()

    class LateToTheRace(ResultsStore):
        """Saw the store as it was before the other process created or migrated it."""

        checked = False

        def _schema_version(self):
            if not self.checked:
                self.checked = True
                return seen
            return super()._schema_version()

    store = LateToTheRace(tmp_path / "s.sqlite")
    assert store.connection.exec_driver_sql("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)


def test_a_process_moves_on_to_the_next_level_while_another_holds_this_ones(tiny_dataset, tmp_path):
    """SNR levels are one work list: a training another process holds at the first level does not
    keep this process waiting; it trains and scores the second level, then takes the first over
    once the other's claim lapses (a holder that never heartbeats, here)."""
    path = tmp_path / "r.sqlite"
    spec = MethodSpec(ProtoNet, params=TINY_PROTONET)
    settings = _settings(4)
    runner = Runner(ResultsStore(path, lease_seconds=2.0), settings)
    cell = next(iter(runner.cells(spec, spec.cls(spec.params, spec.variant, "cpu"), tiny_dataset, "tiny",
                                  float("inf")).values()))
    assert ResultsStore(path).claim(fit_identity(cell, cell.budget, settings.seed)).state == "mine"
    runner.run_levels([spec], [(snr, lambda: (tiny_dataset, None)) for snr in (float("inf"), 1.0)], "tiny")
    frame = ResultsStore(path).frame().sort_values("id")
    assert len(frame) == 2 * 2 * 4 and not runner.failures
    assert list(dict.fromkeys(frame["snr"])) == ["1", "inf"]  # the held level was scored last


def test_a_model_another_process_trained_during_the_run_is_joined_only_when_asked(tiny_dataset, tmp_path):
    """The process that trained a model scores it with warm caches; another process leaves it to
    it while it has other work (``join=False``) and reuses the checkpoint when it joins."""
    path = tmp_path / "r.sqlite"
    spec = MethodSpec(ProtoNet, params=TINY_PROTONET)
    later = Runner(ResultsStore(path), _settings(4))  # its run begins now
    Runner(ResultsStore(path), _settings(4)).run_snr([spec], tiny_dataset, "tiny", 1.0)  # another trains meanwhile
    method = spec.cls(spec.params, spec.variant, "cpu")
    cells = later.cells(spec, method, tiny_dataset, "tiny", 1.0)
    assert later.fit(method, tiny_dataset, 1.0, cells, join=False) is None
    report, checkpoint = later.fit(method, tiny_dataset, 1.0, cells, join=True)
    assert report.episodes == 3 and checkpoint
    fresh = Runner(ResultsStore(path), _settings(4))  # a run begun after the training: no reason to wait
    assert fresh.fit(spec.cls(spec.params, spec.variant, "cpu"), tiny_dataset, 1.0, cells, join=False) is not None


class _OutOfMemory(ProtoNet):
    """A model too big for its device: training raises torch's out-of-memory error, whose text is
    a paragraph."""

    def fit(self, context):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total)\n"
                                     "If reserved but unallocated memory is large try PYTORCH_CUDA_ALLOC_CONF")


def test_running_out_of_device_memory_is_one_line_and_the_grid_goes_on(tiny_dataset, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    runner = Runner(store, _settings(3))
    runner.run_snr([MethodSpec(CrossCorrelation, params=FAST_XCORR), MethodSpec(_OutOfMemory, params=TINY_PROTONET)],
                   tiny_dataset, "tiny", 1.0)
    assert set(store.frame()["method"]) == {"xcorr"} and len(store.frame()) == 2 * 3  # kept, both ways
    [failure] = runner.failures
    assert "out of accelerator memory; lower the training episode (--param METHOD.train_way" in failure
    assert "--workers" in failure and "\n" not in failure and "PYTORCH_CUDA_ALLOC_CONF" not in failure


def test_the_command_line_names_what_to_lower_when_memory_runs_out():
    import click
    from click.testing import CliRunner

    from fewshot_cryoet.cli.main import FscGroup

    @click.group(cls=FscGroup)
    def group() -> None:
        pass

    @group.command()
    def predict() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore advice")

    @group.command()
    def other() -> None:
        raise RuntimeError("not about memory")

    result = CliRunner().invoke(group, ["predict"])
    assert result.exit_code == 2, result.output
    assert "fsc predict: out of accelerator memory; lower --batch-size" in result.output
    assert "Traceback" not in result.output and "more advice" not in result.output
    assert isinstance(CliRunner().invoke(group, ["other"]).exception, RuntimeError)  # other errors are not hidden
