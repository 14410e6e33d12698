"""Learned template matching: xcorr's rotation search behind a learned, rotation-invariant filter.

Why: on data imaged by a simulator they never saw, learned encoders lose to xcorr, which learns
nothing (issue 34: a 3D CNN learns the training imaging as much as the complexes). This method
keeps everything that makes template matching transfer (the whole density compared under every
rotation and small shift, Pearson-normalised) and learns only what a microscopist tunes by hand
in a template search:

- a **matched filter**: a gain per spatial frequency, the same in every direction (linear between
  ``bands`` nodes from 0 to Nyquist of the binned volume), applied to supports and queries alike;
- a **radial weighting** of the correlation (``shells`` nodes from the centre to the sphere's
  edge), i.e. a learned soft mask;
- with ``adaptive`` > 0 (the default) a small network that adds to the log gains a function of
  each volume's own band powers, so the filter can undo an envelope or noise colour it meets at
  test time rather than one fixed for the training imaging (a learned spectral whitening);
- the softmax scale of the correlations.

All are isotropic, so filtering commutes with rotating and the search stays exact. About 300
numbers are learned (17 without ``adaptive``); at their initial values (gains 1, weights 1, the
network's last layer 0, scale 40 = 1/0.025) the method *is* xcorr up to FFT round-off, so
training starts from template matching and model selection on validation classes keeps only what
helps there. Training minimises cross-entropy over the
class scores (best correlation over a class's supports) of training episodes, through the search
(sampling, products and maxima are differentiable; only which rotations are refined is not).
``train_spectra`` > 0 distorts each training volume's spectrum at random (log gains per band node
drawn from N(0, train_spectra²)), so the adaptive filter learns to undo a spectrum rather than to
expect the training route's. ``train_background`` > 0 adds to each training volume a structured
1/f background (power ∝ 1/k², as the simulator's ``background``) whose variance is a share drawn
from U(0, train_background) of the volume's own: the spectral distortion scales signal and noise
together, so without it the filter never meets noise of another colour than the training data's.

Frequencies are in cycles per binned voxel, so a trained filter belongs to the voxel size it was
trained at (the model folder records the data's voxel size, as for every trained method).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_cryoet.core.params import Param
from fewshot_cryoet.datasets.imaging import centred_radius, radial_frequency
from fewshot_cryoet.datasets.noise import pink_amplitude
from fewshot_cryoet.episodes import Episode
from fewshot_cryoet.methods.base import Prediction, ScoreKind
from fewshot_cryoet.methods.rotation_search import RotationSearch, class_maxima, normalised, sphere
from fewshot_cryoet.methods.torch_method import TorchMethod

#: Initial softmax scale: xcorr's measured temperature 0.025 (see ``methods.xcorr``).
INITIAL_SCALE = 40.0


def hat_basis(position: torch.Tensor, nodes: int) -> torch.Tensor:
    """``(P, nodes)``: weights of linear interpolation between ``nodes`` evenly spaced nodes over
    [0, 1] (clamped beyond) for each of ``P`` positions; ``basis @ values`` interpolates. A dense
    product rather than indexing: its backward sums in a fixed order, so training repeats bit for bit."""
    index = position.flatten().clamp(0, 1) * (nodes - 1)
    lower = index.floor().long().clamp(max=nodes - 2)
    upper_weight = (index - lower).unsqueeze(1)
    return (F.one_hot(lower, nodes) * (1 - upper_weight) + F.one_hot(lower + 1, nodes) * upper_weight).float()


def with_background(binned: torch.Tensor, most: float) -> torch.Tensor:
    """``binned`` ``(n, 1, s, s, s)`` with a structured background added to each volume: noise of
    power ∝ 1/k² (k ≠ 0; as the simulator's ``background``), scaled so that its variance is a share
    drawn from U(0, ``most``) of the volume's own variance. Drawn from torch's random stream,
    which the training seeds."""
    size, axes = binned.shape[-3:], (-3, -2, -1)
    amplitude = pink_amplitude(size).to(binned.device)
    pink = torch.fft.irfftn(torch.fft.rfftn(torch.randn_like(binned), dim=axes) * amplitude, s=size, dim=axes)
    share = torch.rand(len(binned), 1, 1, 1, 1, device=binned.device) * most
    scale = (share * binned.var(dim=axes, keepdim=True) / pink.var(dim=axes, keepdim=True)).sqrt()
    return binned + pink * scale


class MatchedFilter(nn.Module):
    """The learned part, all at the identity first: log gains per frequency band (``gain``), radial
    log weights of the correlation (``log_weight``), the log softmax scale, and with ``adaptive`` >
    0 a small network that adds to the log gains a function of each volume's own band powers."""

    def __init__(self, bands: int, shells: int, adaptive: int = 0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.zeros(bands))
        self.log_weight = nn.Parameter(torch.zeros(shells))
        self.log_scale = nn.Parameter(torch.tensor(math.log(INITIAL_SCALE)))
        self.adapt: nn.Module | None = None
        self._basis_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # see _bases
        if adaptive:
            self.adapt = nn.Sequential(nn.Linear(bands, adaptive), nn.Tanh(), nn.Linear(adaptive, bands))
            nn.init.zeros_(self.adapt[2].weight)  # adds nothing until trained
            nn.init.zeros_(self.adapt[2].bias)

    def forward(self, binned: torch.Tensor) -> torch.Tensor:
        """``(n, 1, s, s, s)`` → the same volumes with every spatial frequency ``f`` (cycles per
        voxel) multiplied by its volume's gain interpolated at ``f / 0.5`` (frequencies past
        Nyquist in the corners take the last band's)."""
        spectrum, (interpolation, counted) = self._spectrum(binned)
        return self._scaled(binned, spectrum, interpolation, self._log_gains(spectrum, counted))

    def perturbed(self, binned: torch.Tensor, spread: float) -> torch.Tensor:
        """The volumes with their spectra distorted at random, for training: each volume's log
        gains at the band nodes are drawn from N(0, ``spread``²) (torch's random stream, which the
        training seeds) and interpolated as the learned gains are. Why: trained on one imaging
        route, the gains learn that route's spectrum; distorted spectra make the adaptive part
        learn to undo a spectrum it has not seen instead."""
        spectrum, (interpolation, _) = self._spectrum(binned)
        draws = torch.randn(len(binned), interpolation.shape[1], device=binned.device) * spread
        return self._scaled(binned, spectrum, interpolation, draws)

    @staticmethod
    def _scaled(binned: torch.Tensor, spectrum: torch.Tensor, interpolation: torch.Tensor,
                node_log_gains: torch.Tensor) -> torch.Tensor:
        """``binned``'s volumes with their ``spectrum`` multiplied by gains interpolated from each
        volume's log gains at the band nodes (``(n, bands)``), back in real space."""
        gains = (node_log_gains @ interpolation.T).exp().view(len(binned), 1, *spectrum.shape[-3:])
        return torch.fft.irfftn(spectrum * gains, s=binned.shape[-3:], dim=(-3, -2, -1))

    def log_gains(self, binned: torch.Tensor) -> torch.Tensor:
        """``(n, bands)``: the log gain of each band for each volume (the same for all volumes
        without ``adaptive``)."""
        spectrum, (_, counted) = self._spectrum(binned)
        return self._log_gains(spectrum, counted)

    def _spectrum(self, binned: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The volumes' half spectra, and the two (frequencies, bands) bases of their grid
        (:meth:`_bases`)."""
        spectrum = torch.fft.rfftn(binned.float(), dim=(-3, -2, -1))
        return spectrum, self._bases(binned.shape[-3:], binned.device)

    def _bases(self, size: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (frequencies, bands) bases of a half-spectrum grid: the interpolation basis, and the
        same with each half-spectrum frequency counted as often as it occurs in the full spectrum
        (twice, but once on the planes of x frequency 0 and Nyquist), so that band powers are sums
        over whole shells and do not change when a volume turns. Built once per grid and device
        (a plain attribute, not module state: it is derived, never saved)."""
        key = (tuple(size), str(device), len(self.gain))
        cache = self._basis_cache
        if key not in cache:
            radius = radial_frequency(tuple(size), 1.0).to(device)  # cycles per voxel
            basis = hat_basis(radius / 0.5, len(self.gain))
            fx = torch.fft.rfftfreq(size[-1], device=device).expand_as(radius)
            edges = (fx == 0) | (fx == 0.5)  # rfftfreq ends at +0.5 for even sizes only
            cache[key] = basis, basis * torch.where(edges, 1.0, 2.0).flatten()[:, None]
        return cache[key]

    def _log_gains(self, spectrum: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        log_gain = self.gain.expand(len(spectrum), -1)
        if self.adapt is not None:
            log_gain = log_gain + self.adapt(self.band_powers(spectrum, counted))
        return log_gain

    @staticmethod
    def band_powers(spectrum: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        """``(n, bands)``: each volume's log power per band (``counted``: the basis weighted by each
        frequency's count in the full spectrum), less its mean over bands, so that only the
        spectrum's shape counts, not the volume's scale: what the adaptive gains see."""
        power = spectrum.flatten(1).abs().square() @ counted / counted.sum(0).clamp_min(1e-12)
        log_power = power.clamp_min(1e-20).log()
        return log_power - log_power.mean(dim=1, keepdim=True)

    def voxel_weights(self, size: int, device) -> torch.Tensor:
        """(V,) weights of the sphere's voxels (the search's order), by distance from the centre."""
        radius = centred_radius((size,) * 3, device)[sphere(size, device)]
        return (hat_basis(radius / (size / 2), len(self.log_weight)) @ self.log_weight).exp()


class MatchedTemplates(TorchMethod):
    name: ClassVar[str] = "matched"
    description: ClassVar[str] = ("Learned template matching: xcorr's rotation search behind a learned isotropic "
                                  "filter and radial weights (starts as xcorr)")
    score_kind: ClassVar[ScoreKind] = ScoreKind.LOGITS
    defaults: ClassVar[dict[str, Any]] = {  # merged with TorchMethod's
        "angular_step": 30.0, "max_shift": 2, "bin": 2, "refine_top": 8, "bands": 8, "shells": 8, "adaptive": 16,
        "train_spectra": 0.0, "train_background": 0.0, "lr": 1e-2, "weight_decay": 0.0,
    }
    #: Spectral distortion and added background in training came after the first results: at 0
    #: they leave those results' hashes as they were.
    later_defaults: ClassVar[dict[str, Any]] = {"train_spectra": 0.0, "train_background": 0.0}
    param_rules: ClassVar[dict[str, Param]] = {
        "angular_step": Param("float", low=0, high=180, low_open=True), "max_shift": Param("int", low=0),
        "bin": Param("int", low=1), "refine_top": Param("int", low=1),
        "bands": Param("int", low=2, high=64), "shells": Param("int", low=2, high=64),
        "adaptive": Param("int", low=0, high=256), "train_spectra": Param("float", low=0.0, high=5.0),
        "train_background": Param("float", low=0.0, high=10.0),
    }

    def __init__(self, params=None, variant=None, device="cpu") -> None:
        super().__init__(params, variant, device)
        p = self.params
        self.search = RotationSearch(p["angular_step"], p["max_shift"], p["bin"], p["refine_top"])

    def build_network(self) -> nn.Module:
        return MatchedFilter(int(self.params["bands"]), int(self.params["shells"]), int(self.params["adaptive"]))

    def per_volume(self, role: str, network: nn.Module) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Each volume binned and filtered (16 KB at 16³): supports are rotated per episode rather
        than cached rotated (4.6 MB each), so memory stays flat however many particles a test has."""
        def filtered(volumes: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, enabled=False):  # fp32 always (see _correlations)
                return network(self.search.binned(volumes, self.device))

        return "filtered", filtered

    def _correlations(self, episode: Episode, network: nn.Module, support: torch.Tensor | None = None,
                      query: torch.Tensor | None = None) -> torch.Tensor:
        """``(Q, n_way)`` best weighted correlation with each class's supports, from the filtered
        volumes given or else the episode's (through the cache). In fp32 always: correlations of
        different classes differ in the second decimal, below bf16's resolution."""
        with torch.autocast(self.device.type, enabled=False):
            support = self.per_volume_rows(episode, "support", network) if support is None else support
            query = self.per_volume_rows(episode, "query", network) if query is None else query
            weights = network.voxel_weights(support.shape[-1], support.device)
            best = self.search.best(normalised(self.search.shifted(query), weights),
                                    normalised(self.search.rotated(support), weights))
            return class_maxima(best, episode.support_labels, episode.n_way)

    def training_loss(self, episode: Episode) -> torch.Tensor:
        network = self.network
        spread, background = float(self.params["train_spectra"]), float(self.params["train_background"])
        filtered = [None, None]
        if spread > 0 or background > 0:  # at 0 nothing is drawn: training without them is unchanged
            with torch.autocast(self.device.type, enabled=False):
                filtered = [network(self._augmented(self.search.binned(volumes, self.device), spread,
                                                    background)) for volumes in (episode.support, episode.query)]
        logits = self._correlations(episode, network, *filtered) * network.log_scale.exp()
        return F.cross_entropy(logits, episode.query_labels)

    def _augmented(self, binned: torch.Tensor, spread: float, background: float) -> torch.Tensor:
        """Training volumes with their spectra distorted (``spread`` > 0), then with a 1/f
        background added (``background`` > 0)."""
        if spread > 0:
            binned = self.network.perturbed(binned, spread)
        if background > 0:
            binned = with_background(binned, background)
        return binned

    def scores(self, episode: Episode) -> Prediction:
        network = self.inference_network
        return Prediction(self._correlations(episode, network) * network.log_scale.exp())

