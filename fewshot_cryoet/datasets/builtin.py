"""Built-in data set providers, registered through the same hook as third-party plugins."""

from __future__ import annotations

from fewshot_cryoet.plugins.hookspecs import hookimpl


@hookimpl
def fsc_register_datasets(registry) -> None:
    from fewshot_cryoet.datasets.providers import many_classes_provider, synthetic_provider

    registry.add(synthetic_provider())
    registry.add(many_classes_provider())


@hookimpl
def fsc_register_sources(registry) -> None:
    """Most specific first: a STAR table with image paths is labelled subtomograms, one with only
    coordinates is picks in tomograms."""
    from fewshot_cryoet.datasets.sources.copick_project import CopickSource
    from fewshot_cryoet.datasets.sources.labelled import FolderSource, TableSource
    from fewshot_cryoet.datasets.sources.tomograms import TomogramSource

    for cls in (FolderSource, TableSource, TomogramSource, CopickSource):
        registry.add(cls)
