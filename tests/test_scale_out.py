"""Scale-out: workers that share one grid through a results store, on a SQLite file and on a real
PostgreSQL server (``.ci/run`` starts one): every episode stored once, every model trained once,
the numbers of a single process, a ``kill -9``'d worker taken over, and one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from fewshot_cryoet import api
from fewshot_cryoet.cli import main
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.results.store import ResultsStore

GRID = ["bench", "--methods", "protonet,radial", "--param", "protonet.channels=[4,4]", "--snr", "1", "--ways", "2",
        "--episodes", "120", "--queries-per-class", "1", "--budget", "6ep"]


#: Torch threads of each of two local workers (``--workers 2`` splits the cores); every process of
#: a comparison uses as many, since CPU kernels sum in a thread-count-dependent order.
THREADS = str(max(1, (os.cpu_count() or 1) // 2))


def _fsc_process(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fewshot_cryoet", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS=THREADS))


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def test_two_workers_split_one_grid_trained_once_and_match_a_single_process(store_url, tiny_val2_dataset, tmp_path):
    """SQLite: ``fsc bench --workers 2`` (the local launcher). PostgreSQL: the same command started
    twice with ``--worker`` and a shared ``--models`` folder, as on two machines. Every episode is
    stored once, protonet is trained by exactly one worker, and the numbers are a single process's
    (test episodes are claimed in chunks of EVAL_CHUNK)."""
    grid = [*GRID, "--dataset", tiny_val2_dataset.path]
    if store_url.endswith(".sqlite"):
        outputs = [_finish(_fsc_process(*grid, "--store", store_url, "--workers", 2))]
        outputs.append((tmp_path / "store.workers" / "worker-2.log").read_text())
    else:
        workers = [_fsc_process(*grid, "--store", store_url, "--worker", "--models", tmp_path / "models")
                   for _ in range(2)]
        outputs = [_finish(w) for w in workers]
    _finish(_fsc_process(*grid, "--store", tmp_path / "single.sqlite"))
    with ResultsStore(store_url, create=False) as shared, ResultsStore(tmp_path / "single.sqlite") as single:
        rows, claims, reference = shared.frame(), shared.claims_frame(), single.frame()
    assert len(rows) == 2 * 120 and not rows.duplicated(["cell", "episode"]).any()
    assert all("results in" in output for output in outputs)  # each worker ran the grid to its end
    trainings = claims[~claims["identity"].str.startswith("eval-")]
    assert len(trainings) == 1 and (trainings["state"] == "done").all()
    assert sum(output.count("trained 6 episodes") for output in outputs) == 1  # the fits, counted
    assert len(claims[claims["identity"].str.startswith("eval-")]) == 2 * 3  # 120 episodes / 50 per chunk
    assert rows["checkpoint"].dropna().nunique() == 1
    merged = rows.merge(reference, on=["label", "n_way", "episode"], suffixes=("", "_single"))
    assert len(merged) == 240 and (merged["accuracy"] == merged["accuracy_single"]).all()


def test_a_worker_killed_with_kill_9_is_taken_over_without_duplicates(store_url, tiny_dataset, tmp_path):
    """A worker dies mid-grid (``kill -9``: no cleanup, its claims stay behind); a second worker
    takes over its claims (this host's process is gone, so at once) and completes the grid,
    keeping every stored episode and storing none twice."""
    command = ["bench", "--dataset", tiny_dataset.path, "--methods", "xcorr", "--param", "xcorr.angular_step=60",
               "--ways", "2,3", "--queries", "2", "--snr", "1", "--episodes", "300", "--store", store_url, "--worker"]
    process = _fsc_process(*command)
    deadline, count = time.time() + 120, 0
    while time.time() < deadline and process.poll() is None and count < 30:
        time.sleep(0.3)
        try:
            with ResultsStore(store_url, create=False) as store:
                count = len(store.frame())
        except FscError:  # not created yet
            count = 0
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with ResultsStore(store_url, create=False) as store:
        killed, held = store.frame(), store.claims_frame()
    assert 30 <= len(killed) < 600 and (held["state"] == "training").any()  # it died holding a chunk
    claims, cells = api.bench_status(store_url)
    assert cells["planned"].tolist() == [300, 300] and cells["stored"].sum() == len(killed)
    assert "running" in set(cells["state"]) and set(cells["state"]) <= {"running", "pending"}
    assert ((claims["work"] == "test episodes") & (claims["state"] == "claimed")).any()
    _finish(_fsc_process(*command))
    with ResultsStore(store_url, create=False) as store:
        final, claims = store.frame(), store.claims_frame()
    assert len(final) == 600 and not final.duplicated(["cell", "episode"]).any()
    assert (claims["state"] == "done").all()
    status = CliRunner().invoke(main, ["bench", "--status", "--store", store_url], env={"COLUMNS": "200"})
    assert status.exit_code == 0 and status.output.count("done") >= 3 and "pending" not in status.output
    merged = killed.merge(final, on=["cell", "episode"], suffixes=("_a", "_b"))
    assert len(merged) == len(killed) and (merged["accuracy_a"] == merged["accuracy_b"]).all()


def test_a_claim_lapses_only_after_the_lease(store_url):
    """A claim held by a process on another machine (whose liveness cannot be checked here) is
    busy while its heartbeat is recent and is taken over once it is older than the lease; a
    finished claim stays done."""
    with ResultsStore(store_url, lease_seconds=30) as store:
        with store.transaction() as db:
            now = store._now(db)
            db.exec_driver_sql("INSERT INTO fits (identity, state, owner, host, pid, heartbeat) VALUES "
                               f"('fresh', 'training', 'elsewhere:1:a', 'elsewhere', 1, {now - 5}), "
                               f"('stale', 'training', 'elsewhere:1:b', 'elsewhere', 1, {now - 60})")
        assert store.claim("fresh").state == "busy"
        assert store.claim("stale").state == "mine"
        assert store.claim("new").state == "mine"
        store.finish("new", "abc", {"episodes": 3})
        done = store.claim("new")
        assert (done.state, done.checkpoint_hash, done.report) == ("done", "abc", {"episodes": 3})
        with store.heartbeat("stale"):
            time.sleep(30 / 8 + 1.5)  # one beat
        assert store.claims_frame().set_index("identity").loc["stale", "age"] < 3


def test_workers_with_different_model_folders_are_refused(store_url, tiny_val2_dataset, tmp_path):
    """Every worker of a store must read the checkpoints one of them trained: a worker given another
    --models folder finds no checkpoint with the recorded hash and stops with a one-line error."""
    grid = [*GRID[:-6], "--dataset", tiny_val2_dataset.path, "--queries-per-class", "1", "--budget", "6ep",
            "--store", store_url]
    first = CliRunner().invoke(main, [*map(str, grid), "--episodes", "2", "--models", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    other = CliRunner().invoke(main, [*map(str, grid), "--episodes", "4", "--worker", "--models", str(tmp_path / "b")])
    assert other.exit_code == 2
    assert "must use the same --models folder" in other.output and "missing" in other.output
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_stores_of_another_schema_version_are_refused(store_url):
    with ResultsStore(store_url) as store:
        store.connection.exec_driver_sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(FscError, match="schema version 99"):
        ResultsStore(store_url)


def test_unreachable_or_malformed_stores_give_one_line_errors_without_the_password(tmp_path):
    runner = CliRunner()
    down = runner.invoke(main, ["leaderboard", "--store", "postgresql://someone:topsecret@127.0.0.1:9/results"])
    assert down.exit_code == 2 and "127.0.0.1:9" in down.output and "running" in down.output
    assert "topsecret" not in down.output and len(down.output.strip().splitlines()) == 1
    status = runner.invoke(main, ["bench", "--status", "--store", "postgresql://someone:topsecret@127.0.0.1:9/results"])
    assert status.exit_code == 2 and "topsecret" not in status.output
    other = runner.invoke(main, ["leaderboard", "--store", "mysql://someone:topsecret@host/results"])
    assert other.exit_code == 2 and "mysql is not supported" in other.output and "topsecret" not in other.output
    missing = runner.invoke(main, ["leaderboard", "--store", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "no such results store" in missing.output
    assert not (tmp_path / "none.sqlite").exists()


def test_status_reports_cells_a_store_never_planned(store_url, tiny_dataset):
    """Rows written before stores recorded their grid still show, with their stored episodes."""
    api.bench(["xcorr"], dataset=tiny_dataset, snrs=[1.0], ways=[2], episodes=3, queries_per_class=2,
              params={"xcorr": {"angular_step": 60}}, store=store_url)
    with ResultsStore(store_url) as store:
        store.connection.exec_driver_sql("DELETE FROM planned_cells")  # as a schema-7 store left them
    claims, cells = api.bench_status(store_url)
    assert cells[["label", "stored", "state"]].values.tolist() == [["xcorr (angular_step=60)", 3, "not planned"]]
    assert claims["state"].tolist() == ["done"] and claims["claims"].tolist() == [1]


def test_stopping_the_command_stops_the_workers_it_started(tiny_val2_dataset, tmp_path):
    """``fsc bench --workers 2`` owns its started worker: a SIGTERM to the command (as from
    ``kill`` or a batch system) ends the worker too, instead of leaving it running unseen."""
    command = ["bench", "--dataset", tiny_val2_dataset.path, "--methods", "protonet", "--param",
               "protonet.channels=[4,4]", "--snr", "1", "--ways", "2", "--episodes", "600", "--budget", "100000ep",
               "--store", tmp_path / "store.sqlite", "--workers", 2]
    process = _fsc_process(*command)
    children = f"/proc/{process.pid}/task/{process.pid}/children"
    deadline, worker = time.time() + 120, None
    while time.time() < deadline and worker is None and process.poll() is None:
        time.sleep(0.3)
        pids = open(children).read().split() if os.path.exists(children) else []
        worker = int(pids[0]) if pids else None
    assert worker is not None, "no worker was started"
    try:
        time.sleep(3)  # let both processes get into the grid
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 143, output[-2000:]
        assert not os.path.exists(f"/proc/{worker}"), "the started worker outlived the command"
    finally:  # never leave a process of this test training behind, whatever failed
        if process.poll() is None:
            process.kill()
        try:
            if "fewshot_cryoet" in open(f"/proc/{worker}/cmdline").read():
                os.kill(worker, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass
