"""Batched scoring (``predict_many`` with a volume batch) and CRF processes give the predictions,
masks and stored rows of scoring episode by episode, on real episodes of a real data set."""

from __future__ import annotations

import pytest
import torch

from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes
from fewshot_cryoet.evaluation.grid import SCORE_BATCH_AUTO, BenchSettings, auto_crf_workers
from fewshot_cryoet.evaluation.runner import MethodSpec, Runner
from fewshot_cryoet.evaluation.scoring import Scorer
from fewshot_cryoet.methods.cosnet import COSNet
from fewshot_cryoet.methods.matched import MatchedTemplates
from fewshot_cryoet.methods.protonet import ProtoNet
from fewshot_cryoet.methods.siamese import Siamese
from fewshot_cryoet.methods.xcorr import CrossCorrelation
from fewshot_cryoet.results.store import ResultsStore
from fewshot_cryoet.segmentation.crf import CRFParams

TINY_COSNET = {"channels": 4, "embedding": 16, "box": 16}


class VolumeByVolume:
    """A method computing each volume's rows on its own, whatever the batch: COS-Net's fully
    connected layers (CPU BLAS) and matched's batched FFTs round the last bit differently with a
    batch's size, so exact equality of the two scorers' bookkeeping is shown with batches of one
    volume on both sides."""

    def per_volume(self, role, network):
        kind, compute = super().per_volume(role, network)
        return kind, lambda volumes: torch.cat([compute(volumes[i:i + 1]) for i in range(len(volumes))])


class VolumeByVolumeCOSNet(VolumeByVolume, COSNet):
    pass


class VolumeByVolumeMatched(VolumeByVolume, MatchedTemplates):
    pass


METHODS = [(ProtoNet, None, {"channels": [4, 8, 8, 8]}), (Siamese, None, {"channels": [4, 8, 8, 8], "hidden": 8}),
           (VolumeByVolumeCOSNet, "duse-decoder", TINY_COSNET), (VolumeByVolumeCOSNet, "scnn", TINY_COSNET),
           (VolumeByVolumeMatched, None, {"angular_step": 60})]


def _episodes(dataset, count: int = 6, n_way: int = 3):
    chosen = sample_episodes(dataset, EpisodeSpec("test", n_way, 1, 2, seed=5), count)
    return [load_episode(dataset, chosen, number, 1.0) for number in range(count)]


def _predictions(method_cls, variant, params, episodes, batch: int | None):
    method = method_cls(params, variant)  # untrained: same weights for the same settings
    if batch is None:
        return [method.predict(episode) for episode in episodes]
    return method.predict_many(episodes, batch)


@pytest.mark.parametrize(("method_cls", "variant", "params"), METHODS, ids=lambda v: getattr(v, "name", None))
def test_batched_scoring_equals_episode_by_episode_bit_for_bit(tiny_dataset, method_cls, variant, params):
    """With batch-invariant arithmetic (PyTorch's own CPU convolutions, which take each volume of
    a batch on its own; COS-Net's dense layers one volume at a time), the batched scorer's scores
    and masks are those of episode-by-episode scoring exactly: the same rows are computed from the
    same normalised volumes and indexed the same way."""
    episodes = _episodes(tiny_dataset)
    with torch.backends.mkldnn.flags(enabled=False):
        one_by_one = _predictions(method_cls, variant, params, episodes, None)
        batched = _predictions(method_cls, variant, params, episodes, batch=5)  # blocks cut across episodes
    for a, b in zip(one_by_one, batched):
        assert torch.equal(a.scores, b.scores)
        assert (a.probabilities is None) == (b.probabilities is None)
        if a.probabilities is not None:
            assert torch.equal(a.probabilities, b.probabilities)


def test_with_onednn_batches_differ_only_in_the_last_bits(tiny_dataset):
    """oneDNN's 3D convolutions round differently with a batch's make-up (as between episodes of
    today's per-episode cache): scores agree to float precision and rank classes alike."""
    episodes = _episodes(tiny_dataset, count=8, n_way=3)
    params = {"channels": [4, 8, 8, 8]}
    for a, b in zip(_predictions(ProtoNet, None, params, episodes, None),
                    _predictions(ProtoNet, None, params, episodes, batch=64)):
        assert torch.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.scores.argmax(1), b.scores.argmax(1))


def test_methods_without_a_batched_path_predict_each_episode(tiny_dataset):
    """A training-free method's predict_many is its predict, episode by episode, whatever the batch."""
    episodes = _episodes(tiny_dataset, count=3)
    params = {"angular_step": 60}
    for a, b in zip(_predictions(CrossCorrelation, None, params, episodes, None),
                    _predictions(CrossCorrelation, None, params, episodes, batch=256)):
        assert torch.equal(a.scores, b.scores)


def test_cosnet_refuses_another_box_before_computing_a_batch(tiny_dataset):
    from fewshot_cryoet import FscError

    method = COSNet({"channels": 4, "embedding": 16}, "scnn")  # built for 32³
    with pytest.raises(FscError, match="--param cosnet.box=16"):
        method.predict_many(_episodes(tiny_dataset, count=2), batch=8)


def test_crf_processes_give_the_masks_of_the_main_process(tiny_dataset):
    episodes = _episodes(tiny_dataset, count=3)
    method = COSNet(TINY_COSNET, "duse-decoder")
    predictions = method.predict_many(episodes, 0)
    serial, parallel = Scorer(CRFParams()), Scorer(CRFParams(), workers=2)
    try:
        parallel.prefetch(episodes, predictions)
        assert len(parallel._cache) == len({i for e in episodes for i in e.query_ids})  # all refined at once
        for number, (episode, prediction) in enumerate(zip(episodes, predictions)):
            a, b = serial.episode(number, episode, prediction), parallel.episode(number, episode, prediction)
            assert a.query_dice == b.query_dice and a.dice_crf == b.dice_crf is not None
    finally:
        parallel.close()
    assert parallel._pool is None


def test_devices_choose_their_defaults():
    cpu = BenchSettings(ways=[2], shots=[1], device="cpu")
    assert cpu.scoring_batch == SCORE_BATCH_AUTO[True] == 0 and cpu.crf_processes == 0
    chosen = BenchSettings(ways=[2], shots=[1], device="cpu", score_batch=32, crf_workers=1)
    assert chosen.scoring_batch == 32 and chosen.crf_processes == 1
    assert SCORE_BATCH_AUTO[False] > 0 and 0 <= auto_crf_workers(torch.device("cuda")) <= 8


def test_a_batched_run_stores_the_rows_of_an_episode_by_episode_run(tiny_dataset, tmp_path):
    """The runner with batched scoring and CRF processes stores the same accuracy, raw and CRF Dice
    and per-query rows as the default run (CPU kernels made batch-invariant, as above)."""
    specs = [MethodSpec(VolumeByVolumeCOSNet, "duse-decoder", TINY_COSNET),
             MethodSpec(ProtoNet, params={"channels": [4, 8, 8, 8]})]
    frames = []
    with torch.backends.mkldnn.flags(enabled=False):
        for name, extra in (("plain", {}), ("batched", {"score_batch": 7, "crf_workers": 2})):
            settings = BenchSettings(ways=[2, 3], shots=[1], queries=2, episodes=4, budget=Budget(episodes=2),
                                     device="cpu", **extra)
            with ResultsStore(tmp_path / f"{name}.sqlite") as store:
                Runner(store, settings).run_snr(specs, tiny_dataset, "tiny", 1.0)
                frames.append((store.frame(), store.query_dice_frame()))
    (plain, plain_dice), (batched, batched_dice) = frames
    key = ["label", "n_way", "episode"]
    columns = ["accuracy", "dice", "dice_crf", "checkpoint"]
    a, b = plain.sort_values(key)[key + columns], batched.sort_values(key)[key + columns]
    assert len(a) == 2 * 2 * 4 and a.reset_index(drop=True).equals(b.reset_index(drop=True))
    assert plain_dice["dice_crf"].notna().any()
    sort = ["label", "n_way", "episode", "query"]
    pa = plain_dice.sort_values(sort)[sort + ["dice", "dice_crf"]].reset_index(drop=True)
    pb = batched_dice.sort_values(sort)[sort + ["dice", "dice_crf"]].reset_index(drop=True)
    assert len(pa) == 4 * (2 * 2 + 3 * 2) and pa.equals(pb)  # COS-Net: 4 episodes of 2 and 3 ways, 2 queries each


def test_validation_in_batches_scores_as_episode_by_episode(tiny_val2_dataset):
    """A fit's validation callback with a volume batch (a GPU's default) gives the accuracy and
    Dice of validating episode by episode (CPU's), with batch-invariant arithmetic."""
    from fewshot_cryoet.evaluation.fitting import validation_episodes
    from fewshot_cryoet.evaluation.scoring import validator

    episodes = validation_episodes(tiny_val2_dataset, 1.0, 1, 2, 0, with_masks=True)
    with torch.backends.mkldnn.flags(enabled=False):
        for cls, variant, params in (METHODS[0], METHODS[4], METHODS[2]):  # protonet, matched, COS-Net w decoder
            plain = validator(episodes)(cls(params, variant))
            batched = validator(episodes, batch=6)(cls(params, variant))
            assert plain == batched and plain.accuracy > 0
    assert (plain.dice is None) is False  # COS-Net's decoder was validated too
