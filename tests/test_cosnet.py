"""COS-Net: the four published variants, DuSE, K-shot aggregation, CRF refinement, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot_cryoet import FscError
from fewshot_cryoet.core.reporting import CallbackReporter
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.episodes import EpisodeSource, EpisodeSpec, load_episode, sample_episodes
from fewshot_cryoet.evaluation.runner import BenchSettings, MethodSpec, Runner
from fewshot_cryoet.evaluation.scoring import Scorer, validator
from fewshot_cryoet.methods.cosnet import COSNet, DuSE
from fewshot_cryoet.methods.xcorr import CrossCorrelation
from fewshot_cryoet.reports.leaderboard import render
from fewshot_cryoet.results.store import ResultsStore
from fewshot_cryoet.segmentation.crf import CRFParams, refine
from fewshot_cryoet.testing import check_method

TINY = {"channels": 4, "embedding": 16, "box": 16}


def test_all_four_variants_pass_the_conformance_kit():
    passed = check_method(COSNet, TINY)
    for variant in ("scnn", "scnn-decoder", "duse", "duse-decoder"):
        assert f"{variant}: save and load keep the predictions" in passed
    assert "duse-decoder: probabilities lie in [0, 1]" in passed and "duse: probabilities lie in [0, 1]" not in passed


def test_variant_labels_match_the_paper_rows():
    labels = {v: COSNet.label_for(v, COSNet.resolve(TINY, v)[1]) for v in COSNet.variants}
    assert labels["scnn"] == "COS-Net SCNN w/o decoder (cpu)"
    assert labels["duse-decoder"] == "COS-Net DuSE-SCNN w decoder (cpu)"
    assert COSNet(TINY, "scnn").label == "COS-Net SCNN w/o decoder (cpu) (box=16, channels=4, embedding=16)"
    assert COSNet(TINY, "duse-decoder").segments and not COSNet(TINY, "duse").segments
    paper = COSNet({"profile": "paper"}, "scnn", device="cpu")
    first = paper.network.features[1]
    assert first.in_features == 64 * 8**3 and first.out_features == 512  # 32768 → 512, the published sizes


def test_duse_merges_channel_and_spatial_excitation():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, 4, 4)
    for merge in ("add", "max"):
        block = DuSE(6, merge)
        torch.nn.init.zeros_(block.spatial.weight)
        torch.nn.init.zeros_(block.spatial.bias)  # spatial gate = sigmoid(0) = 0.5
        channel = x * block.squeeze(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]
        expected = channel + 0.5 * x if merge == "add" else torch.maximum(channel, 0.5 * x)
        assert torch.allclose(block(x), expected, atol=1e-6)
    with pytest.raises(FscError, match="merge"):
        DuSE(6, "mean")


def test_k_shot_score_is_the_mean_similarity_over_shots(tiny_dataset):
    method = COSNet(TINY, "duse")
    episodes = sample_episodes(tiny_dataset, EpisodeSpec("test", 3, 2, 2), 1)
    episode = load_episode(tiny_dataset, episodes, 0, 1.0)
    scores = method.predict(episode).scores
    net = method.network.eval()
    with torch.no_grad():
        similarity = torch.sigmoid(net.similarity_logits(net.embed(episode.query), net.embed(episode.support)))
    expected = torch.stack([similarity[:, episode.support_labels == c].mean(1) for c in range(3)], dim=1)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_training_reduces_the_loss_of_both_heads(tiny_dataset):
    method = COSNet(TINY, "duse-decoder")
    source = EpisodeSource(tiny_dataset, "train", 1.0)
    episode = source.sample(2, 1, 1, np.random.default_rng(0))
    optimizer = torch.optim.Adam(method.network.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        method.network.train()
        loss = method.training_loss(episode)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_bad_input_errors(tiny_dataset, tmp_path):
    method = COSNet(TINY, "scnn-decoder")
    episodes = sample_episodes(tiny_dataset, EpisodeSpec("test", 2, 1, 1), 1)
    no_masks = load_episode(tiny_dataset, episodes, 0, 1.0, with_masks=False)
    with pytest.raises(FscError, match="needs ground-truth masks; use a variant without decoder"):
        method.training_loss(no_masks)
    with pytest.raises(FscError, match=r"built for 32³ boxes .* --param cosnet.box=16"):
        COSNet({"channels": 4, "embedding": 16}, "scnn").predict(no_masks)
    method.save(tmp_path / "m.pt", box=16)
    wider = COSNet({"channels": 8, "embedding": 16, "box": 16}, "scnn-decoder")
    with pytest.raises(FscError, match="another profile, width or box size"):
        wider.load(tmp_path / "m.pt", box=16)
    with pytest.raises(FscError, match="trained on 16³ boxes, the data are 32³"):
        method.load(tmp_path / "m.pt", box=32)


def _noisy_sphere(size: int, radius: int):
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:size, :size, :size]
    truth = ((z - size // 2) ** 2 + (y - size // 2 + 1) ** 2 + (x - size // 2) ** 2) < radius**2
    volume = truth * 1.0 + rng.normal(0, 0.7, truth.shape)
    probabilities = np.clip(truth * 0.7 + 0.15 + rng.normal(0, 0.25, truth.shape), 0, 1)
    return truth, volume, probabilities


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("size, radius", [(32, 8), (24, 6), (32, 4)])
def test_crf_cleans_noisy_probability_maps_of_large_and_small_particles(size, radius):
    truth, volume, probabilities = _noisy_sphere(size, radius)
    refined = refine(probabilities, volume)
    assert refined.dtype == bool and refined.shape == truth.shape
    assert _dice(refined, truth) > max(0.8, _dice(probabilities > 0.5, truth) + 0.2)


def test_crf_rejects_degenerate_input_and_the_runner_carries_on():
    truth, volume, probabilities = _noisy_sphere(24, 6)
    with pytest.raises(FscError, match="NaN"):
        refine(np.full_like(probabilities, np.nan), volume)
    with pytest.raises(FscError, match="matching 3D"):
        refine(probabilities[0], volume)
    messages = []
    scorer = Scorer(CRFParams(), log=messages.append)
    assert scorer.refine(torch.full((24, 24, 24), float("nan")), torch.zeros(24, 24, 24), ("x", 1)) is None
    assert len(messages) == 1 and "CRF refinement failed" in messages[0] and scorer.crf_failures == 1
    saved = scorer.mask(torch.full((24, 24, 24), 0.7).masked_fill(torch.ones(24, 24, 24).bool(), float("nan")),
                        torch.zeros(24, 24, 24))
    assert saved.shape == (24, 24, 24) and not saved.any()  # the raw mask stands in


def test_runner_reports_raw_and_crf_dice_for_decoder_variants(tiny_dataset, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    settings = BenchSettings(ways=[2, 3], shots=[1], queries=2, episodes=4, budget=Budget(episodes=4), device="cpu")
    specs = [MethodSpec(COSNet, "duse-decoder", TINY), MethodSpec(COSNet, "scnn", TINY),
             MethodSpec(CrossCorrelation, params={"angular_step": 60})]
    Runner(store, settings).run_snr(specs, tiny_dataset, "tiny", 1.0)
    frame = store.frame()
    decoder = frame[frame["variant"] == "duse-decoder"]
    assert decoder["dice"].notna().all() and decoder["dice_crf"].notna().all()
    assert frame[frame["variant"] == "scnn"]["dice"].isna().all()
    render(frame, store.query_dice_frame(), tmp_path / "boards", "r.sqlite")
    markdown = (tmp_path / "boards" / "leaderboard.md").read_text()
    assert "Segmentation Dice, raw" in markdown and "CRF-refined" in markdown
    assert "COS-Net DuSE-SCNN w decoder (cpu)" in markdown and "COS-Net SCNN w/o decoder (cpu)" in markdown
    crf_section = markdown.split("CRF-refined")[1]
    assert any(line.startswith("| COS-Net SCNN w/o decoder") and "—" in line for line in crf_section.splitlines())
    # a second budget of the decoder variant: its Dice per class is a row of its own, not pooled
    shorter = BenchSettings(ways=[2], shots=[1], queries=2, episodes=4, budget=Budget(episodes=2), device="cpu")
    Runner(store, shorter).run_snr(specs[:1], tiny_dataset, "tiny", 1.0)
    render(store.frame(), store.query_dice_frame(), tmp_path / "boards", "r.sqlite")
    per_class = (tmp_path / "boards" / "leaderboard.md").read_text().split("Dice per test class")[1].split("##")[0]
    rows = [line for line in per_class.splitlines() if "DuSE-SCNN w decoder" in line]
    assert sorted(line.split(" · budget ")[1].split("|")[0].strip() for line in rows) == ["2ep", "4ep", "4ep"]  # 2ep: 2-way only


def test_no_crf_changes_only_the_crf_dice_and_a_cell_is_never_mixed(tiny_dataset, tmp_path):
    spec = MethodSpec(COSNet, "duse-decoder", TINY)

    def run(store: ResultsStore, crf: bool, episodes: int = 3) -> Runner:
        settings = BenchSettings(ways=[2], shots=[1], queries=2, episodes=episodes, budget=Budget(episodes=3),
                                 device="cpu", crf=crf)
        runner = Runner(store, settings, resume=True)
        runner.run_snr([spec], tiny_dataset, "tiny", 1.0)
        return runner

    with ResultsStore(tmp_path / "crf.sqlite") as refined, ResultsStore(tmp_path / "raw.sqlite") as raw:
        run(refined, crf=True)
        run(raw, crf=False)
        a, b = refined.frame(), raw.frame()
        assert a["dice_crf"].notna().all() and b["dice_crf"].isna().all()
        for column in ("accuracy", "dice", "checkpoint"):
            assert a[column].tolist() == b[column].tolist()
        assert raw.query_dice_frame()["dice_crf"].isna().all()
        # resuming the other way would leave a cell whose CRF Dice covers only some episodes
        failures = run(raw, crf=True, episodes=5).failures
        assert len(failures) == 1 and "without the CRF (--no-crf); resume with --no-crf" in failures[0]
        assert len(raw.frame()) == 3
        run(raw, crf=False, episodes=5)
        assert len(raw.frame()) == 5 and raw.frame()["dice_crf"].isna().all()


def test_segmentation_figure_from_a_checkpoint(tiny_dataset, tmp_path):
    from click.testing import CliRunner

    from fewshot_cryoet.cli import main

    method = COSNet(TINY, "duse-decoder")
    method.save(tmp_path / "m.pt", box=16)
    result = CliRunner().invoke(main, ["show", str(tiny_dataset.path), "--model", str(tmp_path / "m.pt"),
                                       "--snr", "1", "--out", str(tmp_path / "seg.png"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "seg.png").read_bytes()[:4] == b"\x89PNG"
    COSNet(TINY, "duse").save(tmp_path / "plain.pt", box=16)
    refused = CliRunner().invoke(main, ["show", str(tiny_dataset.path), "--model", str(tmp_path / "plain.pt"),
                                        "--out", str(tmp_path / "x.png")])
    assert refused.exit_code == 2 and "does not segment" in refused.output


def test_a_failing_method_does_not_stop_the_grid(tiny_dataset, tmp_path):
    """COS-Net built for the wrong box fails with a clear message; xcorr still runs."""
    store = ResultsStore(tmp_path / "r.sqlite")
    settings = BenchSettings(ways=[2], shots=[1], queries=2, episodes=3, budget=Budget(episodes=2), device="cpu")
    messages = []
    runner = Runner(store, settings, CallbackReporter(on_log=messages.append))
    runner.run_snr([MethodSpec(COSNet, "scnn", {"channels": 4, "embedding": 16}),
                    MethodSpec(CrossCorrelation, params={"angular_step": 60})], tiny_dataset, "tiny", 1.0)
    assert len(runner.failures) == 1 and "--param cosnet.box=16" in runner.failures[0]
    assert set(store.frame()["method"]) == {"xcorr"} and len(store.frame()) == 3


def test_selection_uses_validation_dice_for_decoder_variants(tiny_val2_dataset):
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.evaluation.runner import validation_episodes
    from fewshot_cryoet.methods.base import FitContext

    validation = validator(validation_episodes(tiny_val2_dataset, 1.0, 1, 2, 0, with_masks=True))
    source = EpisodeSource(tiny_val2_dataset, "train", 1.0)
    decoder = COSNet({**TINY, "val_every": 5}, "duse-decoder")
    report = decoder.fit(FitContext(source, validation, Budget(episodes=10), torch.device("cpu")))
    assert [step for step, _, _ in report.history] == [5, 10]
    assert all(0 <= dice <= 1 for _, _, dice in report.history)
    scores = [(accuracy + dice) / 2 for _, accuracy, dice in report.history]
    best = report.history[int(np.argmax(scores))]
    assert (report.best_validation_accuracy, report.best_validation_dice) == (best[1], best[2])
    plain = COSNet({**TINY, "val_every": 5}, "duse")
    report = plain.fit(FitContext(source, validation, Budget(episodes=5), torch.device("cpu")))
    assert report.best_validation_dice is None and report.history[0][2] is None


def test_the_paper_profile_is_the_published_network_layer_for_layer():
    """ANCHORS.md: about 18.2 M parameters and 33 GFLOP per volume forward (decoder and DuSE on)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fewshot_cryoet.methods.cosnet import PublishedConv, PublishedNetwork

    method = COSNet({"profile": "paper"}, "duse-decoder")
    network = method.network.eval()
    assert isinstance(network, PublishedNetwork)
    assert abs(sum(p.numel() for p in network.parameters()) / 18.2e6 - 1) < 0.01
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        network.stream(torch.randn(1, 1, 32, 32, 32))
    assert abs(flops.get_total_flops() / 33e9 - 1) < 0.05
    order = [type(m).__name__ for m in network.encoder[0].convs[0]]
    assert order == ["Conv3d", "ReLU", "BatchNorm3d"]  # the published order
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in network.stem)  # no BatchNorm in the stem
    assert network.encoder[0].duse is not network.encoder[1].duse and network.encoder[2].duse is None
    shared = COSNet({"profile": "paper", "shared_duse": True}, "duse").network
    assert shared.encoder[0].duse is shared.encoder[1].duse  # the published code's quirk, on request
    assert isinstance(network.decoder.levels[0].convs[0], PublishedConv) and network.decoder.output.kernel_size == (1, 1, 1)
    residual = COSNet({"profile": "paper", "residual": True}, "scnn").network
    assert residual.encoder[0].residual and COSNet({"profile": "paper"}, "scnn").network.decoder is None


def test_old_paper_checkpoints_load_as_lite_and_hashes_tell_them_apart(tmp_path):
    from fewshot_cryoet.models.checkpoints import load_method

    lite = COSNet({"profile": "lite", "channels": 8, "embedding": 16}, "scnn")
    lite.save(tmp_path / "old.pt", 32)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    payload["params"]["profile"] = "paper"  # as saved before paper meant the published network
    torch.save(payload, tmp_path / "old-paper.pt")
    with pytest.warns(UserWarning, match="loads as profile 'lite'"):
        loaded = load_method(tmp_path / "old-paper.pt")
    assert loaded.params["profile"] == "lite"
    assert torch.equal(loaded.network.features[1].weight, lite.network.features[1].weight)
    old_params = {**COSNet.resolve({"profile": "paper"}, "scnn")[1]}
    assert COSNet.hash_params(old_params) != COSNet.hash_params({**old_params, "profile": "lite"})
    with pytest.raises(FscError, match="expected one of paper, lite, cpu"):
        COSNet({"profile": "huge"})
    with pytest.raises(FscError, match="published topology"):
        COSNet({"profile": "cpu", "residual": True})


def test_paper_profile_inference_folds_batch_norm_after_relu_into_the_next_conv_exactly():
    """conv → ReLU → BatchNorm cannot fold backwards; the inference copy folds the norm into the
    next convolution, with a per-shape bias map for the zero padding (methods.fast)."""
    from fewshot_cryoet.methods.fast import FoldedConv, inference_copy

    network = COSNet({"profile": "paper", "channels": 8, "embedding": 32}, "duse-decoder").network
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():  # statistics far from the identity, so a wrong fold shows
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(module.num_features, generator=generator) * 2 - 1)
    network.eval()
    fast = inference_copy(network)
    assert sum(isinstance(m, FoldedConv) for m in fast.modules()) == 5  # 3 encoder + 2 decoder levels
    volumes = torch.randn(2, 1, 32, 32, 32, generator=generator)
    with torch.no_grad():
        (features, logits), (fast_features, fast_logits) = network.stream(volumes), fast.stream(volumes)
    assert torch.allclose(fast_features, features, rtol=1e-4, atol=1e-4 * float(features.abs().max()))
    assert torch.allclose(fast_logits, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))
