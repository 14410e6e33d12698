"""The helper-process launcher shared by ``fsc bench --workers`` and ``benchmarks/robustness.py
--workers``: real processes, real log files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fewshot_cryoet.core.local_workers import cpu_threads, launch, stopped_on_exit, thread_env

ROOT = Path(__file__).resolve().parents[1]


def test_a_launched_helper_gets_its_environment_and_writes_its_own_log(tmp_path):
    helpers: list[subprocess.Popen] = []
    log = tmp_path / "logs" / "worker-2.log"  # the folder does not exist yet
    command = [sys.executable, "-c", "import os, sys; print(os.environ['OMP_NUM_THREADS'], os.environ['FSC_WORKER']);"
               "print('to stderr', file=sys.stderr)"]
    launch(command, log, {**thread_env(3), "FSC_WORKER": "2"}, helpers)
    assert len(helpers) == 1 and helpers[0].wait(timeout=60) == 0
    assert log.read_text().split("\n")[:2] == ["3 2", "to stderr"]


def test_cores_are_split_evenly_and_every_process_gets_at_least_one():
    assert cpu_threads(1) >= 1
    assert cpu_threads(10_000) == 1
    assert thread_env(2) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def test_an_early_stop_terminates_the_launched_helpers(tmp_path):
    helpers: list[subprocess.Popen] = []
    with pytest.raises(KeyboardInterrupt), stopped_on_exit(helpers):
        launch([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "sleeper.log", {}, helpers)
        raise KeyboardInterrupt
    assert helpers[0].poll() is not None, "the helper outlived the command that started it"


def test_robustness_refuses_a_bad_rank_naming_the_option():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--workers", "2", "--rank", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "--rank 2: must be from 0 to --workers − 1 (1)"
