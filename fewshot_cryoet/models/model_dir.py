"""Self-describing model folders written by ``fsc train`` and read by ``fsc predict``.

A model folder holds ``model.json`` (method, variant, hyper-parameters, box and voxel size, how
volumes were normalised, the training data set's name, hash and SNR, the budget and what training
achieved, the package version) and ``weights.pt`` (the method's checkpoint, as the runner writes
them). The folder is written under a temporary name and renamed into place, so an interrupted
``fsc train`` never leaves a folder that looks complete.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewshot_cryoet.core import strict_json
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.datasets.mrc_io import MAX_VOXEL_SIZE, MIN_VOXEL_SIZE

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


#: A model.json is a page of text; a larger one is not ours.
MAX_CARD_BYTES = 1 << 20


def read_card(path: Path) -> ModelCard:
    """A model folder's card, every field checked (a model folder may come from another machine):
    a one-line error naming the file and the field otherwise."""
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise FscError(f"{path}: {path.stat().st_size:,} bytes is not a model description")
        data = strict_json.loads(path.read_text(encoding="utf-8"))
        card = ModelCard(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise FscError(f"{path}: unreadable model description ({type(exc).__name__}: {str(exc)[:120]})") from None
    checks = {
        "method": isinstance(card.method, str) and bool(card.method),
        "variant": isinstance(card.variant, str),
        "params": isinstance(card.params, dict),
        "box": isinstance(card.box, int) and not isinstance(card.box, bool) and 4 <= card.box <= 1024,
        "voxel_size": isinstance(card.voxel_size, (int, float)) and not isinstance(card.voxel_size, bool)
        and MIN_VOXEL_SIZE <= card.voxel_size <= MAX_VOXEL_SIZE,
        "normalisation": isinstance(card.normalisation, str),
        "format": isinstance(card.format, int) and not isinstance(card.format, bool) and card.format >= 1,
        "train_classes": isinstance(card.train_classes, list) and all(isinstance(c, str) for c in card.train_classes),
        "fit": isinstance(card.fit, dict) and _temperature_ok(card.fit.get("temperature")),
        "package_version": isinstance(card.package_version, str),
    }
    wrong = [name for name, ok in checks.items() if not ok]
    if wrong:
        shown = ", ".join(f"{name}={strict_json.shown(getattr(card, name))}" for name in wrong)
        raise FscError(f"{path}: invalid {shown} (a model folder written by fsc train has none of these)")
    return card


def _temperature_ok(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6)


def load_model(folder: Path, device: str | torch.device = "cpu"):
    """(method ready to predict, its card); refuses folders from a newer format or another
    package's files with a one-line error naming the folder."""
    from fewshot_cryoet.core.version import __version__
    from fewshot_cryoet.plugins import require_methods

    folder = Path(folder)
    card_path = folder / "model.json"
    if not card_path.exists():
        raise FscError(f"{folder}: not a model folder (no model.json); create one with fsc train")
    card = read_card(card_path)
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
