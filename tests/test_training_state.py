"""An interrupted training resumes where it stopped and ends bit for bit where an uninterrupted
one ends; a file at the state's path that is not ours is refused and left alone (real runner,
real SQLite store, real checkpoint files)."""

from __future__ import annotations

import pytest
import torch

from fewshot_cryoet import FscError
from fewshot_cryoet.core.reporting import CallbackReporter
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.evaluation.runner import BenchSettings, MethodSpec, Runner
from fewshot_cryoet.methods.cosnet import COSNet
from fewshot_cryoet.methods.protonet import ProtoNet
from fewshot_cryoet.models.checkpoints import file_hash, read_checkpoint
from fewshot_cryoet.models.training_state import TrainingStateFile
from fewshot_cryoet.results.store import ResultsStore

PROTONET = MethodSpec(ProtoNet, params={"channels": [4, 8, 8, 8], "val_every": 2})
#: the published topology with the decoder (segmentation loss, DuSE, batch norm), tiny
COSNET = MethodSpec(COSNet, variant="duse-decoder",
                    params={"profile": "paper", "channels": 4, "embedding": 16, "box": 16, "val_every": 2})


def _settings() -> BenchSettings:
    return BenchSettings(ways=[2], shots=[1], queries=2, episodes=4, budget=Budget(episodes=6), device="cpu")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training."""


def _stop_training_at(fraction: float):
    def on_progress(event) -> None:
        # a training's bar counts episodes: stop once ``fraction`` of them are done, before the end
        if event.task.startswith("train") and fraction * event.total <= event.completed < event.total:
            raise Interrupted
    return on_progress


def _run(path, dataset, reporter=None, resume=False, spec: MethodSpec = PROTONET) -> Runner:
    runner = Runner(ResultsStore(path), _settings(), reporter, resume=resume)
    runner.run_snr([spec], dataset, "tiny", 1.0)
    return runner


@pytest.mark.parametrize("spec", [PROTONET, COSNET], ids=["protonet", "cosnet-paper-duse-decoder"])
def test_an_interrupted_training_resumes_from_its_last_save_and_ends_bit_for_bit_alike(spec, tiny_val2_dataset, tmp_path):
    _run(tmp_path / "whole.sqlite", tiny_val2_dataset, spec=spec)
    (whole,) = (tmp_path / "whole.models").glob("*[0-9].pt")

    stopped = tmp_path / "stopped.sqlite"
    with pytest.raises(Interrupted):  # after episode 3: the state saved at the validation of episode 2
        _run(stopped, tiny_val2_dataset, CallbackReporter(on_progress=_stop_training_at(0.5), on_log=None), spec=spec)
    (state,) = (tmp_path / "stopped.models").glob("*.training.pt")
    assert not list((tmp_path / "stopped.models").glob("*[0-9].pt"))  # no model yet, only the state

    messages: list[str] = []
    _run(stopped, tiny_val2_dataset, CallbackReporter(on_log=messages.append), resume=True, spec=spec)
    assert any("resuming its interrupted training at episode 2" in m for m in messages)
    assert not state.exists()  # removed once the model is written
    (resumed,) = (tmp_path / "stopped.models").glob("*[0-9].pt")
    assert resumed.name == whole.name
    first, second = read_checkpoint(whole)["state"]["network"], read_checkpoint(resumed)["state"]["network"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert file_hash(resumed) == file_hash(whole)  # weights, calibration and metadata alike

    a, b = ResultsStore(tmp_path / "whole.sqlite").frame(), ResultsStore(stopped).frame()
    merged = a.merge(b, on=["cell", "episode"], suffixes=("_a", "_b"))
    assert len(merged) == len(a) == 4 and (merged["accuracy_a"] == merged["accuracy_b"]).all()
    assert any("resumed after interruption at episode 2" in m for m in messages)


def test_a_file_at_the_state_path_that_is_not_ours_is_refused_and_left_alone(tiny_val2_dataset, tmp_path):
    path = tmp_path / "r.sqlite"
    with pytest.raises(Interrupted):
        _run(path, tiny_val2_dataset, CallbackReporter(on_progress=_stop_training_at(0.5), on_log=None))
    (state,) = (tmp_path / "r.models").glob("*.training.pt")
    state.write_bytes(b"a user's notes, not a training state")
    runner = _run(path, tiny_val2_dataset, CallbackReporter(on_log=None), resume=True)
    assert len(runner.failures) == 1 and f"{state}: not a training state fsc can read" in runner.failures[0]
    assert state.read_bytes() == b"a user's notes, not a training state"
    assert not list((tmp_path / "r.models").glob("*[0-9].pt"))

    other = TrainingStateFile(tmp_path / "other.training.pt", "another-training")
    other.save(_a_state())  # written by fsc, for another training
    with pytest.raises(FscError, match="training state of another training"):
        TrainingStateFile(tmp_path / "other.training.pt", "this-training").load()
    with pytest.raises(FscError, match="training state of another training"):
        TrainingStateFile(tmp_path / "other.training.pt", "this-training").remove()
    assert (tmp_path / "other.training.pt").exists()


def _a_state():
    from fewshot_cryoet.models.training_state import TrainingState

    return TrainingState(step=1, seconds=0.5, network={"w": torch.zeros(2)}, optimizer={"state": {}, "param_groups": []},
                         best_network=None, best_score=-1.0, report={}, sampler={}, torch_rng=torch.get_rng_state(),
                         cuda_rng=None, bf16_failed=False)


def test_fsc_train_interrupted_resumes_when_run_again(tiny_val2_dataset, tmp_path):
    """``api.train`` (behind ``fsc train``): the same call again resumes, and the model folder holds
    the weights an uninterrupted training gives."""
    from fewshot_cryoet import api

    def train(out, reporter=None):
        return api.train("protonet", out, dataset=tiny_val2_dataset, snr=1, budget="6ep", seed=3, device="cpu",
                         params={"channels": [4, 8, 8, 8], "val_every": 2}, reporter=reporter)

    train(tmp_path / "whole")
    with pytest.raises(Interrupted):
        train(tmp_path / "model", CallbackReporter(on_progress=_stop_training_at(0.5), on_log=None))
    state = tmp_path / "model.training.pt"
    assert state.exists() and not (tmp_path / "model").exists()
    messages: list[str] = []
    card = train(tmp_path / "model", CallbackReporter(on_log=messages.append))
    assert any("resuming its interrupted training at episode 2" in m for m in messages)
    assert card.fit["resumed_at"] == [2] and card.fit["episodes"] == 6 and not state.exists()
    first = read_checkpoint(tmp_path / "whole" / "weights.pt")["state"]["network"]
    second = read_checkpoint(tmp_path / "model" / "weights.pt")["state"]["network"]
    assert all(torch.equal(first[k], second[k]) for k in first)


class _RunsCode:
    def __init__(self, target) -> None:
        self.target = target

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.target}",)


def test_fsc_train_refuses_a_foreign_or_hostile_state_file_before_reading_data(tmp_path):
    """A pickle that would run code, or any file fsc did not write, at the state's path: refused
    with a one-line error naming it, nothing run, the file untouched (checked before the data set
    is even opened: the one given here does not exist)."""
    import pickle

    from fewshot_cryoet import api

    state = tmp_path / "model.training.pt"
    for content in (pickle.dumps(_RunsCode(tmp_path / "pwned"), protocol=2), b"notes"):
        state.write_bytes(content)
        with pytest.raises(FscError, match=f"{state}: not a training state fsc can read"):
            api.train("protonet", tmp_path / "model", dataset=tmp_path / "no-such-dataset", budget="2ep", device="cpu")
        assert state.read_bytes() == content and not (tmp_path / "pwned").exists()
