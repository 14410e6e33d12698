"""Prototypical network (Snell et al. 2017) with a 3D convolutional encoder.

Each class's prototype is the mean embedding of its supports; a query's score for a class is the
negative squared Euclidean distance to the prototype; training minimises cross-entropy over those
scores on training-class episodes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fewshot_cryoet.core.params import Param
from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.base import Prediction
from fewshot_cryoet.methods.encoders import ConvEncoder3d
from fewshot_cryoet.methods.torch_method import TorchMethod


class ProtoNet(TorchMethod):
    name: ClassVar[str] = "protonet"
    description: ClassVar[str] = "Prototypical network: 3D Conv-4 encoder, class means, squared Euclidean distance"
    defaults: ClassVar[dict[str, Any]] = {"channels": (16, 32, 64, 64)}  # merged with TorchMethod's
    param_rules: ClassVar[dict[str, Param]] = {"channels": Param("ints", low=1)}

    def build_network(self) -> torch.nn.Module:
        return ConvEncoder3d(tuple(self.params["channels"]))

    def _logits(self, episode: Episode, network: torch.nn.Module) -> torch.Tensor:
        support = self.per_volume_rows(episode, "support", network)
        query = self.per_volume_rows(episode, "query", network)
        prototypes = torch.stack(
            [support[episode.support_labels == c].mean(dim=0) for c in range(episode.n_way)]
        )
        # Squared distances from differences, not cdist(...)²: the gradient of cdist is NaN where
        # a query coincides with a prototype (e.g. all-zero features of a small network).
        return -((query.float()[:, None, :] - prototypes.float()[None, :, :]) ** 2).sum(dim=-1)

    def training_loss(self, episode: Episode) -> torch.Tensor:
        return F.cross_entropy(self._logits(episode, self.network), episode.query_labels)

    def scores(self, episode: Episode) -> Prediction:
        return Prediction(self._logits(episode, self.inference_network))
