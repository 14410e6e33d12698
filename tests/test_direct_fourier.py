"""The direct-Fourier route: a third, independently written imaging model (central slices, dose
damage, detector, phase flipping, direct Fourier inversion, its own mask and normalisation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewshot_cryoet import FscError, api
from fewshot_cryoet.datasets.direct_fourier import (
    BACKGROUND_RADIUS,
    dose_symmetric_exposure,
    exposure_attenuation,
)
from fewshot_cryoet.datasets.imaging import centred_radius
from fewshot_cryoet.datasets.noise import add_noise
from fewshot_cryoet.datasets.simulate import SimulationConfig, Simulator, make_plan
from fewshot_cryoet.datasets.synthetic import synthetic_templates


def _correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.flatten(1) - a.flatten(1).mean(1, keepdim=True), b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).numpy()


@pytest.fixture(scope="module")
def templates():
    return synthetic_templates(3, voxel_size=20.0)


def _simulate(templates, indices, **settings):
    config = SimulationConfig(box=16, voxel_size=20.0, route="direct-fourier", **settings)
    simulator = Simulator(templates, config)
    plan = make_plan(templates, 2, config, seed=0)
    return simulator, plan, simulator.simulate(plan, np.asarray(indices))


def test_a_full_tilt_range_without_ctf_reconstructs_the_particle(templates):
    simulator, plan, batch = _simulate(templates, range(6), ctf=False, tilt_min=-89, tilt_max=89, tilt_step=1)
    density = simulator.particle_density(plan, np.arange(6))
    assert _correlation(batch.signal, density).min() > 0.85
    # the same particles by the tilt-series route: the same geometry, a different model
    config = SimulationConfig(box=16, voxel_size=20.0, ctf=False, tilt_min=-89, tilt_max=89, tilt_step=1)
    other = Simulator(templates, config).simulate(make_plan(templates, 2, config, seed=0), np.arange(6))
    assert 0.85 < _correlation(batch.signal, other.signal).min() and _correlation(batch.signal, other.signal).max() < 0.999


def test_the_missing_wedge_lies_along_kz(templates):
    _, _, batch = _simulate(templates, range(4), ctf=False)
    power = torch.fft.fftn(batch.signal, dim=(-3, -2, -1)).abs() ** 2
    k = torch.fft.fftfreq(16)
    kz, kx = k.view(-1, 1, 1), k.view(1, 1, -1)
    angle = torch.rad2deg(torch.atan2(kz.abs(), kx.abs())).expand(16, 16, 16)
    ring = (kz**2 + kx**2).sqrt().expand(16, 16, 16) > 0.1
    wedge, sampled = power[:, (angle > 80) & ring].mean(), power[:, (angle < 50) & ring].mean()
    assert wedge < 0.01 * sampled


def test_batches_do_not_change_particles_and_the_route_is_reproducible(templates):
    _, _, whole = _simulate(templates, range(4))
    _, _, first = _simulate(templates, [0, 1])
    _, _, again = _simulate(templates, [2, 3])
    torch.testing.assert_close(whole.signal, torch.cat([first.signal, again.signal]), rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.noise, torch.cat([first.noise, again.noise]), rtol=0, atol=1e-6)


def test_relion_normalisation_snr_and_the_blurred_mask(templates):
    _, _, batch = _simulate(templates, range(6))
    noisy = add_noise(batch, 0.5)
    np.testing.assert_allclose(noisy.snr_measured, 0.5, rtol=1e-5)
    outside = (centred_radius((16,) * 3) > BACKGROUND_RADIUS * 8).flatten()
    background = noisy.volumes.flatten(1)[:, outside]
    np.testing.assert_allclose(background.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(background.std(1).numpy(), 1, atol=1e-3)
    assert abs(float(noisy.volumes.flatten(1).std(1).mean()) - 1) > 0.01  # not z-scored over the whole box
    plain = SimulationConfig(box=16, voxel_size=20.0, route="fourier")
    sharp = Simulator(templates, plain).simulate(make_plan(templates, 2, plain, seed=0), np.arange(6)).mask
    assert batch.mask.sum() > sharp.sum() and (sharp & ~batch.mask).sum() < 0.05 * sharp.sum()


def test_dose_damage_is_the_envelope():
    exposure = dose_symmetric_exposure(np.array([-4.0, -2.0, 0.0, 2.0, 4.0]), dose=3.0)
    assert exposure.tolist() == [12.0, 6.0, 0.0, 3.0, 9.0]
    k = torch.tensor([0.0, 0.01, 0.05])
    damped = exposure_attenuation(k, torch.tensor(90.0))
    assert damped[0] > 0.99 and damped[1] > damped[2] and damped[2] < math.exp(-90 / (2 * (0.245 * 0.05**-1.665 + 2.81))) + 1e-6


@pytest.mark.parametrize("settings, option", [
    ({"envelope_sigma": 0.3}, "envelope applies to the tilt-series and fourier routes only"),
    ({"alignment_jitter": 0.5}, "use route tilt-series"),
])
def test_settings_the_route_does_not_model_are_refused(settings, option):
    with pytest.raises(FscError, match=option):
        SimulationConfig(route="direct-fourier", **settings)


def test_a_data_set_by_the_third_route_records_it(tmp_path):
    data = api.simulate(tmp_path / "third", classes=3, per_class=2, snrs=[0.5], seed=0,
                        config=SimulationConfig(box=16, voxel_size=20.0, route="direct-fourier"))
    assert data.manifest["simulation"]["route"] == "direct-fourier"
    other = api.simulate(tmp_path / "first", classes=3, per_class=2, snrs=[0.5], seed=0,
                         config=SimulationConfig(box=16, voxel_size=20.0))
    assert data.content_hash != other.content_hash
