"""Which torch device a run uses: ``auto`` or an explicit device, checked before any work."""

from __future__ import annotations

import torch

from fewshot_cryoet.core.errors import FscError, SettingError


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


#: What to lower when a command runs out of accelerator memory, per command; the episode sizes
#: bound training, the test episodes and batches bound scoring, and --workers shares the device.
MEMORY_LEVERS = {
    "bench": "the training episode (--param METHOD.train_way=…, METHOD.train_query=…), the test episodes "
             "(--ways, --queries-per-class) or the processes sharing the device (--workers)",
    "train": "the training episode (--param METHOD.train_way=…, METHOD.train_query=…)",
    "tune": "the training episode (--param METHOD.train_way=…, METHOD.train_query=…) or the trials sharing "
            "the device (--workers)",
    "predict": "--batch-size",
}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error (CUDA or another accelerator)."""
    return isinstance(exc, torch.OutOfMemoryError)


def out_of_memory(where: str, command: str = "bench") -> FscError:
    """torch's out-of-memory error, whose text is a paragraph of allocator advice, as one line that
    says where it happened and which setting to lower."""
    lever = MEMORY_LEVERS.get(command, "the episode or batch size")
    prefix = f"{where}: " if where else ""
    return FscError(f"{prefix}out of accelerator memory; lower {lever} and run again (finished results are kept)")
