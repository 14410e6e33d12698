"""Figures of a method's output: segmentations beside the ground truth, raw and CRF-refined.

Separate from ``datasets.montage`` (pictures of data only) because it needs a method, episodes and
the scorer; the CRF and Dice come from ``scoring`` like every other number of the suite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.dataset import SubtomogramDataset, parse_snr, snr_label
from fewshot_cryoet.datasets.montage import save_figure
from fewshot_cryoet.evaluation.metrics import dice
from fewshot_cryoet.evaluation.scoring import RAW_THRESHOLD, Scorer


def draw_segmentations(
    dataset: SubtomogramDataset, method, out: str | Path, snr: float | str | None = None, split: str = "test",
) -> Path:
    """Figures like the COS-Net paper's 3-4: for each class of ``split``, the central XY slice of a
    query subtomogram, its ground-truth mask, the method's raw mask (probability > 0.5) and the
    3D dense CRF-refined mask, with the Dice of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from fewshot_cryoet.episodes import Episode

    if not method.segments:
        raise FscError(f"{method.label} does not segment; choose a variant with a decoder")
    label = snr_label(parse_snr(snr)) if snr is not None else dataset.snr_labels[-1]
    volumes, masks = dataset.volumes(label), dataset.masks
    classes = sorted(dataset.splits.get(split, []))
    picks = [dataset.indices(class_name=c)[:2] for c in classes]
    if len(classes) < 2 or any(len(p) < 2 for p in picks):
        raise FscError(f"{dataset.path}: the {split} split needs ≥ 2 classes with ≥ 2 subtomograms each")
    support = torch.from_numpy(np.stack([volumes[p[0]] for p in picks])).unsqueeze(1)
    query = torch.from_numpy(np.stack([volumes[p[1]] for p in picks])).unsqueeze(1)
    truth = torch.from_numpy(np.stack([masks[p[1]] for p in picks])).unsqueeze(1)
    labels = torch.arange(len(classes))
    episode = Episode(support, labels, query, labels, tuple(classes), dataset.voxel_size, parse_snr(label),
                      None, truth)
    probabilities = method.predict(episode).probabilities
    scorer = Scorer(method.crf_params())
    fig, grid = plt.subplots(len(classes), 4, figsize=(6.4, 1.6 * len(classes)), squeeze=False)
    centre = dataset.box // 2
    for row, name in enumerate(classes):
        raw = probabilities[row, 0] > RAW_THRESHOLD
        refined = torch.from_numpy(scorer.mask(probabilities[row, 0], query[row, 0]))
        true = truth[row, 0] > 0
        panels = [
            (query[row, 0, centre].numpy(), "gray", "subtomogram"),
            (true[centre].numpy(), "magma", "ground truth"),
            (raw[centre].numpy(), "magma", f"raw, Dice {float(dice(raw[None], true[None])[0]):.2f}"),
            (refined[centre].numpy(), "magma", f"CRF, Dice {float(dice(refined[None], true[None])[0]):.2f}"),
        ]
        for col, (image, cmap, title) in enumerate(panels):
            ax = grid[row, col]
            ax.imshow(image, cmap=cmap, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
        grid[row, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(f"{method.label}: {split} classes at SNR {label}", fontsize=8)
    return save_figure(fig, out)
