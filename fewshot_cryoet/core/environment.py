"""Whether this installation can work, said in one line before any command runs.

Why: pip resolves torch and torchvision separately, so an index that lacks the right pair can
leave a torch of one release beside a torchvision of another. Both import, ``fsc --help`` runs,
and every model then fails deep inside timm with ``operator torchvision::nms does not exist``.
torchvision ``0.(N + 15)`` belongs to torch ``2.N``; the versions are read from the installed
distributions' metadata, so the check costs no import. A pair that matches in number but not
in build (two indexes) is caught where timm is first imported (:func:`timm_optim`), which is
before any data are read or any model is built.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

from fewshot_cryoet.core.errors import FscError


def pair_problem(torch_version: str | None, torchvision_version: str | None) -> str | None:
    """Why these torch and torchvision versions do not work together, or None."""
    if torch_version is None:
        return "torch is not installed; install it first (see the README's set-up)"
    if torchvision_version is None:
        return f"torchvision is not installed (timm needs it); install torchvision=={_partner(torch_version)}.*"
    torch_minor, vision_minor = _minor(torch_version, 2), _minor(torchvision_version, 0)
    if torch_minor is None or vision_minor is None or vision_minor == torch_minor + 15:
        return None  # a pair we can read and that matches, or a build we cannot judge
    return (f"torch {torch_version} and torchvision {torchvision_version} do not work together; install the pair, "
            f"e.g. pip install 'torchvision=={_partner(torch_version)}.*' (or the torch of your torchvision)")


def check_installation() -> None:
    """Refuse, in one line, an installation whose torch and torchvision do not belong together."""
    problem = pair_problem(_installed("torch"), _installed("torchvision"))
    if problem:
        raise FscError(problem)


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _minor(text: str, major: int) -> int | None:
    match = re.match(rf"{major}\.(\d+)", text)
    return int(match.group(1)) if match else None


def _partner(torch_version: str) -> str:
    minor = _minor(torch_version, 2)
    return f"0.{minor + 15}" if minor is not None else "the matching version"


def timm_optim():
    """``timm.optim``, or a one-line error naming the torch/torchvision pair when they do not load
    together (importing timm imports torchvision, whose operators need a torch of its own build)."""
    try:
        import timm.optim
    except (ImportError, RuntimeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise FscError(f"torch {_installed('torch')} and torchvision {_installed('torchvision')} do not load together "
                       f"({first}); install a matching pair from one index, e.g. pip install "
                       f"'torch=={_installed('torch')}' 'torchvision=={_partner(_installed('torch') or '')}.*'") from None
    return timm.optim
