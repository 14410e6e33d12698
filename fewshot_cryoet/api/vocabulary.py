"""The names front ends use, from below the API: defaults, choices, value parsers and the types
the verbs return. Re-exported here so that the command line (or a notebook, or a web form) needs
nothing below :mod:`fewshot_cryoet.api` and each lives in one place."""

from __future__ import annotations

from fewshot_cryoet.core.types import Budget, FitReport
from fewshot_cryoet.datasets.dataset import parse_snr, snr_label
from fewshot_cryoet.datasets.presets import PRESETS
from fewshot_cryoet.reports.summary import LEADERBOARD_EPISODES
from fewshot_cryoet.results.leases import STALE_SECONDS
from fewshot_cryoet.results.location import DEFAULT_STORE, StoreLocation, locate
from fewshot_cryoet.tuning import OBJECTIVES, PRUNERS, SAMPLERS
from fewshot_cryoet.tuning.storage import DEFAULT_STORAGE

__all__ = ["DEFAULT_STORAGE", "DEFAULT_STORE", "LEADERBOARD_EPISODES", "OBJECTIVES", "PRESETS", "PRUNERS", "SAMPLERS",
           "STALE_SECONDS", "Budget", "FitReport", "StoreLocation", "locate", "parse_snr", "snr_label"]
