"""The ``fsc`` command line: option declarations and printing over :mod:`fewshot_cryoet.api`."""

from fewshot_cryoet.cli.main import FscGroup, expand_list_options, main

__all__ = ["FscGroup", "expand_list_options", "main"]
