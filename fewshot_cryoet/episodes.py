"""Few-shot episodes: N-way K-shot Q-query tasks drawn from one split of a data set.

Every method must be scored on the same test episodes, so an episode is a pure function of the
data set's split, (N, K, Q) and a seed: episode ``i`` uses its own random stream
``SeedSequence([seed, i])``, which makes the first 600 episodes of a 1000-episode set identical
to a 600-episode set, and lets an interrupted evaluation resume at any episode. An
:class:`EpisodeSet` (particle indices only, no volumes) can be saved next to results and reloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.dataset import SubtomogramDataset, parse_snr, snr_label


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episodes: split, N-way, K-shot, Q queries per class, seed."""

    split: str
    n_way: int
    k_shot: int = 1
    q_query: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_way < 2:
            raise FscError(f"N-way must be ≥ 2, got {self.n_way}")
        if self.k_shot < 1 or self.q_query < 1:
            raise FscError(f"K-shot and queries per class must be ≥ 1, got K={self.k_shot}, Q={self.q_query}")


@dataclass(frozen=True)
class Episode:
    """One task. Labels are episode-local class numbers 0..N-1; ``classes[i]`` names class i.

    Volumes are ``(N·K, 1, D, H, W)`` and ``(N·Q, 1, D, H, W)`` float32; masks, when the data
    set has them, are the same shapes as uint8. The voxel size (Å) and SNR travel with the data.
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    classes: tuple[str, ...]
    voxel_size: float
    snr: float
    support_masks: torch.Tensor | None = None
    query_masks: torch.Tensor | None = None
    #: Stable identities of the volumes (data set hash, SNR, particle), when read from a data
    #: set: lets a method reuse per-volume work (e.g. embeddings) across test episodes.
    support_ids: tuple | None = None
    query_ids: tuple | None = None

    @property
    def n_way(self) -> int:
        return len(self.classes)

    @property
    def k_shot(self) -> int:
        return len(self.support_labels) // self.n_way

    def to(self, device: torch.device | str) -> Episode:
        """The same episode with every tensor on ``device``."""
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return replace(
            self,
            support=move(self.support), support_labels=move(self.support_labels),
            query=move(self.query), query_labels=move(self.query_labels),
            support_masks=move(self.support_masks), query_masks=move(self.query_masks),
        )


@dataclass(frozen=True)
class EpisodeSet:
    """Particle indices of a fixed list of episodes: ``indices[e, c, :K]`` are the supports and
    ``indices[e, c, K:]`` the queries of episode ``e``'s class ``c`` (named ``class_names[e, c]``)."""

    spec: EpisodeSpec
    class_names: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def save(self, path: str | Path) -> None:
        """An ``.npz`` of plain arrays (class names as Unicode, the spec as JSON): loadable without
        pickle."""
        s = self.spec
        spec = json.dumps({"split": s.split, "n_way": s.n_way, "k_shot": s.k_shot, "q_query": s.q_query, "seed": s.seed})
        np.savez(path, class_names=self.class_names.astype(str), indices=self.indices, spec=np.array(spec))

    @classmethod
    def load(cls, path: str | Path) -> EpisodeSet:
        """Read :meth:`save` output; never unpickles (files holding Python objects are refused)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                spec = json.loads(str(data["spec"]))
                return cls(EpisodeSpec(str(spec["split"]), int(spec["n_way"]), int(spec["k_shot"]),
                                       int(spec["q_query"]), int(spec["seed"])),
                           data["class_names"].astype(object), data["indices"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise FscError(f"{path}: not an episode file written by this fewshot-cryoet ({str(exc).splitlines()[0]})") from None


def split_classes(dataset: SubtomogramDataset, split: str) -> list[str]:
    """The sorted class names of ``split``, or a one-line error naming the splits there are."""
    if split not in dataset.splits:
        raise FscError(f"{dataset.path}: no split {split!r} (it has {', '.join(dataset.splits)})")
    return sorted(dataset.splits[split])


def sample_episodes(dataset: SubtomogramDataset, spec: EpisodeSpec, count: int) -> EpisodeSet:
    """Draw ``count`` episodes of ``spec`` from ``dataset`` (deterministic, see module docs)."""
    classes = split_classes(dataset, spec.split)
    if spec.n_way > len(classes):
        raise FscError(
            f"{spec.n_way}-way episodes need {spec.n_way} classes but the {spec.split} split of "
            f"{dataset.path} has {len(classes)} ({', '.join(classes)})"
        )
    per_class = {name: np.sort(dataset.indices(class_name=name)) for name in classes}
    needed = spec.k_shot + spec.q_query
    short = {name: len(idx) for name, idx in per_class.items() if len(idx) < needed}
    if short:
        detail = ", ".join(f"{n} has {c}" for n, c in sorted(short.items()))
        raise FscError(
            f"{spec.k_shot}-shot episodes with {spec.q_query} queries need {needed} subtomograms per "
            f"class, but in {dataset.path}: {detail}"
        )
    names = np.empty((count, spec.n_way), dtype=object)
    indices = np.empty((count, spec.n_way, needed), dtype=np.int64)
    for e in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, e]))
        chosen = rng.choice(len(classes), size=spec.n_way, replace=False)
        for c, class_id in enumerate(chosen):
            name = classes[class_id]
            names[e, c] = name
            indices[e, c] = rng.choice(per_class[name], size=needed, replace=False)
    return EpisodeSet(spec, names, indices)


def load_episode(
    dataset: SubtomogramDataset, episodes: EpisodeSet, number: int, snr: float | str, with_masks: bool = True
) -> Episode:
    """Read episode ``number`` of ``episodes`` from ``dataset`` at ``snr`` into tensors."""
    k = episodes.spec.k_shot
    block = episodes.indices[number]
    n_way = block.shape[0]
    support_idx = block[:, :k].reshape(-1)
    query_idx = block[:, k:].reshape(-1)
    volumes = dataset.volumes(snr)

    def read(array: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        order = np.argsort(idx)  # memory maps read fastest in file order
        out = np.empty((len(idx),) + array.shape[1:], dtype=array.dtype)
        out[order] = array[idx[order]]
        return torch.from_numpy(out).unsqueeze(1)

    masks = dataset.masks if with_masks and dataset.has_masks else None
    return Episode(
        support=read(volumes, support_idx),
        support_labels=torch.arange(n_way).repeat_interleave(k),
        query=read(volumes, query_idx),
        query_labels=torch.arange(n_way).repeat_interleave(block.shape[1] - k),
        classes=tuple(str(n) for n in episodes.class_names[number]),
        voxel_size=dataset.voxel_size,
        snr=parse_snr(snr),
        support_masks=read(masks, support_idx) if masks is not None else None,
        query_masks=read(masks, query_idx) if masks is not None else None,
        support_ids=_ids(dataset, snr, support_idx),
        query_ids=_ids(dataset, snr, query_idx),
    )


def _ids(dataset: SubtomogramDataset, snr: float | str, indices: np.ndarray) -> tuple:
    key = (dataset.content_hash, snr_label(parse_snr(snr)))
    return tuple((*key, int(i)) for i in indices)


class EpisodeSource:
    """Random episodes from one split at one SNR, or at several (each episode then draws its level:
    training for data whose noise is unknown), for training: the split's volumes (and masks) are
    read into memory once, then every ``sample`` is a cheap in-memory gather.

    With a CUDA ``device``, the split is copied to the GPU once when it takes at most half of the
    free GPU memory (else it stays in pinned host memory for asynchronous copies), so training
    episodes are gathered on the GPU with no host round-trip per episode."""

    def __init__(self, dataset: SubtomogramDataset, split: str, snr: float | str | Sequence[float | str],
                 with_masks: bool = True, device: torch.device | str | None = None) -> None:
        self.classes = split_classes(dataset, split)
        self.voxel_size = dataset.voxel_size
        self.snrs = [parse_snr(s) for s in (snr if isinstance(snr, (list, tuple)) else [snr])]
        self.snr = self.snrs[0]
        self.split = split
        indices = np.sort(np.concatenate([dataset.indices(class_name=c) for c in self.classes]))
        self._levels = [torch.from_numpy(np.asarray(dataset.volumes(s)[indices])) for s in self.snrs]
        self._masks = torch.from_numpy(np.asarray(dataset.masks[indices])) if with_masks and dataset.has_masks else None
        position = {int(p): i for i, p in enumerate(indices)}
        self._rows = {c: np.array([position[int(p)] for p in dataset.indices(class_name=c)]) for c in self.classes}
        self.device = torch.device("cpu")
        if device is not None and torch.device(device).type == "cuda":
            self._place_on(torch.device(device))

    def _place_on(self, device: torch.device) -> None:
        tensors = [*self._levels, *([self._masks] if self._masks is not None else [])]
        size = sum(t.numel() * t.element_size() for t in tensors)
        free, _ = torch.cuda.mem_get_info(device)
        if size <= free / 2:
            self._levels = [t.to(device) for t in self._levels]
            self._masks = self._masks.to(device) if self._masks is not None else None
            self.device = device
        else:
            self._levels = [t.pin_memory() for t in self._levels]
            self._masks = self._masks.pin_memory() if self._masks is not None else None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def sample(self, n_way: int, k_shot: int, q_query: int, rng: np.random.Generator) -> Episode:
        n_way = min(n_way, self.n_classes)
        chosen = rng.choice(self.n_classes, size=n_way, replace=False)
        need = k_shot + q_query
        blocks = []
        for c in chosen:
            rows = self._rows[self.classes[c]]
            blocks.append(rng.choice(rows, size=need, replace=len(rows) < need))
        block = np.stack(blocks)
        support, query = block[:, :k_shot].reshape(-1), block[:, k_shot:].reshape(-1)
        level = int(rng.integers(len(self.snrs))) if len(self.snrs) > 1 else 0  # one level: the stream as before
        volumes, masks = self._levels[level], self._masks
        support, query = torch.as_tensor(support, device=self.device), torch.as_tensor(query, device=self.device)
        return Episode(
            support=volumes[support].unsqueeze(1),
            support_labels=torch.arange(n_way, device=self.device).repeat_interleave(k_shot),
            query=volumes[query].unsqueeze(1),
            query_labels=torch.arange(n_way, device=self.device).repeat_interleave(q_query),
            classes=tuple(self.classes[c] for c in chosen),
            voxel_size=self.voxel_size,
            snr=self.snrs[level],
            support_masks=masks[support].unsqueeze(1) if masks is not None else None,
            query_masks=masks[query].unsqueeze(1) if masks is not None else None,
        )
