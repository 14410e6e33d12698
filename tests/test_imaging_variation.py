"""Imaging that varies per particle (amplitude contrast, CTF envelope, low-pass), a structured
background, inverted contrast, and the named presets built from them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fewshot_cryoet import api
from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.datasets.presets import PRESETS, apply_preset
from fewshot_cryoet.datasets.simulate import SimulationConfig, Simulator, add_noise, make_plan
from fewshot_cryoet.datasets.synthetic import synthetic_templates

BASE = SimulationConfig(box=16, voxel_size=20.0, route="fourier")
TILTED = replace(BASE, route="tilt-series")


@pytest.fixture(scope="module")
def templates():
    return synthetic_templates(3, voxel_size=20.0)


def _simulate(templates, config, seed=4, per_class=3):
    plan = make_plan(templates, per_class, config, seed)
    return plan, Simulator(templates, config).simulate(plan, np.arange(len(plan)))


def _high_frequency_power(volumes: torch.Tensor) -> float:
    spectrum = torch.fft.rfftn(volumes, dim=(-3, -2, -1)).abs() ** 2
    k = torch.fft.fftfreq(volumes.shape[-1]).abs()
    outer = k[:, None, None] + k[None, :, None] + torch.fft.rfftfreq(volumes.shape[-1]).abs()[None, None, :] > 0.5
    return float(spectrum[..., outer].sum() / spectrum.sum())


@pytest.mark.parametrize("route", ["fourier", "tilt-series"])
def test_a_degenerate_range_simulates_the_same_bytes_as_a_value(templates, route):
    config = replace(BASE, route=route)
    _, plain = _simulate(templates, config)
    plan, same = _simulate(templates, replace(config, amplitude_contrast=(0.07, 0.07), envelope_sigma=(0.4, 0.4)))
    assert plan.variations == {}
    assert torch.equal(plain.signal, same.signal) and torch.equal(plain.noise, same.noise)


def test_ranges_are_drawn_per_particle_and_recorded(templates, tmp_path):
    config = replace(BASE, amplitude_contrast=(0.1, 0.3), envelope_sigma=(0.2, 0.3), lowpass_angstrom=(30.0, 50.0))
    plan, batch = _simulate(templates, config)
    for name, (lo, hi) in config.ranged().items():
        values = plan.variations[name]
        assert values.shape == (len(plan),) and (values >= lo).all() and (values <= hi).all() and values.std() > 0
    again, _ = _simulate(templates, config)
    assert all(np.array_equal(again.variations[k], v) for k, v in plan.variations.items())  # seeded
    _, plain = _simulate(templates, BASE)
    assert _high_frequency_power(batch.signal) < _high_frequency_power(plain.signal)  # low-passed harder
    data = api.simulate(tmp_path / "ranged", classes=3, per_class=3, snrs=[1.0], config=config)
    labels = data.particles
    recorded = make_plan(templates, 3, config, 0).variations  # api.simulate's seed is 0
    for name in ("amplitude_contrast", "envelope_sigma", "lowpass_angstrom"):
        assert np.allclose(labels[name], recorded[name])


def test_inverted_contrast_and_structured_background(templates):
    _, plain = _simulate(templates, replace(BASE))
    _, inverted = _simulate(templates, replace(BASE, contrast="negative"))
    assert torch.equal(inverted.signal, -plain.signal)
    _, structured = _simulate(templates, replace(BASE, background=0.6))
    assert torch.equal(structured.signal, plain.signal)
    noisy = add_noise(structured, 0.5)
    assert np.allclose(noisy.snr_measured, 0.5, rtol=1e-3)  # the SNR still means var(signal) / var(noise)
    assert _high_frequency_power(structured.noise) < _high_frequency_power(plain.noise)  # 1/f: redder noise


@pytest.mark.parametrize("changes, setting", [
    ({"amplitude_contrast": (0.3, 0.1)}, "amplitude_contrast"),
    ({"amplitude_contrast": 1.2}, "amplitude_contrast"),
    ({"envelope_sigma": 0.0}, "envelope_sigma"),
    ({"lowpass_angstrom": (-5.0, 10.0)}, "lowpass_angstrom"),
    ({"defocus_um": (-1.0, 2.0)}, "defocus"),
    ({"tilt_min": -95.0}, "tilt_range"),
    ({"background": 1.0}, "background"),
    ({"contrast": "sideways"}, "contrast"),
])
def test_impossible_imaging_is_refused_naming_the_setting(changes, setting):
    with pytest.raises(SettingError) as info:
        replace(BASE, **changes)
    assert info.value.setting == setting


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_simulates(name, templates):
    config = apply_preset(TILTED, name)
    assert config == TILTED if name == "default" else config != TILTED
    _, batch = _simulate(templates, config, per_class=1)
    assert torch.isfinite(batch.signal).all() and batch.signal.std() > 0


def test_preset_from_the_command_line_with_an_override(tmp_path):
    from click.testing import CliRunner

    from fewshot_cryoet.cli import main
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset

    result = CliRunner().invoke(main, ["simulate", "--classes", "3", "--per-class", "2",
                                       "--box", "16", "--voxel-size", "20", "--snr", "1", "--preset", "all-shifted",
                                       "--tilt-step", "4", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    simulation = SubtomogramDataset(tmp_path / "d").manifest["simulation"]
    assert simulation["tilt_step"] == 4.0 and simulation["tilt_max"] == 45.0  # the option beats the preset
    assert simulation["defocus_um"] == [0.5, 1.5] and simulation["background"] == 0.5
    bad = CliRunner().invoke(main, ["simulate", "--classes", "2", "--envelope", "0.3-0.1", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--envelope" in bad.output


# -- tilt schemes, misalignment and pixel size drawn per particle ---------------------------------


def test_tilt_schemes_are_whole_degrees_recorded_and_applied(templates):
    from fewshot_cryoet.datasets.simulate import tilt_weights

    config = replace(TILTED, tilt_min=(-70.0, -40.0), tilt_max=(40.0, 70.0), tilt_step=(1.0, 3.0))
    plan, batch = _simulate(templates, config)
    for name in ("tilt_min", "tilt_max", "tilt_step"):
        values = plan.variations[name]
        assert np.array_equal(values, np.round(values)) and values.std() > 0
    assert list(config.tilts) == list(range(-70, 71))  # the 1° grid every scheme is taken from
    weights = tilt_weights(np.arange(-10.0, 11.0), np.array([-10.0, -4.0]), np.array([10.0, 2.0]), np.array([5.0, 3.0]))
    assert [np.arange(-10, 11)[w.numpy() > 0].tolist() for w in weights] == [[-10, -5, 0, 5, 10], [-4, -1, 2]]
    # batching never changes a particle: its scheme is drawn up front, its weights per particle
    simulator = Simulator(templates, config)
    halves = torch.cat([simulator.simulate(plan, np.arange(4)).signal, simulator.simulate(plan, np.arange(4, 9)).signal])
    assert torch.allclose(halves, batch.signal, atol=1e-5)


def test_a_narrower_tilt_range_per_particle_widens_its_missing_wedge(templates):
    from fewshot_cryoet.datasets.imaging import wedge_mask

    wide = replace(TILTED, ctf=False, tilt_min=(-80.0, -80.0), tilt_max=(79.0, 80.0), tilt_step=1.0)
    narrow = replace(wide, tilt_min=(-40.0, -40.0), tilt_max=(39.0, 40.0))
    outside = 1 - wedge_mask((16,) * 3, -45, 45)  # frequencies only tilts beyond ±45° sample

    def wedge_power(config):
        volumes = _simulate(templates, config, per_class=2)[1].signal
        spectrum = torch.fft.rfftn(volumes, dim=(-3, -2, -1)).abs() ** 2
        return float((spectrum * outside).sum() / spectrum.sum())

    assert wedge_power(narrow) < 0.5 * wedge_power(wide)


def test_misalignment_degrades_with_its_size_deterministically_and_zero_changes_nothing(templates):
    _, plain = _simulate(templates, TILTED)
    plan, none = _simulate(templates, replace(TILTED, alignment_jitter=(0.0, 0.0)))
    assert torch.equal(plain.signal, none.signal)

    def agreement(volumes):  # mean correlation with the aligned reconstruction
        return np.mean([np.corrcoef(v.flatten(), p.flatten())[0, 1] for v, p in zip(volumes, plain.signal)])

    _, slight = _simulate(templates, replace(TILTED, alignment_jitter=0.3))
    config = replace(TILTED, alignment_jitter=(1.0, 2.0))
    plan, jittered = _simulate(templates, config)
    assert (plan.variations["alignment_jitter"] >= 1).all()
    assert agreement(jittered.signal) < agreement(slight.signal) < 0.999
    again = Simulator(templates, config).simulate(plan, np.arange(3, 6)).signal  # another batch, same particles
    assert torch.allclose(again, jittered.signal[3:6], atol=1e-5)


def test_acquisition_pixel_size_images_on_its_grid_and_resamples(templates):
    _, plain = _simulate(templates, BASE)
    _, same = _simulate(templates, replace(BASE, acquisition_voxel_size=BASE.voxel_size))
    assert torch.allclose(same.signal, plain.signal, atol=1e-5)  # resampling onto the same grid is the identity
    plan, coarse = _simulate(templates, replace(BASE, acquisition_voxel_size=(28.0, 32.0)))
    assert set(np.unique(plan.variations["acquisition_voxel_size"]) * 4 % 1) == {0}  # quantised to 0.25 Å
    assert coarse.signal.shape == plain.signal.shape and torch.equal(coarse.mask, plain.mask)
    assert _high_frequency_power(coarse.signal) < 0.7 * _high_frequency_power(plain.signal)  # coarser pixels: less detail
    correlation = np.corrcoef(coarse.signal.flatten(), plain.signal.flatten())[0, 1]
    assert correlation > 0.8  # the same particles at their true size, not magnified


@pytest.mark.parametrize("changes, setting", [
    ({"tilt_min": (-50.0, 30.0), "tilt_max": (20.0, 60.0)}, "tilt_range"),
    ({"tilt_max": (50.0, 95.0)}, "tilt_range"),
    ({"tilt_step": (0.2, 1.0), "tilt_max": (50.0, 60.0)}, "tilt_step"),
    ({"alignment_jitter": -1.0, "route": "tilt-series"}, "alignment_jitter"),
    ({"alignment_jitter": 1.0}, "alignment_jitter"),  # the Fourier route has no tilt series to misalign
    ({"acquisition_voxel_size": 0.0}, "acquisition_voxel_size"),
    ({"acquisition_voxel_size": (30.0, 100.0)}, "acquisition_voxel_size"),
])
def test_impossible_tilts_jitter_and_pixel_sizes_are_refused(changes, setting):
    with pytest.raises(SettingError) as info:
        replace(BASE, **changes)
    assert info.value.setting == setting


def test_new_settings_at_their_defaults_leave_the_manifest_and_hash_as_before():
    assert "alignment_jitter" not in BASE.to_dict() and "acquisition_voxel_size" not in BASE.to_dict()
    shifted = replace(TILTED, alignment_jitter=0.5)
    assert SimulationConfig.from_dict(shifted.to_dict()) == shifted


def test_tilt_ranges_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from fewshot_cryoet.cli import main
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset

    result = CliRunner().invoke(main, ["simulate", "--classes", "3", "--per-class", "2", "--box", "16",
                                       "--voxel-size", "20", "--snr", "1", "--tilt-range=-70..-50,50..70",
                                       "--tilt-step", "1..3", "--alignment-jitter", "0.5", "--acquisition-voxel-size",
                                       "22..26", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    data = SubtomogramDataset(tmp_path / "d")
    simulation = data.manifest["simulation"]
    assert simulation["tilt_min"] == [-70.0, -50.0] and simulation["tilt_step"] == [1.0, 3.0]
    assert simulation["alignment_jitter"] == 0.5 and simulation["acquisition_voxel_size"] == [22.0, 26.0]
    assert data.particles["tilt_max"].between(50, 70).all()
    bad = CliRunner().invoke(main, ["simulate", "--classes", "2", "--tilt-range=-50..-70,50", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--tilt-range" in bad.output
