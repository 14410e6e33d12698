"""Pictures of a data set: central slices of subtomograms and their masks, per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewshot_cryoet.core.errors import SettingError
from fewshot_cryoet.datasets.dataset import SubtomogramDataset, parse_snr, snr_label

SLICE_NAMES = {"z": "XY", "y": "XZ", "x": "YZ"}


def save_figure(fig, out: str | Path, dpi: int = 110) -> Path:
    """Write a figure as PNG and close it; an unwritable path is a one-line error."""
    import matplotlib.pyplot as plt

    from fewshot_cryoet.core.outputs import save_atomic

    title = getattr(fig, "_suptitle", None)
    # Leave room above the axes for a title, so the first row of images never hides it.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()) if title is not None else None)
    try:
        save_atomic(Path(out), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    except OSError as exc:
        raise SettingError("out", f"{out}: cannot write picture ({exc.strerror}); choose a writable out") from None
    finally:
        plt.close(fig)
    return Path(out)


def draw_montage(
    dataset: SubtomogramDataset,
    out: str | Path,
    snr: float | str | None = None,
    per_class: int = 3,
    axis: str = "z",
) -> Path:
    """For each class (rows), ``per_class`` examples: central slice of the subtomogram and the
    same slice of its mask (mask outline drawn over the volume too). ``axis`` z shows an XY
    slice; y shows XZ, where the missing wedge is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    label = snr_label(parse_snr(snr)) if snr is not None else dataset.snr_labels[-1]
    volumes = dataset.volumes(label)
    masks = dataset.masks
    axes_index = {"z": 0, "y": 1, "x": 2}
    if axis not in axes_index:
        raise SettingError("axis", f"axis must be one of z, y, x, got {axis!r}")
    classes = dataset.classes
    fig, grid = plt.subplots(
        len(classes), 2 * per_class, figsize=(2 * per_class * 1.3, len(classes) * 1.35), squeeze=False
    )
    for row, name in enumerate(classes):
        picks = dataset.indices(class_name=name)[:per_class]
        for col in range(per_class):
            ax_vol, ax_mask = grid[row, 2 * col], grid[row, 2 * col + 1]
            for ax in (ax_vol, ax_mask):
                ax.set_xticks([])
                ax.set_yticks([])
            if col >= len(picks):
                ax_vol.axis("off")
                ax_mask.axis("off")
                continue
            i = int(picks[col])
            centre = dataset.box // 2
            vol = np.take(volumes[i], centre, axis=axes_index[axis])
            mask = np.take(masks[i], centre, axis=axes_index[axis])
            ax_vol.imshow(vol, cmap="gray", origin="lower")
            if mask.any():
                ax_vol.contour(mask, levels=[0.5], colors="tab:orange", linewidths=0.6, origin="lower")
            ax_mask.imshow(mask, cmap="magma", origin="lower", vmin=0, vmax=1)
        grid[row, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    for col in range(per_class):  # column headers
        grid[0, 2 * col].set_title(f"example {col + 1}", fontsize=7)
        grid[0, 2 * col + 1].set_title("its mask", fontsize=7)
    fig.suptitle(
        f"{dataset.path.name}: SNR {label}, central {SLICE_NAMES[axis]} slice "
        "(volume with mask outline | mask)",
        fontsize=8,
    )
    return save_figure(fig, out)
