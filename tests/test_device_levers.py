"""Levers meant for a GPU, shown to work on the CPU: the compiled training step, and the main
job's methods per device. (Batched scoring and CRF processes: tests/test_batched_scoring.py.)"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from fewshot_cryoet import api
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.evaluation.fitting import fit_context
from fewshot_cryoet.methods.protonet import ProtoNet

TINY = {"channels": [4, 8, 8, 8], "val_every": 100}


def _trained(dataset, **params) -> ProtoNet:
    method = ProtoNet({**TINY, **params})
    method.fit(fit_context(dataset, 1.0, False, Budget(episodes=4), torch.device("cpu"), 2, 0, 1))
    return method


def test_compile_off_keeps_every_earlier_hash_and_any_mode_gets_its_own():
    assert ProtoNet(TINY).params_hash() == ProtoNet({**TINY, "compile": "off"}).params_hash()
    assert ProtoNet.hash_params({k: v for k, v in ProtoNet(TINY).params.items() if k != "compile"}) == \
        ProtoNet(TINY).params_hash()
    assert ProtoNet({**TINY, "compile": "default"}).params_hash() != ProtoNet(TINY).params_hash()
    assert "compile=reduce-overhead" in ProtoNet({**TINY, "compile": "reduce-overhead"}).label


@pytest.mark.skipif(not shutil.which(os.environ.get("CXX", "g++")) and not shutil.which("c++"),
                    reason="torch.compile's CPU backend (inductor) builds C++ kernels; no C++ compiler on PATH")
def test_the_compiled_training_step_trains_as_the_eager_one(tiny_dataset):
    """``compile=reduce-overhead`` (a CUDA graph on a GPU; compiled without one on a CPU) takes the
    same steps as eager training and is reproducible: fused kernels round differently, so its
    model agrees with the eager one closely, not to the bit (hence its own hash), and the same
    seed gives the same weights again. Compared by predictions: the last BatchNorm bias has a
    zero gradient in exact arithmetic (a shift of every embedding leaves distances unchanged), so
    Adam turns rounding noise into steps of its own there."""
    from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes

    eager = _trained(tiny_dataset)
    compiled, again = (_trained(tiny_dataset, compile="reduce-overhead") for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(compiled.network.parameters(), again.network.parameters()))
    episodes = sample_episodes(tiny_dataset, EpisodeSpec("test", 3, 1, 2, seed=1), 3)
    for number in range(3):
        episode = load_episode(tiny_dataset, episodes, number, 1.0)
        a, b = eager.predict(episode).scores, compiled.predict(episode).scores
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
        assert not torch.equal(a, ProtoNet(TINY).predict(episode).scores)  # it trained


def test_the_main_job_adds_cosnet_where_it_trains_on_a_gpu():
    assert api.default_methods("cpu") == api.default_methods(torch.device("cpu")) == ",".join(api.DEFAULT_BENCH_METHODS)
    on_gpu = api.default_methods(torch.device("cuda"))  # a device already resolved: no GPU needed to ask
    assert on_gpu.split(",") == [*api.DEFAULT_BENCH_METHODS, "cosnet/duse-decoder"]
