"""Built-in methods against the conformance kit, and the method contract's input checks."""

from __future__ import annotations

import pytest
import torch

from fewshot_cryoet import FscError
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.methods.matched import MatchedTemplates
from fewshot_cryoet.methods.protonet import ProtoNet
from fewshot_cryoet.methods.radial import RadialProfile, radial_profiles
from fewshot_cryoet.methods.siamese import Siamese
from fewshot_cryoet.methods.so3 import mean_nearest_neighbour_angle, rotation_grid
from fewshot_cryoet.methods.xcorr import CrossCorrelation
from fewshot_cryoet.testing import ConformanceError, check_method


@pytest.mark.parametrize("method", [ProtoNet, Siamese, CrossCorrelation, MatchedTemplates, RadialProfile])
def test_builtin_methods_pass_the_conformance_kit(method):
    params = ({"angular_step": 60} if method in (CrossCorrelation, MatchedTemplates)
              else {"channels": [4, 8, 8, 8]} if method.trainable else {})
    passed = check_method(method, params)
    assert any("save and load" in p for p in passed) and any("permutes the scores" in p for p in passed)


def test_conformance_kit_catches_a_method_that_ignores_class_labels():
    class Broken(CrossCorrelation):
        name = "broken"

        def predict(self, episode):
            prediction = super().predict(episode)
            prediction.scores = prediction.scores.sort(dim=1).values  # column order no longer means class
            return prediction

    with pytest.raises(ConformanceError, match="broken|Broken"):
        check_method(Broken, {"angular_step": 60})


def test_hyper_parameters_and_variants_are_validated():
    with pytest.raises(FscError, match="does not accept lr_typo"):
        ProtoNet({"lr_typo": 1})
    with pytest.raises(FscError, match="has no variant 'big'"):
        ProtoNet(variant="big")
    method = ProtoNet({"lr": 0.01})
    assert method.params["lr"] == 0.01 and method.params["train_way"] == 5
    assert ProtoNet({"lr": 0.01}).params_hash() == method.params_hash() != ProtoNet().params_hash()


@pytest.mark.parametrize(
    "text, episodes, minutes",
    [("10m", None, 10.0), ("90s", None, 1.5), ("1.5h", None, 90.0), ("500ep", 500, None), ("500ep,2m", 500, 2.0)],
)
def test_budget_parsing(text, episodes, minutes):
    budget = Budget.parse(text)
    assert budget.episodes == episodes and budget.minutes == pytest.approx(minutes) if minutes else budget.minutes is None


def test_bad_budget_names_the_setting_and_the_cli_its_option():
    from fewshot_cryoet.cli.terminal import error_text
    from fewshot_cryoet.core.errors import SettingError
    from fewshot_cryoet.tuning import parse_timeout

    with pytest.raises(SettingError, match="^budget 'soon': use e.g. 10m") as info:
        Budget.parse("soon")
    assert error_text(info.value).startswith("--budget 'soon': ")
    with pytest.raises(SettingError) as info:  # a timeout is parsed like a budget but named as itself
        parse_timeout("2x")
    assert error_text(info.value).startswith("--timeout '2x': give a time") and "budget" not in str(info.value)


def test_rotation_grid_spacing_follows_the_step():
    for step, expected_count in ((30, 551), (60, 69)):
        grid = rotation_grid(step)
        assert len(grid) == expected_count
        assert torch.allclose(torch.linalg.det(torch.from_numpy(grid)), torch.ones(len(grid), dtype=torch.float64))
        assert 0.7 * step < mean_nearest_neighbour_angle(grid) < step


def test_xcorr_finds_a_rotated_copy():
    """A support that is an exact rotated copy of the query must win against other classes."""
    from scipy.spatial.transform import Rotation

    from fewshot_cryoet.datasets.placement import TemplateBank
    from fewshot_cryoet.datasets.synthetic import synthetic_templates
    from fewshot_cryoet.episodes import Episode

    bank = TemplateBank(synthetic_templates(3))
    rotation = Rotation.from_euler("zyz", [40, 70, 10], degrees=True).as_quat()
    identity = Rotation.identity().as_quat()
    import numpy as np

    supports = bank.render(np.array([0, 1, 2]), np.stack([identity] * 3), np.zeros((3, 3)), 32)
    queries = bank.render(np.array([0, 1, 2]), np.stack([rotation] * 3), np.zeros((3, 3)), 32)
    episode = Episode(supports.unsqueeze(1), torch.arange(3), queries.unsqueeze(1), torch.arange(3),
                      ("a", "b", "c"), 10.0, float("inf"))
    scores = CrossCorrelation().predict(episode).scores
    assert scores.argmax(dim=1).tolist() == [0, 1, 2]
    assert scores.diagonal().min() > 0.9


def test_precision_is_validated_and_nonfinite_steps_are_skipped(tiny_dataset):
    from fewshot_cryoet.episodes import EpisodeSource
    from fewshot_cryoet.methods.base import FitContext

    with pytest.raises(FscError, match=r"precision='fp16' is not valid; expected one of auto, bf16, fp32"):
        ProtoNet({"precision": "fp16"})  # refused when the method is configured, before any network is built

    class Exploding(ProtoNet):
        name = "exploding"

        def training_loss(self, episode):
            return super().training_loss(episode) * float("nan")

    method = Exploding({"channels": [4, 4, 4, 4]})
    before = {k: v.clone() for k, v in method.network.state_dict().items()}
    source = EpisodeSource(tiny_dataset, "train", 1.0)
    report = method.fit(FitContext(source, None, Budget(episodes=5), torch.device("cpu")))
    assert report.episodes == 5 and report.skipped_steps == 5
    after = method.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    assert method._bf16_failed  # after 3 non-finite steps, auto precision trains in fp32
    assert not method.autocast(training=True)._enabled


def test_training_seeds_draw_their_own_initial_weights_and_never_reset_trained_ones(tiny_dataset):
    """Seed-to-seed spread must include initialisation; a second fit continues, it does not restart."""
    from fewshot_cryoet.episodes import EpisodeSource
    from fewshot_cryoet.methods.base import FitContext

    source = EpisodeSource(tiny_dataset, "train", 1.0)
    small = {"channels": [4, 4, 4, 4]}

    def initial_and_trained(seed: int) -> tuple[dict, dict]:
        method = ProtoNet(small)
        initial = {}
        original = method.training_loss

        def loss(episode):
            if not initial:
                initial.update({k: v.clone() for k, v in method.network.state_dict().items()})
            return original(episode)
        method.training_loss = loss
        method.fit(FitContext(source, None, Budget(episodes=2), torch.device("cpu"), seed=seed))
        return initial, {k: v.clone() for k, v in method.network.state_dict().items()}

    init0, trained0 = initial_and_trained(0)
    init0_again, trained0_again = initial_and_trained(0)
    init1, _ = initial_and_trained(1)
    weights = [k for k in init0 if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(init0[k], init0_again[k]) and torch.equal(trained0[k], trained0_again[k]) for k in weights)
    assert not all(torch.equal(init0[k], init1[k]) for k in weights)
    assert all(torch.equal(init0[k], ProtoNet(small).network.state_dict()[k]) for k in weights)  # seed 0 as before

    method = ProtoNet(small)
    method.fit(FitContext(source, None, Budget(episodes=2), torch.device("cpu"), seed=0))
    trained = {k: v.clone() for k, v in method.network.state_dict().items()}
    method.training_loss = lambda episode: sum(p.sum() for p in method.network.parameters()) * 0.0
    method.fit(FitContext(source, None, Budget(episodes=1), torch.device("cpu"), seed=1))  # a zero-gradient step
    assert all(torch.allclose(trained[k], method.network.state_dict()[k]) for k in weights)


def test_radial_profile_is_rotation_invariant_and_tells_sizes_apart():
    """The floor sees size only: a turned particle keeps its profile, and a bigger one differs."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    from fewshot_cryoet.datasets.placement import TemplateBank
    from fewshot_cryoet.datasets.synthetic import synthetic_templates
    from fewshot_cryoet.episodes import Episode

    bank = TemplateBank(synthetic_templates(3, voxel_size=10.0))
    turned = Rotation.from_euler("zyz", [40, 70, 10], degrees=True).as_quat()
    identity = Rotation.identity().as_quat()
    upright = bank.render(np.array([0, 1, 2]), np.stack([identity] * 3), np.zeros((3, 3)), 32).unsqueeze(1)
    rotated = bank.render(np.array([0, 1, 2]), np.stack([turned] * 3), np.zeros((3, 3)), 32).unsqueeze(1)
    a, b = radial_profiles(upright, 16), radial_profiles(rotated, 16)
    for x, y in zip(a, b):  # the same profile up to the sampling of small inner shells
        assert float(torch.corrcoef(torch.stack([x, y]))[0, 1]) > 0.98
    episode = Episode(upright, torch.arange(3), rotated, torch.arange(3), ("a", "b", "c"), 10.0, float("inf"))
    assert RadialProfile().predict(episode).scores.argmax(dim=1).tolist() == [0, 1, 2]


def test_a_longer_training_hands_over_exactly_the_models_of_smaller_budgets(tiny_val2_dataset):
    """Budget curves train once: the snapshot at s episodes equals a training of s episodes (same
    weights, temperature and selection), and taking it leaves the longer training unchanged."""
    from dataclasses import replace

    from fewshot_cryoet.evaluation.runner import fit_context

    def fit(budget: int, snapshots: tuple[int, ...] = ()):
        method = ProtoNet({"channels": [4, 8], "val_every": 2})
        kept = {}

        def snapshot(step, report):
            kept[step] = ({k: v.clone() for k, v in method.network.state_dict().items()}, method.temperature, report)
        context = fit_context(tiny_val2_dataset, 1.0, False, Budget(episodes=budget), torch.device("cpu"),
                              queries=2, seed=0)  # validation accuracy rises at every check
        report = method.fit(replace(context, snapshots=snapshots, snapshot=snapshot))
        return {k: v.clone() for k, v in method.network.state_dict().items()}, method.temperature, report, kept

    alone4, temperature4, report4, _ = fit(4)
    alone8, temperature8, report8, _ = fit(8)
    long8, long_temperature, long_report, kept = fit(8, snapshots=(3, 4, 8))
    assert sorted(kept) == [4]  # 3 is no multiple of val_every, 8 is the training itself
    state4, snapshot_temperature, snapshot_report = kept[4]
    assert all(torch.equal(state4[k], alone4[k]) for k in alone4)
    assert snapshot_temperature == temperature4 == snapshot_report.temperature
    assert snapshot_report.episodes == 4 and snapshot_report.history == report4.history
    assert snapshot_report.best_validation_accuracy == report4.best_validation_accuracy
    assert all(torch.equal(long8[k], alone8[k]) for k in alone8) and long_temperature == temperature8
    assert long_report.history == report8.history
    assert not all(torch.equal(alone4[k], alone8[k]) for k in alone4)  # the two budgets differ at all
