"""fewshot-cryoet: few-shot classification and segmentation benchmarks for cryo-ET subtomograms."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fewshot_cryoet.errors import FscError
from fewshot_cryoet.hookspecs import hookimpl

try:
    __version__ = version("fewshot-cryoet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["Budget", "Episode", "FewShotMethod", "FscError", "Prediction", "__version__", "hookimpl"]

_LAZY = {
    "Episode": "fewshot_cryoet.episodes",
    "FewShotMethod": "fewshot_cryoet.methods.base",
    "Prediction": "fewshot_cryoet.methods.base",
    "Budget": "fewshot_cryoet.methods.base",
}


def __getattr__(name: str):
    """Import the public API on first use, so ``import fewshot_cryoet`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fewshot_cryoet' has no attribute {name!r}")
