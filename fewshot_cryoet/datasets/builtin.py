"""Built-in data set providers, registered through the same hook as third-party plugins."""

from __future__ import annotations

from fewshot_cryoet.hookspecs import hookimpl


@hookimpl
def fsc_register_datasets(registry) -> None:
    from fewshot_cryoet.datasets.providers import synthetic_provider

    registry.add(synthetic_provider())
