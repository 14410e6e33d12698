"""COS-Net (Zhou et al. 2020): one-shot classification with attention-guided segmentation.

Siamese streams with shared weights. Each stream: a volume encoder of three levels of 3D
convolutions (max-pooling after the first two), optionally followed at every level by a DuSE block
(channel SE + spatial SE); a volume decoder mirroring it with transposed convolutions, ending in a
sigmoid probability volume (the segmentation); and a feature encoder (two fully connected layers,
512-d in the paper profile) on the encoder output. Similarity of two volumes: L1 distance of their
feature vectors → FC → sigmoid. N-way prediction: the similarity of a query to each class's
supports, averaged over the K shots (mean similarity; with K = 1 it is the single support's).

Training, as the paper: episodes give two support sets over the same sampled classes (here
``train_shot`` = ``train_query`` = 1); every cross pair is labelled same/different, BCE with
positive and negative pairs balanced (the published code drew only ~7% positives), plus Dice loss
of both streams' decoder outputs against the ground-truth masks; Adam.

Variants are the rows of the paper's Table 1: ``scnn`` (SCNN w/o decoder), ``scnn-decoder``,
``duse`` and ``duse-decoder``. Profiles:

- ``paper``: the published network layer for layer (:class:`PublishedNetwork`; see
  ``../shared/ANCHORS.md``): a stem convolution, two convolutions per level (conv → ReLU →
  BatchNorm, in that order), DuSE after encoder levels 1 and 2 and after both decoder levels,
  64 channels, a 32768 → 512 → 512 feature head, a 1×1×1 output convolution; about 18.2 M
  parameters and 33 GFLOP per volume. ``shared_duse`` reproduces the published code's reuse of
  level 1's DuSE at level 2 (off by default: the paper describes two blocks); ``residual`` adds
  each level's input to its output (off, as in the paper's runs).
- ``lite``: our shallow network (one convolution per level, a decoder of two transposed
  convolutions) at the published widths, 64 channels and 512-d: what ``paper`` built before it
  followed the published depth. Checkpoints saved under the old ``paper`` name load as ``lite``.
- ``cpu``: the shallow network at 16 channels and 128-d, so a full leaderboard is practical on
  2 CPU cores. Shallow by measurement: at an equal 5-minute budget on the shared templates
  (SNR 0.5, 6-way, 3 seeds, 600 episodes) it beat the published topology at the same width on
  accuracy (0.709 vs 0.646) and Dice (0.620 vs 0.456); see ``leaderboards/cpu-profile/``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.params import Param
from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.base import Prediction, ScoreKind
from fewshot_cryoet.methods.torch_method import TorchMethod

PROFILES = {
    "paper": {"channels": 64, "embedding": 512, "topology": "published"},
    "lite": {"channels": 64, "embedding": 512, "topology": "shallow"},
    "cpu": {"channels": 16, "embedding": 128, "topology": "shallow"},
}
VARIANT_TITLES = {
    "scnn": "SCNN w/o decoder",
    "scnn-decoder": "SCNN w decoder",
    "duse": "DuSE-SCNN w/o decoder",
    "duse-decoder": "DuSE-SCNN w decoder",
}


class DuSE(nn.Module):
    """Dual squeeze-and-excitation: channel SE (GAP → FC C→C/2 → ReLU → FC → sigmoid, scaling
    channels) and spatial SE (1×1×1 conv → sigmoid, scaling voxels), merged by addition (as the
    paper says) or element-wise max (as its published code does)."""

    def __init__(self, channels: int, merge: str = "add") -> None:
        super().__init__()
        if merge not in ("add", "max"):
            raise FscError(f"DuSE merge must be 'add' or 'max', got {merge!r}")
        self.merge = merge
        self.squeeze = nn.Sequential(
            nn.Linear(channels, max(1, channels // 2)), nn.ReLU(inplace=True),
            nn.Linear(max(1, channels // 2), channels), nn.Sigmoid(),
        )
        self.spatial = nn.Conv3d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_gate = self.squeeze(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]
        spatial_gate = torch.sigmoid(self.spatial(x))
        if self.merge == "add":
            # x·c, then += x·s in place: both products keep x's (channels-last) layout; forming
            # c + s first would materialise a full tensor in the default layout (2× slower on CPU).
            return (x * channel_gate).addcmul_(x, spatial_gate)
        return torch.maximum(x * channel_gate, x * spatial_gate)


def _level(in_channels: int, out_channels: int, duse: bool, merge: str) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if duse:
        layers.append(DuSE(out_channels, merge))
    return nn.Sequential(*layers)


class SiameseStream(nn.Module):
    """What every COS-Net topology shares: three encoder levels (max-pooled after the first two),
    after an optional ``stem``; features from the encoding; an optional decoder; and the L1 → FC
    similarity head. Subclasses build ``stem``, ``encoder``, ``features``, ``decoder`` and ``head``."""

    def encode(self, volumes: torch.Tensor) -> torch.Tensor:
        stem = self._modules.get("stem")  # registered by topologies that have one
        x = stem(volumes) if stem is not None else volumes
        for i, level in enumerate(self.encoder):
            x = level(x)
            if i < 2:
                x = F.max_pool3d(x, 2)
        return x

    def embed(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.features(self.encode(volumes))

    def stream(self, volumes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(feature vectors, decoder logits or None) for a batch of volumes."""
        encoded = self.encode(volumes)
        logits = self.decoder(encoded) if self.decoder is not None else None
        return self.features(encoded), logits

    def similarity_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head((a[:, None, :] - b[None, :, :]).abs()).squeeze(-1)


class COSNetwork(SiameseStream):
    """Our shallow stream (one convolution per level, a decoder of two transposed convolutions)."""

    def __init__(self, box: int, channels: int, embedding: int, duse: bool, decoder: bool, merge: str) -> None:
        super().__init__()
        if box % 4:
            raise FscError(f"COS-Net needs a box divisible by 4, got {box}")
        c = channels
        self.encoder = nn.ModuleList([_level(1, c, duse, merge), _level(c, c, duse, merge), _level(c, c, duse, merge)])
        flat = c * (box // 4) ** 3
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(flat, embedding), nn.ReLU(inplace=True),
                                      nn.Linear(embedding, embedding))
        self.decoder = None
        if decoder:
            self.decoder = nn.Sequential(
                nn.ConvTranspose3d(c, c, 2, stride=2), nn.BatchNorm3d(c), nn.ReLU(inplace=True),
                nn.ConvTranspose3d(c, c, 2, stride=2), nn.BatchNorm3d(c), nn.ReLU(inplace=True),
                nn.Conv3d(c, 1, 3, padding=1),
            )
        self.head = nn.Linear(embedding, 1)



class PublishedConv(nn.Sequential):
    """conv 3×3×3 → ReLU → BatchNorm, the published order (BatchNorm after the non-linearity)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                         nn.BatchNorm3d(out_channels))


class PublishedLevel(nn.Module):
    """Two published convolutions, optionally a residual connection around them, then DuSE."""

    def __init__(self, channels: int, duse: DuSE | None, residual: bool) -> None:
        super().__init__()
        self.convs = nn.Sequential(PublishedConv(channels, channels), PublishedConv(channels, channels))
        self.duse = duse
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs(x)
        if self.residual:
            y = y + x
        return self.duse(y) if self.duse is not None else y


class PublishedNetwork(SiameseStream):
    """COS-Net as published: one stream plus the similarity head."""

    def __init__(self, box: int, channels: int, embedding: int, duse: bool, decoder: bool, merge: str,
                 shared_duse: bool = False, residual: bool = False) -> None:
        super().__init__()
        if box % 4:
            raise FscError(f"COS-Net needs a box divisible by 4, got {box}")
        c = channels
        self.stem = nn.Sequential(nn.Conv3d(1, c, 3, padding=1), nn.ReLU(inplace=True))  # no BatchNorm
        first = DuSE(c, merge) if duse else None
        second = (first if shared_duse else DuSE(c, merge)) if duse else None  # the published code reuses level 1's
        self.encoder = nn.ModuleList([PublishedLevel(c, first, residual), PublishedLevel(c, second, residual),
                                      PublishedLevel(c, None, residual)])
        flat = c * (box // 4) ** 3
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(flat, embedding), nn.Linear(embedding, embedding))
        self.decoder = None
        if decoder:
            self.decoder = PublishedDecoder(c, duse, merge, residual)
        self.head = nn.Linear(embedding, 1)



class PublishedDecoder(nn.Module):
    """Two levels of (transposed conv ×2 up → two published convolutions → DuSE), then a
    1×1×1 convolution to one channel of logits."""

    def __init__(self, channels: int, duse: bool, merge: str, residual: bool) -> None:
        super().__init__()
        c = channels
        self.up = nn.ModuleList([nn.ConvTranspose3d(c, c, 2, stride=2), nn.ConvTranspose3d(c, c, 2, stride=2)])
        self.levels = nn.ModuleList([PublishedLevel(c, DuSE(c, merge) if duse else None, residual)
                                     for _ in range(2)])
        self.output = nn.Conv3d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for up, level in zip(self.up, self.levels):
            x = level(up(x))
        return self.output(x)


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per volume, averaged (computed on device, no host round trip)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = masks.float().flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


class COSNet(TorchMethod):
    name: ClassVar[str] = "cosnet"
    description: ClassVar[str] = "COS-Net: Siamese SCNN/DuSE-SCNN, optional decoder (segmentation), L1 → FC → sigmoid"
    segments: ClassVar[bool] = True  # decoder variants; see the instance attribute
    score_kind: ClassVar[ScoreKind] = ScoreKind.SIMILARITY
    defaults: ClassVar[dict[str, Any]] = {  # merged with TorchMethod's
        "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0,
        "train_way": 5, "train_shot": 1, "train_query": 1,
        "profile": "cpu", "channels": None, "embedding": None, "box": 32,
        "block": "scnn", "decoder": False, "duse_merge": "add", "dice_weight": 1.0,
        "shared_duse": False, "residual": False,
        "crf_iterations": 4, "crf_gaussian_weight": 3.0, "crf_gaussian_width": 1.0,
        "crf_bilateral_weight": 5.0, "crf_bilateral_width": 2.0, "crf_intensity_width": 1.0,
    }
    param_rules: ClassVar[dict[str, Param]] = {
        "profile": Param("str", choices=tuple(PROFILES)), "channels": Param("int", low=1, nullable=True),
        "embedding": Param("int", low=1, nullable=True), "box": Param("int", low=4),
        "block": Param("str", choices=("scnn", "duse")), "decoder": Param("bool"),
        "duse_merge": Param("str", choices=("add", "max")), "dice_weight": Param("float", low=0),
        "shared_duse": Param("bool"), "residual": Param("bool"),
        "crf_iterations": Param("int", low=0), "crf_gaussian_weight": Param("float", low=0),
        "crf_gaussian_width": Param("float", low=0, low_open=True), "crf_bilateral_weight": Param("float", low=0),
        "crf_bilateral_width": Param("float", low=0, low_open=True),
        "crf_intensity_width": Param("float", low=0, low_open=True),
    }
    #: Added with the published topology; at these values every earlier configuration keeps its hash.
    later_defaults: ClassVar[dict[str, Any]] = {"shared_duse": False, "residual": False}
    crf_hyperparameters: ClassVar[dict[str, str]] = {
        f"crf_{name}": name for name in ("iterations", "gaussian_weight", "gaussian_width", "bilateral_weight",
                                         "bilateral_width", "intensity_width")
    }
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "duse-decoder": {"block": "duse", "decoder": True},
        "duse": {"block": "duse", "decoder": False},
        "scnn-decoder": {"block": "scnn", "decoder": True},
        "scnn": {"block": "scnn", "decoder": False},
    }

    def __init__(self, params=None, variant=None, device="cpu") -> None:
        super().__init__(params, variant, device)
        self.segments = bool(self.params["decoder"])

    @classmethod
    def search_space(cls, trial, params: dict[str, Any]) -> dict[str, Any]:
        """Learning rate; width of the cpu profile (channels, embedding); with a decoder, the
        Dice/BCE weighting and the CRF's weights and widths (they change only the refined Dice)."""
        space: dict[str, Any] = {"lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True)}
        if params["profile"] == "cpu":
            space["channels"] = trial.suggest_categorical("channels", [8, 16, 24, 32])
            space["embedding"] = trial.suggest_categorical("embedding", [64, 128, 256])
        if params["decoder"]:
            space["dice_weight"] = trial.suggest_float("dice_weight", 0.25, 4.0, log=True)
            space["crf_gaussian_weight"] = trial.suggest_float("crf_gaussian_weight", 0.5, 20.0, log=True)
            space["crf_gaussian_width"] = trial.suggest_float("crf_gaussian_width", 0.5, 3.0)
            space["crf_bilateral_weight"] = trial.suggest_float("crf_bilateral_weight", 0.5, 20.0, log=True)
            space["crf_bilateral_width"] = trial.suggest_float("crf_bilateral_width", 1.0, 5.0)
            space["crf_intensity_width"] = trial.suggest_float("crf_intensity_width", 0.25, 4.0, log=True)
        return space

    @classmethod
    def effective_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        sizes = PROFILES.get(params["profile"], {})
        return {**params, "channels": params["channels"] or sizes.get("channels"),
                "embedding": params["embedding"] or sizes.get("embedding")}

    label_keys = ("profile",)

    @classmethod
    def label_for(cls, variant: str, params: dict[str, Any]) -> str:
        return f"COS-Net {VARIANT_TITLES.get(variant, variant)} ({params['profile']})"

    @classmethod
    def hash_params(cls, params: dict[str, Any]) -> str:
        """As every method's, plus the topology of the ``paper`` profile: that name built the shallow
        network before, so its results and checkpoints must not be taken for the published one's."""
        if params.get("profile") == "paper":
            return super().hash_params({**params, "topology": "published"})
        return super().hash_params(params)

    @classmethod
    def upgrade_checkpoint(cls, params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """A ``paper`` checkpoint without the published stem was saved before ``paper`` meant the
        published network: it is the shallow network at the published widths, now ``lite``."""
        network = state.get("network", {}) if isinstance(state, dict) else {}
        if params.get("profile") == "paper" and network and not any(k.startswith("stem.") for k in network):
            warnings.warn("this checkpoint was saved with the old 'paper' profile (the shallow network at the "
                          "published widths); it loads as profile 'lite'", UserWarning, stacklevel=2)
            return {**params, "profile": "lite"}
        return params

    def build_network(self) -> nn.Module:
        p = self.params  # profile and block were checked against param_rules in resolve
        sizes = PROFILES[p["profile"]]
        channels = int(p["channels"] or sizes["channels"])
        embedding = int(p["embedding"] or sizes["embedding"])
        if sizes["topology"] == "published":
            return PublishedNetwork(int(p["box"]), channels, embedding, p["block"] == "duse", bool(p["decoder"]),
                                    p["duse_merge"], bool(p["shared_duse"]), bool(p["residual"]))
        if p["shared_duse"] or p["residual"]:
            raise FscError(f"cosnet: shared_duse and residual belong to the published topology (profile paper), "
                           f"not to profile {p['profile']}")
        return COSNetwork(int(p["box"]), channels, embedding, p["block"] == "duse", bool(p["decoder"]), p["duse_merge"])

    def check_episode(self, episode: Episode) -> None:
        if episode.query.shape[-1] != self.params["box"]:
            raise FscError(
                f"cosnet was built for {self.params['box']}³ boxes but the episode has "
                f"{episode.query.shape[-1]}³; pass --param cosnet.box={episode.query.shape[-1]}"
            )

    def training_loss(self, episode: Episode) -> torch.Tensor:
        self.check_episode(episode)
        net = self.network
        first, first_logits = net.stream(episode.support)
        second, second_logits = net.stream(episode.query)
        logits = net.similarity_logits(second, first)
        same = (episode.query_labels[:, None] == episode.support_labels[None, :]).float()
        weights = same / same.sum().clamp_min(1) + (1 - same) / (1 - same).sum().clamp_min(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), same, weight=weights, reduction="sum") / 2
        if net.decoder is not None:
            if episode.support_masks is None or episode.query_masks is None:
                raise FscError("cosnet with a decoder needs ground-truth masks; use a variant without decoder")
            segmentation = (dice_loss(first_logits, episode.support_masks) + dice_loss(second_logits, episode.query_masks)) / 2
            loss = loss + self.params["dice_weight"] * segmentation
        return loss

    def per_volume(self, role: str, network: nn.Module):
        """Supports: their embedding. Queries of a decoder variant: features and foreground
        probabilities in one row (both depend on the query alone, so both are cached)."""
        if role == "support" or network.decoder is None:
            return "embedding", network.embed

        def features_and_probabilities(volumes: torch.Tensor) -> torch.Tensor:
            features, logits = network.stream(volumes)
            return torch.cat([features.float(), torch.sigmoid(logits.float()).flatten(1)], dim=1)

        return "stream", features_and_probabilities

    def scores(self, episode: Episode) -> Prediction:
        self.check_episode(episode)
        net = self.inference_network
        support = self.per_volume_rows(episode, "support", net)
        rows = self.per_volume_rows(episode, "query", net)
        if net.decoder is not None:
            width = net.head.in_features
            query = rows[:, :width]
            probabilities = rows[:, width:].view(episode.query.shape)
        else:
            query, probabilities = rows, None
        similarity = torch.sigmoid(net.similarity_logits(query, support).float())
        labels = episode.support_labels
        per_class = torch.stack([similarity[:, labels == c].mean(dim=1) for c in range(episode.n_way)], dim=1)
        return Prediction(per_class, probabilities)
