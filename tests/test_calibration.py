"""Confidence calibration: the temperature fit, and that trained models carry their temperature."""

from __future__ import annotations

import torch

from fewshot_cryoet import api
from fewshot_cryoet.episodes import EpisodeSpec, load_episode, sample_episodes
from fewshot_cryoet.evaluation.calibration import (
    class_probabilities,
    fit_temperature,
    negative_log_likelihood,
)
from fewshot_cryoet.methods.xcorr import CrossCorrelation
from fewshot_cryoet.models.checkpoints import load_method, read_checkpoint


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 6, generator=generator) * 3
    labels = torch.multinomial(class_probabilities(logits, 2.5), 1, generator=generator)[:, 0]
    fitted = fit_temperature(logits, labels)
    assert abs(fitted - 2.5) / 2.5 < 0.05
    # it is the minimum of the NLL, not just near the truth
    best = negative_log_likelihood(logits, labels, fitted)
    assert best <= negative_log_likelihood(logits, labels, fitted * 1.2)
    assert best <= negative_log_likelihood(logits, labels, fitted / 1.2)


def test_temperature_changes_confidence_never_the_predicted_class():
    scores = torch.tensor([[0.31, 0.30, 0.10], [0.05, 0.20, 0.21]])
    sharp, flat = class_probabilities(scores, 0.02), class_probabilities(scores, 1.0)
    assert torch.equal(sharp.argmax(1), flat.argmax(1))
    assert float(sharp.max(1).values.min()) > float(flat.max(1).values.max())
    assert torch.allclose(sharp.sum(1), torch.ones(2))


def test_the_fixed_temperature_of_template_matching_brings_confidence_near_accuracy(paired_dataset):
    """xcorr's correlations differ in the second decimal: at temperature 1 its confidence is near
    1/N whatever its accuracy; its documented fixed temperature must do better."""
    episodes = sample_episodes(paired_dataset, EpisodeSpec("test", 3, 1, 4, 0), 6)
    method = CrossCorrelation({"angular_step": 60})
    scores, labels = [], []
    for i in range(len(episodes)):
        episode = load_episode(paired_dataset, episodes, i, 0.5)
        scores.append(method.predict(episode).scores)
        labels.append(episode.query_labels)
    scores, labels = torch.cat(scores), torch.cat(labels)
    accuracy = float((scores.argmax(1) == labels).float().mean())
    def gap(temperature: float) -> float:
        return abs(float(class_probabilities(scores, temperature).max(1).values.mean()) - accuracy)

    assert CrossCorrelation.temperature < 0.1
    assert gap(CrossCorrelation.temperature) < gap(1.0) / 2


def test_a_trained_model_is_calibrated_on_validation_episodes_and_keeps_it(tiny_val2_dataset, tmp_path):
    card = api.train("protonet", tmp_path / "model", dataset=tiny_val2_dataset, snr=1, budget="6ep",
                     params={"channels": [4, 8]})
    assert card.fit["temperature"] is not None and card.fit["temperature"] > 0
    payload = read_checkpoint(tmp_path / "model" / "weights.pt", torch.device("cpu"))
    assert payload["temperature"] == card.fit["temperature"]
    method = load_method(tmp_path / "model" / "weights.pt")
    assert method.temperature == card.fit["temperature"]
