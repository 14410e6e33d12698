"""A third-party plugin written against the flat layout of fewshot-cryoet 0.1, before the layers
became subpackages: every import below uses an old path. It must keep working, with deprecation
warnings, for one release (tests/test_architecture.py runs the conformance kit on it).

``legacy-tiny``: a prototypical network on a one-layer 3D encoder, trained by the shared loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fewshot_cryoet.errors import FscError
from fewshot_cryoet.params import Param
from fewshot_cryoet.scoring import ValidationScore

from fewshot_cryoet import hookimpl
from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.base import Budget, FitReport, Prediction, TorchMethod


class LegacyTiny(TorchMethod):
    name = "legacy-tiny"
    description = "Prototypical network on a one-layer encoder (a plugin written against the 0.1 paths)"
    defaults = {"width": 4}
    param_rules = {"width": Param("int", low=1)}

    def build_network(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv3d(1, self.params["width"], 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool3d(2), torch.nn.Flatten())

    def _logits(self, episode: Episode, network: torch.nn.Module) -> torch.Tensor:
        support, query = network(episode.support), network(episode.query)
        prototypes = torch.stack([support[episode.support_labels == c].mean(dim=0) for c in range(episode.n_way)])
        return -((query[:, None, :] - prototypes[None, :, :]) ** 2).sum(dim=-1)

    def training_loss(self, episode: Episode) -> torch.Tensor:
        return F.cross_entropy(self._logits(episode, self.network), episode.query_labels)

    def scores(self, episode: Episode) -> Prediction:
        return Prediction(self._logits(episode, self.inference_network))


def describe(report: FitReport, budget: Budget, score: ValidationScore) -> str:
    """Uses the shared types by their old paths, as a plugin's reporting code would."""
    if budget.episodes is None:
        raise FscError("legacy-tiny reports episode budgets only")
    return f"{report.episodes}/{budget.episodes} episodes, selection {score.selection:.3f}"


@hookimpl
def fsc_register_methods(registry):
    registry.add(LegacyTiny)
