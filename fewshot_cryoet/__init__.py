"""fewshot-cryoet: few-shot classification and segmentation benchmarks for cryo-ET subtomograms.

The package's layers, bottom to top, are its subpackages (DESIGN.md draws the map): ``core``,
``plugins``, ``datasets``, ``segmentation``, ``episodes``, ``models``, ``methods``, ``results``,
``evaluation``, ``reports``, ``inference``, ``tuning``, ``api`` and ``cli``.
"""

from __future__ import annotations

from fewshot_cryoet.core import moved
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.version import __version__
from fewshot_cryoet.plugins.hookspecs import hookimpl

moved.install()  # old module paths (fewshot_cryoet.store, ...) keep working for one release

__all__ = ["Budget", "Episode", "FewShotMethod", "FscError", "Prediction", "__version__", "hookimpl"]

_LAZY = {
    "Episode": "fewshot_cryoet.episodes",
    "FewShotMethod": "fewshot_cryoet.methods.base",
    "Prediction": "fewshot_cryoet.methods.base",
    "Budget": "fewshot_cryoet.core.types",
}


def __getattr__(name: str):
    """Import the public API on first use, so ``import fewshot_cryoet`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fewshot_cryoet' has no attribute {name!r}")
