"""The installed distribution's version, recorded in every file we write (checkpoints, model
folders, manifests, results rows) so a reader can say which code produced it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fewshot-cryoet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
