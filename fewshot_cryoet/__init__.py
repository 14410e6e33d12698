"""fewshot-cryoet: few-shot classification and segmentation benchmarks for cryo-ET subtomograms."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fewshot_cryoet.errors import FscError

try:
    __version__ = version("fewshot-cryoet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["FscError", "__version__"]
