"""Imaging that varies per particle (amplitude contrast, CTF envelope, low-pass), a structured
background, inverted contrast, and the named presets built from them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fewshot_cryoet import api
from fewshot_cryoet.datasets.presets import PRESETS, apply_preset
from fewshot_cryoet.datasets.simulate import SimulationConfig, Simulator, add_noise, make_plan
from fewshot_cryoet.datasets.synthetic import synthetic_templates
from fewshot_cryoet.errors import SettingError

BASE = SimulationConfig(box=16, voxel_size=20.0, route="fourier")


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
    config = apply_preset(BASE, name)
    assert config == BASE if name == "default" else config != BASE
    _, batch = _simulate(templates, config, per_class=1)
    assert torch.isfinite(batch.signal).all() and batch.signal.std() > 0


def test_preset_from_the_command_line_with_an_override(tmp_path):
    from click.testing import CliRunner

    from fewshot_cryoet.cli import main
    from fewshot_cryoet.datasets.dataset import SubtomogramDataset

    result = CliRunner().invoke(main, ["simulate", "--classes", "3", "--per-class", "2", "--route", "fourier",
                                       "--box", "16", "--voxel-size", "20", "--snr", "1", "--preset", "all-shifted",
                                       "--tilt-step", "4", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    simulation = SubtomogramDataset(tmp_path / "d").manifest["simulation"]
    assert simulation["tilt_step"] == 4.0 and simulation["tilt_max"] == 45.0  # the option beats the preset
    assert simulation["defocus_um"] == [0.5, 1.5] and simulation["background"] == 0.5
    bad = CliRunner().invoke(main, ["simulate", "--classes", "2", "--envelope", "0.3-0.1", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--envelope" in bad.output
