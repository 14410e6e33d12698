"""Which torch device a run uses: ``auto`` or an explicit device, checked before any work."""

from __future__ import annotations

import torch

from fewshot_cryoet.core.errors import SettingError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU) or an explicit torch device that must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingError("device", f"device {name!r} is not a torch device (use auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingError("device", f"device {name!r} asked for, but torch sees no CUDA GPU; use cpu")
    return device
