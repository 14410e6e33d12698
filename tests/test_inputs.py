"""The input normalisation and test-time augmentation every method inherits: what they do to
volumes, that the base class applies them exactly once on every path, and that they travel with
the method's settings (hash, label, model folder)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fewshot_cryoet import api
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes
from fewshot_cryoet.methods.base import FewShotMethod, Prediction, ScoreKind
from fewshot_cryoet.methods.inputs import (INPUT_DEFAULTS, ROBUST_INPUTS, WEDGE_PRESERVING_FLIPS, InputNormalisation,
                                           _sphere, turned_at_random)
from fewshot_cryoet.plugins import require_methods


def _volumes(seed: int = 0, count: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn((count, 1, size, size, size), generator=torch.Generator().manual_seed(seed))


def _radial_filter(volumes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Volumes seen through a Gaussian envelope exp(−(k/σ)²), k in cycles per voxel."""
    k = torch.sqrt(torch.fft.fftfreq(16).view(-1, 1, 1) ** 2 + torch.fft.fftfreq(16).view(1, -1, 1) ** 2
                   + torch.fft.rfftfreq(16).view(1, 1, -1) ** 2)
    return torch.fft.irfftn(torch.fft.rfftn(volumes, dim=(-3, -2, -1)) * torch.exp(-(k / sigma) ** 2),
                            s=(16,) * 3, dim=(-3, -2, -1))


def test_default_inputs_leave_volumes_as_stored():
    volumes = _volumes()
    assert InputNormalisation().identity and InputNormalisation()(volumes, 10.0) is volumes


def test_sphere_zscore_ignores_the_corners():
    volumes = _volumes()
    volumes[..., :3, :3, :3] += 50.0  # a bright neighbour in a corner
    out = InputNormalisation(sphere=0.8)(volumes, 10.0)
    weights = _sphere((16, 16, 16), 0.8, "cpu")
    inside = out[..., weights > 0.999]
    assert torch.allclose(inside.mean(-1), torch.zeros(3), atol=0.05)
    assert torch.allclose(out[..., :3, :3, :3], torch.zeros(1))  # outside the sphere: zero
    assert abs(float(inside.std()) - 1) < 0.1


def test_whitening_undoes_an_envelope_the_model_never_saw():
    """Two views of the same volumes through different CTF envelopes agree far better after
    whitening: what a B-factor change does to a model's input is removed."""
    volumes = _radial_filter(_volumes(), 0.3)
    sharp, blurred = volumes, _radial_filter(volumes, 0.15)

    def agreement(a, b):
        return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).mean())

    plain = InputNormalisation(sphere=0.0, lowpass=40.0)
    whitened = InputNormalisation(whiten=True, lowpass=40.0)
    assert agreement(whitened(sharp, 10.0), whitened(blurred, 10.0)) > agreement(plain(sharp, 10.0), plain(blurred, 10.0)) + 0.05


def test_the_wedge_step_makes_two_tilt_ranges_give_the_same_input():
    """The same particles reconstructed from ±60° and from ±45° tilts: as stored they differ (the
    wider range measured more), with ``input_wedge=40`` both keep only the ±40° double cone, so
    a model sees the same input from either microscope."""
    from fewshot_cryoet.datasets.imaging import wedge_mask

    volumes = _volumes()

    def acquired(tilt: float) -> torch.Tensor:
        spectrum = torch.fft.rfftn(volumes, dim=(-3, -2, -1)) * wedge_mask((16,) * 3, -tilt, tilt)
        return torch.fft.irfftn(spectrum, s=(16,) * 3, dim=(-3, -2, -1))

    wide, narrow = acquired(60), acquired(45)
    plain, wedged = InputNormalisation(), InputNormalisation(wedge=40.0)
    assert (plain(wide, 10.0) - plain(narrow, 10.0)).abs().max() > 0.1
    assert torch.allclose(wedged(wide, 10.0), wedged(narrow, 10.0), atol=1e-5)
    # what the step keeps is exactly the ±40° cone: nothing outside it survives
    outside = (1 - wedge_mask((16,) * 3, -40, 40)).bool()
    spectrum = torch.fft.rfftn(wedged(volumes, 10.0), dim=(-3, -2, -1))
    assert spectrum.abs()[..., outside].max() < 1e-4 < spectrum.abs()[..., ~outside].max()
    assert "±40° tilt range" in wedged.describe()


def test_lowpass_halves_the_amplitude_at_the_stated_resolution():
    volumes = torch.zeros(1, 1, 16, 16, 16)
    volumes[0, 0, 0, 0, 4] = 1.0  # a delta: flat spectrum
    out = InputNormalisation(lowpass=40.0)(volumes, 10.0)  # 1/40 Å⁻¹ = 4 steps of 1/160 Å⁻¹ on a 16-voxel grid
    amplitude = torch.fft.rfftn(out[0, 0]).abs()
    assert math.isclose(float(amplitude[0, 0, 4] / amplitude[0, 0, 1]), 0.5 / math.exp(-math.log(2) / 16), rel_tol=1e-3)


class Recorder(FewShotMethod):
    """Records the volumes it is given; its 'segmentation' is the query itself, which makes the
    test-time augmentation's un-turning checkable exactly."""

    name = "recorder"
    description = "records its inputs (tests only)"
    segments = True
    score_kind = ScoreKind.LOGITS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def predict(self, episode):
        self.seen.append(episode.query.clone())
        scores = episode.query.flatten(1)[:, : episode.n_way] * 1.0  # depends on the turn
        return Prediction(scores, episode.query.clamp(0, 1))


class CallsSuper(Recorder):
    name = "calls-super"

    def predict(self, episode):
        return super().predict(episode)


def _episode(dataset):
    return load_episode(dataset, sample_episodes(dataset, EpisodeSpec("test", 3, 1, 2), 1), 0, 1.0, with_masks=True)


def test_the_base_class_normalises_exactly_once_even_through_super(tiny_dataset):
    episode = _episode(tiny_dataset)
    params = {"input_lowpass": 50.0, "input_sphere": 0.9}
    expected = InputNormalisation(lowpass=50.0, sphere=0.9)(episode.query, episode.voxel_size)
    for cls in (Recorder, CallsSuper):
        method = cls(params)
        method.predict(episode)
        assert len(method.seen) == 1 and torch.allclose(method.seen[0], expected, atol=1e-6)


def test_test_time_augmentation_turns_the_queries_and_turns_masks_back(tiny_dataset):
    episode = _episode(tiny_dataset)
    method = Recorder({"tta": 4})
    prediction = method.predict(episode)
    assert len(method.seen) == 4  # identity and three 180° turns that keep the wedge in place
    assert not torch.equal(method.seen[1], method.seen[0])
    assert torch.allclose(prediction.probabilities, episode.query.clamp(0, 1), atol=1e-6)  # un-turned exactly
    probabilities = torch.stack([torch.softmax(s.flatten(1)[:, :3], 1) for s in method.seen]).mean(0)
    assert torch.allclose(torch.softmax(prediction.scores, 1), probabilities, atol=1e-5)


def test_rotation_augmentation_turns_each_volume_and_its_mask_by_a_wedge_preserving_rotation(tiny_dataset):
    import numpy as np

    episode = _episode(tiny_dataset)
    turned = turned_at_random(episode, np.random.default_rng(3))
    again = turned_at_random(episode, np.random.default_rng(3))
    assert torch.equal(turned.support, again.support) and torch.equal(turned.query, again.query)  # seeded
    used = set()
    for role in ("support", "query"):
        before, after = getattr(episode, role), getattr(turned, role)
        masks_before, masks_after = getattr(episode, f"{role}_masks"), getattr(turned, f"{role}_masks")
        for volume, result, mask, mask_result in zip(before, after, masks_before, masks_after):
            turn = next(i for i, flips in enumerate(WEDGE_PRESERVING_FLIPS) if torch.equal(volume.flip(flips), result))
            assert torch.equal(mask.flip(WEDGE_PRESERVING_FLIPS[turn]), mask_result)  # the mask turns with it
            used.add(turn)
    assert len(used) > 1  # not every volume got the same turn
    assert torch.equal(turned.query_labels, episode.query_labels) and turned.query_ids is None


def test_rotation_augmentation_trains_reproducibly_and_leaves_training_without_it_unchanged(tiny_dataset):
    from fewshot_cryoet.core.types import Budget
    from fewshot_cryoet.evaluation.fitting import fit_context

    protonet = require_methods(["protonet"])[0]
    tiny = {"channels": [4, 8], "val_every": 100}

    def trained(**params):
        method = protonet({**tiny, **params})
        method.fit(fit_context(tiny_dataset, 1.0, False, Budget(episodes=3), torch.device("cpu"), 2, 0, 1))
        return torch.cat([p.flatten() for p in method.network.parameters()])

    assert protonet(tiny).params_hash() == protonet({**tiny, "train_turns": 1}).params_hash()
    assert "train_turns=4" in protonet({**tiny, "train_turns": 4}).label
    plain, turned, turned_again = trained(), trained(train_turns=4), trained(train_turns=4)
    assert torch.equal(turned, turned_again) and not torch.equal(plain, turned)
    with pytest.raises(FscError, match="train_turns"):
        protonet({**tiny, "train_turns": 2})


def test_inputs_change_label_and_hash_but_defaults_keep_the_old_hash():
    protonet = require_methods(["protonet"])[0]
    plain, robust = protonet(), protonet({"input_whiten": True, "input_lowpass": 30.0})
    assert plain.label == "protonet" and robust.label == "protonet (input_lowpass=30, input_whiten=True)"
    assert plain.params_hash() != robust.params_hash()
    without_inputs = {k: v for k, v in plain.params.items() if k not in INPUT_DEFAULTS and k not in ("compile", "train_turns")}
    import hashlib

    assert plain.params_hash() == hashlib.sha256(json.dumps(without_inputs, sort_keys=True).encode()).hexdigest()[:12]


def test_a_model_folder_records_its_inputs_and_refuses_what_it_cannot_apply(tiny_val2_dataset, tmp_path):
    card = api.train("protonet", tmp_path / "model", dataset=tiny_val2_dataset, snr=1.0, budget="2ep",
                     params={"input_whiten": True, "input_lowpass": 60.0, "tta": 4})
    assert "whitened" in card.normalisation and "60 Å" in card.normalisation
    method = api.load_method(tmp_path / "model", device="cpu")
    assert method.params["tta"] == 4 and method.inputs == InputNormalisation(60.0, True, 0.0)
    path = tmp_path / "model" / "model.json"
    data = json.loads(path.read_text())
    data["normalisation"] = "v9: histogram equalisation"
    path.write_text(json.dumps(data))
    with pytest.raises(FscError, match="cannot apply") as info:
        api.load_method(tmp_path / "model", device="cpu")
    assert str(tmp_path / "model") in str(info.value) and "\n" not in str(info.value)


def test_training_at_several_snr_levels_draws_each_and_is_recorded(tiny_val2_dataset, tmp_path):
    import numpy as np

    from fewshot_cryoet.episodes import EpisodeSource

    one = EpisodeSource(tiny_val2_dataset, "train", 1.0, with_masks=False)
    same = EpisodeSource(tiny_val2_dataset, "train", [1.0], with_masks=False)
    a, b = (s.sample(2, 1, 2, np.random.default_rng(5)) for s in (one, same))
    assert torch.equal(a.query, b.query)  # a single level keeps the random stream it always had
    mixed = EpisodeSource(tiny_val2_dataset, "train", [math.inf, 1.0], with_masks=False)
    rng = np.random.default_rng(0)
    assert {mixed.sample(2, 1, 2, rng).snr for _ in range(20)} == {math.inf, 1.0}
    card = api.train("protonet", tmp_path / "m", dataset=tiny_val2_dataset, snr=[math.inf, 1.0], budget="2ep")
    assert card.snr == "inf,1"
    assert {k: card.params[k] for k in INPUT_DEFAULTS} == INPUT_DEFAULTS  # fsc train's default: plain inputs
    robust = api.train("protonet", tmp_path / "r", dataset=tiny_val2_dataset, snr=1.0, budget="2ep", inputs="robust")
    assert {k: robust.params[k] for k in ROBUST_INPUTS} == ROBUST_INPUTS
    assert robust.normalisation == InputNormalisation.from_params(ROBUST_INPUTS).describe()
    with pytest.raises(FscError, match="one data set holding them all"):
        api.train("protonet", tmp_path / "n", snr=[math.inf, 1.0], budget="2ep", per_class=2)


def test_fsc_train_simulates_domain_randomised_data_by_default(tmp_path, monkeypatch, tiny_val2_dataset):
    monkeypatch.setenv("FSC_CACHE_DIR", str(tmp_path / "cache"))
    card = api.train("protonet", tmp_path / "m", dataset="synthetic", snr=1000.0, budget="1ep", per_class=3,
                     queries_per_class=2, params={"channels": [4, 8]})  # any registered set (default: synthetic-512)
    assert card.dataset == "synthetic@randomised"
    simulated = next((tmp_path / "cache" / "datasets").glob("synthetic-randomised-*"))
    config = json.loads((simulated / "manifest.json").read_text())["simulation"]
    assert config["defocus_um"] == [0.5, 8.0] and config["acquisition_voxel_size"] == [8.0, 16.0]
    folder = api.train("protonet", tmp_path / "f", dataset=tiny_val2_dataset, snr=1.0, budget="1ep")
    assert folder.dataset == "tiny-val2"  # a data set folder keeps the imaging it was made with
    with pytest.raises(FscError, match="applies only to data simulated on demand"):
        api.train("protonet", tmp_path / "g", dataset=tiny_val2_dataset, snr=1.0, budget="1ep", imaging="randomised")
    with pytest.raises(FscError, match="imaging 'sharp'"):
        api.train("protonet", tmp_path / "h", snr=1000.0, budget="1ep", imaging="sharp")
