"""``matched``: learned template matching starts as xcorr, filters isotropically, and trains."""

from __future__ import annotations

import pytest
import torch

from fewshot_cryoet import api
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.types import Budget
from fewshot_cryoet.datasets.imaging import radial_frequency
from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes
from fewshot_cryoet.evaluation.fitting import fit_context
from fewshot_cryoet.methods.matched import INITIAL_SCALE, MatchedFilter, MatchedTemplates, with_background
from fewshot_cryoet.methods.xcorr import CrossCorrelation

COARSE = {"angular_step": 60}  # 36 rotations: the tests' search, not the default 551


def _episodes(dataset, count=3, way=3):
    specs = sample_episodes(dataset, EpisodeSpec("test", way, 1, 2), count)
    return [load_episode(dataset, specs, i, 1.0) for i in range(count)]


def test_untrained_it_is_xcorr(tiny_dataset):
    """Gains 1, weights 1, scale 40: the same correlations as xcorr (to FFT round-off), scaled."""
    matched, xcorr = MatchedTemplates(COARSE), CrossCorrelation(COARSE)
    for episode in _episodes(tiny_dataset):
        ours, theirs = matched.predict(episode).scores, xcorr.predict(episode).scores
        assert torch.allclose(ours / INITIAL_SCALE, theirs, atol=1e-5)
        assert torch.equal(ours.argmax(1), theirs.argmax(1))


def _adapted_filter() -> MatchedFilter:
    """A filter with static gains and an adaptive part that both do something."""
    network = MatchedFilter(bands=6, shells=4, adaptive=5)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        network.gain.copy_(torch.tensor([0.5, -0.3, 1.0, 0.2, -0.9, 0.4]))
        for parameter in network.adapt.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return network


def test_the_filter_is_isotropic_so_it_commutes_with_rotation():
    """Filtering then turning by 90° equals turning then filtering (the adaptive gains too: band
    powers do not change when a volume turns): the search over rotations of filtered supports is
    the search over filtered rotations."""
    network = _adapted_filter()
    volume = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for dims in ((2, 3), (3, 4), (2, 4)):
            turned_then_filtered = network(torch.rot90(volume, 1, dims))
            filtered_then_turned = torch.rot90(network(volume), 1, dims)
            assert torch.allclose(turned_then_filtered, filtered_then_turned, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(network(volume), volume, atol=1e-2)  # and it does filter


def test_adaptive_gains_follow_the_shape_of_a_volumes_spectrum_not_its_scale():
    """Each volume gets gains from its own band powers: a scaled copy gets the same gains, a
    smoothed copy (less power at high frequencies) other gains; without ``adaptive`` all share one."""
    network = _adapted_filter()
    volume = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    smoothed = torch.nn.functional.avg_pool3d(volume, 3, stride=1, padding=1)
    with torch.no_grad():
        gains = network.log_gains(torch.cat([volume, 3 * volume, smoothed]))
        assert torch.allclose(gains[0], gains[1], atol=1e-5)
        assert (gains[0] - gains[2]).abs().max() > 0.1
        static = MatchedFilter(bands=6, shells=4).log_gains(torch.cat([volume, smoothed]))
        assert torch.equal(static[0], static[1])


def test_training_moves_the_filter_reproducibly_and_survives_a_checkpoint(tiny_val2_dataset, tmp_path):
    def trained(seed):
        method = MatchedTemplates({**COARSE, "val_every": 2})
        report = method.fit(fit_context(tiny_val2_dataset, 1.0, False, Budget(episodes=4), torch.device("cpu"), 2,
                                        seed, 1))
        return method, report

    method, report = trained(0)
    again, _ = trained(0)
    other, _ = trained(1)
    learned = torch.cat([p.detach().flatten() for p in method.network.parameters()])
    assert report.episodes == 4 and [step for step, *_ in report.history] == [2, 4]
    assert torch.equal(learned, torch.cat([p.detach().flatten() for p in again.network.parameters()]))
    assert not torch.equal(learned, torch.cat([p.detach().flatten() for p in other.network.parameters()]))
    assert not torch.allclose(method.network.gain.detach(), torch.zeros(8))  # it learned something
    episode = _episodes(tiny_val2_dataset, 1, way=2)[0]
    method.save(tmp_path / "m.pt", box=16)
    loaded = MatchedTemplates({**COARSE, "val_every": 2})
    loaded.load(tmp_path / "m.pt", box=16)
    assert torch.equal(loaded.predict(episode).scores, method.predict(episode).scores)


def test_benched_beside_xcorr_on_the_same_episodes(tiny_val2_dataset, tmp_path):
    frame = api.bench(["matched", "xcorr"], dataset=tiny_val2_dataset, snrs=[1.0], ways=[2], episodes=3,
                      queries_per_class=2, budget="2ep", store=tmp_path / "r.sqlite",
                      params={"matched": COARSE, "xcorr": COARSE})
    rows = frame.set_index(["method", "episode"])["accuracy"]
    assert set(frame["method"]) == {"matched", "xcorr"} and len(frame) == 6
    assert rows.loc["matched"].between(0, 1).all()


def test_settings_are_checked_by_name():
    for bad in ({"bands": 1}, {"shells": 0}, {"angular_step": 0}):
        with pytest.raises(FscError, match=next(iter(bad))):
            MatchedTemplates(bad)


@pytest.mark.parametrize("setting", ["train_spectra", "train_background"])
def test_training_augmentations_are_seeded_and_off_by_default(tiny_val2_dataset, setting):
    """``train_spectra`` distorts each training volume's spectrum by random smooth gains and
    ``train_background`` adds a random share of 1/f noise: training with either repeats at one
    seed and differs from training without it; at 0 the hash is the hash from before the setting
    existed, and a negative value is refused by name."""
    def trained(**params):
        method = MatchedTemplates({**COARSE, "val_every": 100, **params})
        method.fit(fit_context(tiny_val2_dataset, 1.0, False, Budget(episodes=3), torch.device("cpu"), 2, 0, 1))
        return torch.cat([p.detach().flatten() for p in method.network.parameters()])

    plain, augmented, again = trained(), trained(**{setting: 1.0}), trained(**{setting: 1.0})
    assert torch.equal(augmented, again) and not torch.equal(plain, augmented)
    assert MatchedTemplates({setting: 0.0}).params_hash() == MatchedTemplates().params_hash()
    assert f"{setting}=1" in MatchedTemplates({setting: 1.0}).label
    with pytest.raises(FscError, match=setting):
        MatchedTemplates({setting: -1.0})


def test_spectral_distortion_is_seeded_and_changes_the_volume():
    volume = torch.randn(3, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    once = MatchedFilter(8, 8).perturbed(volume, 1.0)
    torch.manual_seed(0)
    assert torch.equal(once, MatchedFilter(8, 8).perturbed(volume, 1.0)) and not torch.allclose(once, volume, atol=0.1)


def test_added_background_is_low_frequency_noise_of_at_most_the_share_asked():
    """The added noise's variance is at most ``most`` × the volume's, and its power falls with
    frequency (1/f), so it is the structured background the spectral distortion cannot make."""
    volume = torch.randn(64, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    added = with_background(volume, 0.5) - volume
    share = added.var(dim=(-3, -2, -1)) / volume.var(dim=(-3, -2, -1))
    assert share.max() <= 0.5 + 1e-4 and share.min() < 0.1 and share.max() > 0.4
    power = torch.fft.rfftn(added, dim=(-3, -2, -1)).abs().square().mean(dim=(0, 1))
    k = radial_frequency((16, 16, 16), 1.0)
    low, high = power[(k > 0) & (k < 0.15)].mean(), power[k > 0.35].mean()
    assert low > 10 * high
