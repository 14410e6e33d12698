"""Plugin hooks. Every hook is prefixed ``fsc_`` so plugins can be grepped for.

A plugin is a module that implements some of these with ``@fewshot_cryoet.hookimpl``. Third-party
packages expose theirs through the entry-point group ``fewshot_cryoet``::

    [project.entry-points.fewshot_cryoet]
    mymethod = "mypackage.plugin"

Built-in methods and data sets are plugins too, registered through the very same hooks.
"""

from __future__ import annotations

import pluggy

PROJECT = "fewshot_cryoet"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def fsc_register_methods(registry) -> None:
    """Add few-shot method classes (subclasses of ``FewShotMethod``) with ``registry.add(cls)``."""


@hookspec
def fsc_register_datasets(registry) -> None:
    """Add named data set providers (``DatasetProvider``) with ``registry.add(provider)``."""


@hookspec
def fsc_register_sources(registry) -> None:
    """Add kinds of particle source (subclasses of ``datasets.sources.base.ParticleSource``) with
    ``registry.add(cls)``: ``fsc import`` and ``--dataset`` then read users' data of that kind. A
    kind is found by asking each registered class, in order, whether it ``accepts`` a path."""


@hookspec
def fsc_add_cli_commands(cli) -> None:
    """Add click commands to the ``fsc`` group with ``cli.add_command(command)``."""
