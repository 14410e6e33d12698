"""``fsc tune``: Optuna studies on real storages (SQLite file, PostgreSQL server), workers as
separate processes, resume, export to ``fsc bench --params``, and the bad-input errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from fewshot_cryoet import api, tuning
from fewshot_cryoet.cli import main
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.methods.base import FewShotMethod
from fewshot_cryoet.methods.protonet import ProtoNet
from fewshot_cryoet.results.store import ResultsStore

TINY_SETTINGS = ["--method", "protonet", "--param", "protonet.channels=[4,4,4,4]", "--snr", "1", "--ways", "2",
                 "--val-episodes", "4", "--queries-per-class", "2"]
TINY = [*TINY_SETTINGS, "--budget", "10ep"]


@pytest.fixture(scope="module")
def val2_dataset(tiny_val2_dataset):
    return tiny_val2_dataset


def _fsc(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _worker(storage: str, dataset, study: str, trials: int, *extra) -> subprocess.Popen:
    command = [sys.executable, "-m", "fewshot_cryoet", "tune", "run", *TINY, "--dataset", str(dataset.path),
               "--storage", storage, "--study", study, "--trials", str(trials), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tune.sqlite'}"
    return request.getfixturevalue("postgres_url")


def test_two_worker_processes_share_one_study(storage_url, val2_dataset, tmp_path):
    study = f"two-workers-{os.getpid()}-{time.time_ns()}"
    workers = [_worker(storage_url, val2_dataset, study, 6, "--seed", "3") for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    loaded = optuna.load_study(study_name=study, storage=storage_url)
    trials = loaded.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == len(trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 6
    # Both processes did work: every trial carries the worker-independent user attributes.
    assert all("params" in t.user_attrs for t in finished)
    best = tuning.resolve_params(f"best:{study}", storage_url)
    assert best.method == "protonet" and best.trials == len(finished)
    assert set(best.params) == {"channels", "lr", "weight_decay"}
    assert 0 <= best.values[0] <= 1
    method = ProtoNet(best.params)  # the best trial loads back into the method
    assert method.params["lr"] == pytest.approx(loaded.best_trial.params["lr"])


def test_resume_export_show_and_bench_with_tuned_params(val2_dataset, tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.sqlite'}"
    first = _fsc("tune", *TINY, "--dataset", val2_dataset.path, "--storage", storage, "--trials", 2,
                 "--study", "s", "--sampler", "random", "--pruner", "none")  # the old spelling, still accepted
    assert first.exit_code == 0, first.output
    assert "deprecated" in first.output and "fsc tune run" in first.output
    again = _fsc("tune", "run", *TINY, "--dataset", val2_dataset.path, "--storage", storage, "--trials", 3,
                 "--study", "s", "--sampler", "random", "--pruner", "none")
    assert again.exit_code == 0, again.output
    assert "2 finished trial(s)" in again.output  # resumed, not restarted
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(tuning.finished_trials(study)) == 3
    untuned = study.trials[0]  # the first trial of a new study runs the defaults, for comparison
    assert untuned.user_attrs["untuned"] and untuned.params == {"lr": 1e-3, "weight_decay": 1e-4}
    shown = _fsc("tune", "show", "s", "--storage", storage)
    assert shown.exit_code == 0 and "3 complete" in shown.output and "best trials of s" in shown.output
    params_file = tmp_path / "best.json"
    exported = _fsc("tune", "export", "s", params_file, "--storage", storage)
    assert exported.exit_code == 0, exported.output
    old_spelling = _fsc("tune", "--study", "s", "--storage", storage, "--export", tmp_path / "old.json")
    assert old_spelling.exit_code == 0 and "deprecated" in old_spelling.output
    assert json.loads((tmp_path / "old.json").read_text())["params"] == json.loads(params_file.read_text())["params"]
    data = json.loads(params_file.read_text())
    assert data["method"] == "protonet" and data["trials"] == 3
    assert data["params"]["lr"] == pytest.approx(study.best_trial.params["lr"])

    store = tmp_path / "bench.sqlite"
    bench = _fsc("bench", "--methods", "protonet", "--params", params_file, "--dataset", val2_dataset.path,
                 "--snr", 1, "--ways", 2, "--episodes", 5, "--queries", 2, "--budget", "5ep", "--store", store)
    assert bench.exit_code == 0, bench.output
    frame = ResultsStore(store).frame()
    assert set(frame["label"]) == {"protonet · tuned (3 trials)"}
    recorded = json.loads(frame["params"].iloc[0])
    assert recorded["lr"] == pytest.approx(data["params"]["lr"]) and recorded["channels"] == [4, 4, 4, 4]
    by_study = _fsc("bench", "--methods", "protonet", "--params", "best:s", "--tune-storage", storage,
                    "--dataset", val2_dataset.path, "--snr", 1, "--ways", 2, "--episodes", 5, "--queries", 2,
                    "--budget", "5ep", "--store", store, "--resume")
    assert by_study.exit_code == 0, by_study.output

    # the leaderboard tests the tuned row against the same configuration untuned, on the same episodes
    paired = tmp_path / "paired.sqlite"
    other = tmp_path / "other.json"  # a tuned result that differs from the defaults, whichever trial won
    other.write_text(json.dumps({**data, "params": {**data["params"], "lr": 3e-3}}))
    for extra in (["--params", other], []):
        run = _fsc("bench", "--methods", "protonet", "--param", "protonet.channels=[4,4,4,4]", *extra,
                   "--dataset", val2_dataset.path, "--snr", 1, "--ways", 2, "--episodes", 5, "--queries", 2,
                   "--budget", "5ep", "--store", paired, "--resume")
        assert run.exit_code == 0, run.output
    api.leaderboard(paired, tmp_path / "boards")
    gains = pd.read_csv(tmp_path / "boards" / "tuning.csv")
    assert list(gains["row"]) == ["protonet (channels=[4, 4, 4, 4])"] and gains["episodes"].iloc[0] == 5
    assert gains["verdict"].iloc[0] in ("tie", "tuned better", "default better") or "better" in gains["verdict"].iloc[0]
    assert "## Tuned against the defaults" in (tmp_path / "boards" / "leaderboard.md").read_text()


def test_ctrl_c_marks_the_running_trial_failed(val2_dataset, tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.sqlite'}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "fewshot_cryoet", "tune", "run", *TINY_SETTINGS, "--budget", "10m", "--dataset", str(val2_dataset.path), "--storage", storage, "--study", "long",
         "--trials", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    running = []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        try:
            running = [t for t in optuna.load_study(study_name="long", storage=storage).get_trials()
                       if t.state == TrialState.RUNNING]
        except KeyError:
            pass  # study not created yet
    assert running, "the worker never started a trial"
    time.sleep(1.0)
    worker.send_signal(signal.SIGINT)
    output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 130, output
    states = [t.state for t in optuna.load_study(study_name="long", storage=storage).get_trials()]
    assert states == [TrialState.FAIL]


def test_tuning_reads_training_and_validation_classes_only(val2_dataset):
    settings = tuning.TuneSettings("protonet", "default", {"channels": [4, 4, 4, 4]}, "tiny",
                                   val2_dataset.content_hash, "1", 2, 1, 2, 4, "5ep", "accuracy", 0)
    objective = tuning.TuningObjective(ProtoNet, settings, val2_dataset, Budget(episodes=5), "cpu")
    test_classes = set(val2_dataset.splits["test"])
    assert set(objective.train.classes) == set(val2_dataset.splits["train"])
    assert set(objective.episode_set.class_names.ravel()) <= set(val2_dataset.splits["val"])
    for episode in objective.selection + objective.episodes:
        assert not test_classes & set(episode.classes)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(trial.user_attrs["accuracy"])
    assert trial.user_attrs["fit_episodes"] == 5


class _Untunable(FewShotMethod):
    name = "untunable"
    description = "a method without a search space"

    def predict(self, episode):
        raise NotImplementedError


def test_search_spaces_and_grid():
    from fewshot_cryoet.methods.cosnet import COSNet

    with pytest.raises(FscError, match="declares no search space"):
        tuning.probe_search_space(_Untunable, {})
    decoder = tuning.probe_search_space(COSNet, {**COSNet.defaults, **COSNet.variants["duse-decoder"]})
    assert {"lr", "channels", "dice_weight", "crf_gaussian_weight", "crf_bilateral_width"} <= set(decoder)
    plain = tuning.probe_search_space(COSNet, {**COSNet.defaults, **COSNet.variants["scnn"], "profile": "paper"})
    assert set(plain) == {"lr"}  # no width for the fixed paper profile, no Dice/CRF without decoder
    grid = tuning.grid_from_distributions(decoder)
    assert grid["channels"] == [8, 16, 24, 32]
    assert grid["lr"] == pytest.approx([1e-5, 1e-4, 1e-3])


def test_bad_input_gives_one_line_errors(val2_dataset, tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.sqlite'}"
    unknown = _fsc("tune", "run", "--method", "nosuchmethod", "--storage", storage)
    assert unknown.exit_code == 2 and "nosuchmethod" in unknown.output

    down = _fsc("tune", "run", *TINY, "--dataset", val2_dataset.path,
                "--storage", "postgresql://someone:topsecret@127.0.0.1:9/nodb")
    assert down.exit_code == 2
    assert "127.0.0.1:9" in down.output and "topsecret" not in down.output and "running" in down.output

    ok = _fsc("tune", "run", *TINY, "--dataset", val2_dataset.path, "--storage", storage, "--study", "x", "--trials", 1)
    assert ok.exit_code == 0, ok.output
    mixed = _fsc("tune", "run", *TINY, "--dataset", val2_dataset.path, "--storage", storage, "--study", "x",
                 "--trials", 2, "--objective", "accuracy+dice")
    assert mixed.exit_code == 2 and "another experiment" in mixed.output and "objective" in mixed.output

    bad_params = tmp_path / "params.json"
    bad_params.write_text(json.dumps({"format": tuning.PARAMS_FORMAT, "method": "protonet", "variant": "default",
                                      "params": {"lr": 0.01, "learning_speed": 3}, "study": "x", "trials": 1}))
    bench = _fsc("bench", "--methods", "protonet", "--params", bad_params, "--dataset", val2_dataset.path,
                 "--snr", 1, "--ways", 2, "--episodes", 2, "--store", tmp_path / "b.sqlite")
    assert bench.exit_code == 2 and "params.json" in bench.output and "learning_speed" in bench.output
    missing = _fsc("bench", "--methods", "xcorr", "--params", bad_params, "--dataset", val2_dataset.path,
                   "--store", tmp_path / "b.sqlite")
    assert missing.exit_code == 2 and "--methods protonet/default" in missing.output
    no_study = _fsc("tune", "show", "nope", "--storage", storage)
    assert no_study.exit_code == 2 and "no study 'nope'" in no_study.output


def test_showing_a_study_that_does_not_exist_creates_no_database(tmp_path):
    from click.testing import CliRunner

    from fewshot_cryoet.cli import main

    storage = tmp_path / "never.sqlite"
    result = CliRunner().invoke(main, ["tune", "show", "nothing", "--storage", f"sqlite:///{storage}"])
    assert result.exit_code == 2 and "no such tuning database" in result.output
    assert not storage.exists()


def test_confirm_retrains_the_best_trial_and_the_defaults_with_seeds_on_fresh_episodes(val2_dataset, tiny_dataset,
                                                                                       tmp_path):
    """``fsc tune confirm``: both configurations retrained per seed and scored on validation
    episodes no trial saw; the verdict needs the paired test, is stored with the study, shown, and
    exported; the same seeds give the same numbers; the study's own data only."""
    from fewshot_cryoet.episodes import EpisodeSpec, sample_episodes
    from fewshot_cryoet.tuning.confirm import FRESH_EPISODE_OFFSET

    storage = f"sqlite:///{tmp_path / 'tune.sqlite'}"
    made = _fsc("tune", "run", *TINY, "--dataset", val2_dataset.path, "--storage", storage, "--trials", 2,
                "--study", "c", "--sampler", "random", "--pruner", "none", "--seed", 4)
    assert made.exit_code == 0, made.output
    first = api.confirm_tuning("c", seeds=[0, 1], episodes=6, dataset=val2_dataset.path, storage=storage)
    again = api.confirm_tuning("c", seeds=[0, 1], episodes=6, dataset=val2_dataset.path, storage=storage)
    assert first == again and first.seeds == [0, 1] and first.episodes == 6 and len(first.per_seed) == 2
    assert first.mean_difference == pytest.approx(first.tuned_accuracy - first.default_accuracy)
    assert first.verdict in ("tuned better", "defaults better", "no detectable difference")
    if first.verdict != "no detectable difference":
        assert first.p_value < 0.05 and abs(first.mean_difference) > first.ci95
    study = optuna.load_study(study_name="c", storage=storage)
    assert study.user_attrs["confirmation"]["trial"] == tuning.best_trial(study).number
    assert first.tuned_params == tuning.best_trial(study).user_attrs["params"]
    trial_episodes = sample_episodes(val2_dataset, EpisodeSpec("val", 2, 1, 2, 4 + 2), 6)
    fresh = sample_episodes(val2_dataset, EpisodeSpec("val", 2, 1, 2, 4 + FRESH_EPISODE_OFFSET), 6)
    assert not np.array_equal(trial_episodes.indices, fresh.indices)
    shown = _fsc("tune", "show", "c", "--storage", storage)
    assert shown.exit_code == 0 and "against the defaults" in shown.output and first.verdict in shown.output
    exported = _fsc("tune", "export", "c", tmp_path / "c.json", "--storage", storage)
    assert exported.exit_code == 0 and json.loads((tmp_path / "c.json").read_text())["confirmation"]["verdict"] == first.verdict
    cli = _fsc("tune", "confirm", "c", "--seeds", "0,1", "--episodes", 6, "--dataset", val2_dataset.path,
               "--storage", storage)
    assert cli.exit_code == 0 and f"tuned {first.tuned_accuracy:.3f} vs defaults {first.default_accuracy:.3f}" in cli.output
    duplicate = _fsc("tune", "confirm", "c", "--seeds", "1,1", "--dataset", val2_dataset.path, "--storage", storage)
    assert duplicate.exit_code == 2 and "distinct seeds" in duplicate.output
    other = _fsc("tune", "confirm", "c", "--dataset", tiny_dataset.path, "--storage", storage)  # other data
    assert other.exit_code == 2 and "was tuned on" in other.output
