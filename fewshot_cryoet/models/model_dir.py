"""Self-describing model folders written by ``fsc train`` and read by ``fsc predict``.

A model folder holds ``model.json`` (method, variant, hyper-parameters, box and voxel size, how
volumes were normalised, the training data set's name, hash and SNR, the budget and what training
achieved, the package version) and ``weights.pt`` (the method's checkpoint, as the runner writes
them). The folder is written under a temporary name and renamed into place, so an interrupted
``fsc train`` never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewshot_cryoet.core.errors import FscError

MODEL_FORMAT = 1


@dataclass
class ModelCard:
    method: str
    variant: str
    params: dict[str, Any]
    box: int
    voxel_size: float
    normalisation: str
    dataset: str
    dataset_hash: str
    snr: str
    budget: str
    package_version: str
    format: int = MODEL_FORMAT
    train_classes: list[str] = field(default_factory=list)
    fit: dict[str, Any] = field(default_factory=dict)
    created: str = ""


def save_model(method, card: ModelCard, out: Path, overwrite: bool = False) -> Path:
    """Write ``out/model.json`` and ``out/weights.pt`` atomically (see ``outputs.AtomicFolder``:
    only a model folder we wrote is ever replaced)."""
    from fewshot_cryoet.core.outputs import AtomicFolder, write_json

    card.created = card.created or time.strftime("%Y-%m-%dT%H:%M:%S")
    with AtomicFolder(Path(out), "model", overwrite) as folder:
        if method.trainable:
            method.save(folder.tmp / "weights.pt", card.box)
        write_json(folder.tmp / "model.json", asdict(card))
        return folder.commit()


def load_model(folder: Path, device: str | torch.device = "cpu"):
    """(method ready to predict, its card); refuses folders from a newer format or another
    package's files with a one-line error naming the folder."""
    from fewshot_cryoet.core.version import __version__
    from fewshot_cryoet.plugins import require_methods

    folder = Path(folder)
    card_path = folder / "model.json"
    if not card_path.exists():
        raise FscError(f"{folder}: not a model folder (no model.json); create one with fsc train")
    try:
        data = json.loads(card_path.read_text())
        card = ModelCard(**data)
    except (ValueError, TypeError) as exc:
        raise FscError(f"{card_path}: unreadable model description ({exc})") from None
    if card.format > MODEL_FORMAT:
        raise FscError(f"{folder}: model format {card.format} was written by a newer fewshot-cryoet "
                       f"({card.package_version}); this is {__version__} (format {MODEL_FORMAT}): upgrade")
    cls = require_methods([card.method])[0]
    unknown = sorted(set(card.params) - set(cls.defaults))
    if unknown:
        raise FscError(f"{card_path}: hyper-parameters {', '.join(unknown)} are unknown to {card.method} "
                       f"in this version ({__version__}); was the model made by another version?")
    if cls.trainable:
        from fewshot_cryoet.models.checkpoints import method_from_payload, read_checkpoint

        weights = folder / "weights.pt"
        if not weights.exists():
            raise FscError(f"{folder}: weights.pt is missing; the folder is incomplete")
        method = method_from_payload(cls, card.params, card.variant, read_checkpoint(weights, device), weights,
                                     card.box, device)
    else:
        method = cls(card.params, card.variant, device)
    if card.normalisation != method.inputs.describe():  # the card's words must be what this code does
        raise FscError(f"{folder}: model expects volumes normalised as {card.normalisation!r}, which this "
                       f"version ({__version__}) cannot apply; use the version that made it "
                       f"({card.package_version})")
    return method, card
