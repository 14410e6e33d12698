"""Plain Siamese network (Koch et al. 2015) for subtomograms.

A shared 3D encoder embeds both volumes; the element-wise L1 distance of the embeddings goes
through a small fully connected head and a sigmoid to give P(same class). Training uses balanced
pairs (as many same-class as different-class pairs) from training-class episodes. For K > 1
shots a query's score for a class is the mean probability over that class's supports.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_cryoet.core.params import Param
from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.base import Prediction, ScoreKind
from fewshot_cryoet.methods.encoders import ConvEncoder3d
from fewshot_cryoet.methods.torch_method import TorchMethod


class SiameseNetwork(nn.Module):
    def __init__(self, channels: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.encoder = ConvEncoder3d(channels)
        self.head = nn.Sequential(
            nn.Linear(self.encoder.out_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1)
        )

    def similarity_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logit of P(same class) for every pair of rows of embeddings ``a`` and ``b``."""
        return self.head((a[:, None, :] - b[None, :, :]).abs()).squeeze(-1)


class Siamese(TorchMethod):
    name: ClassVar[str] = "siamese"
    description: ClassVar[str] = "Siamese network: shared 3D encoder, L1 distance, FC, sigmoid; balanced pairs"
    score_kind: ClassVar[ScoreKind] = ScoreKind.SIMILARITY
    defaults: ClassVar[dict[str, Any]] = {"channels": (16, 32, 64, 64), "hidden": 64}  # merged with TorchMethod's
    param_rules: ClassVar[dict[str, Param]] = {"channels": Param("ints", low=1),
                                               "hidden": Param("int", low=1)}

    def build_network(self) -> nn.Module:
        return SiameseNetwork(tuple(self.params["channels"]), int(self.params["hidden"]))

    def per_volume(self, role: str, network: nn.Module):
        return "embedding", network.encoder  # the head compares pairs; the encoder sees one volume

    def _pair_logits(self, episode: Episode, network: nn.Module) -> torch.Tensor:
        support = self.per_volume_rows(episode, "support", network)
        query = self.per_volume_rows(episode, "query", network)
        return network.similarity_logits(query, support)  # (n_query, n_support)

    def training_loss(self, episode: Episode) -> torch.Tensor:
        logits = self._pair_logits(episode, self.network)
        same = (episode.query_labels[:, None] == episode.support_labels[None, :]).float()
        # Balance: weight each pair so positives and negatives contribute equally.
        positives = same.sum().clamp_min(1)
        negatives = (1 - same).sum().clamp_min(1)
        weights = same / positives + (1 - same) / negatives
        return F.binary_cross_entropy_with_logits(logits, same, weight=weights, reduction="sum") / 2

    def scores(self, episode: Episode) -> Prediction:
        probabilities = torch.sigmoid(self._pair_logits(episode, self.inference_network).float())
        per_class = torch.stack(
            [probabilities[:, episode.support_labels == c].mean(dim=1) for c in range(episode.n_way)], dim=1
        )
        return Prediction(per_class)
