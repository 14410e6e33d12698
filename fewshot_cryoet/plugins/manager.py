"""Plugin loading with pluggy: built-ins first, then the ``fewshot_cryoet`` entry points.

Built-in plugins are registered exactly like third-party ones (the datasette pattern). Each
plugin's hook is called on its own, so a plugin that fails to import, raises in a hook or
registers a name that is already taken is reported once (with its distribution name) and
skipped while everything else keeps working. ``FSC_DISABLE_PLUGINS=name,...`` blocks plugins by
entry-point or distribution name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points

import pluggy

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.plugins import hookspecs
from fewshot_cryoet.plugins.registry import Origin, Registry

BUILTIN_PLUGINS = ("fewshot_cryoet.methods.builtin", "fewshot_cryoet.datasets.builtin")


@dataclass
class PluginFailure:
    plugin: str
    origin: Origin
    error: str

    def __str__(self) -> str:
        return f"plugin {self.plugin} ({self.origin}) skipped: {self.error}"


@dataclass
class Plugins:
    """The loaded plugin manager, the registries filled from it, and what failed."""

    manager: pluggy.PluginManager
    methods: Registry
    datasets: Registry
    sources: Registry
    failures: list[PluginFailure] = field(default_factory=list)
    origins: dict[str, Origin] = field(default_factory=dict)


def disabled_plugins() -> set[str]:
    return {n.strip() for n in os.environ.get("FSC_DISABLE_PLUGINS", "").split(",") if n.strip()}


def load_plugins() -> Plugins:
    """Build a fresh plugin manager and registries (see :func:`get_plugins` for the cached one)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager, Registry("method"), Registry("data set"), Registry("particle source"))
    blocked = disabled_plugins()
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        manager.register(module, module_name)
        plugins.origins[module_name] = Origin(module_name)
    for ep in entry_points(group=hookspecs.PROJECT):
        dist = ep.dist.name if ep.dist is not None else None
        origin = Origin(ep.name, dist or "unknown distribution", ep.dist.version if ep.dist else None)
        if ep.name in blocked or (dist and dist in blocked):
            continue
        if manager.get_plugin(ep.name) is not None:
            plugins.failures.append(PluginFailure(ep.name, origin, "another plugin already uses this name"))
            continue
        try:
            module = ep.load()
            manager.register(module, ep.name)
        except (Exception, SystemExit) as exc:  # a broken plugin (even one calling sys.exit) must not take the suite down
            plugins.failures.append(PluginFailure(ep.name, origin, _one_line(exc)))
            continue
        plugins.origins[ep.name] = origin
    _call_each(plugins, "fsc_register_methods", plugins.methods)
    _call_each(plugins, "fsc_register_datasets", plugins.datasets)
    _call_each(plugins, "fsc_register_sources", plugins.sources)
    return plugins


def _call_each(plugins: Plugins, hook_name: str, registry: Registry) -> None:
    """Call every plugin's implementation separately (in registration order, built-ins first):
    a hook that raises loses everything it registered; a name already taken is skipped."""
    hook = getattr(plugins.manager.hook, hook_name)
    for impl in hook.get_hookimpls():
        origin = plugins.origins.get(impl.plugin_name, Origin(impl.plugin_name))
        scoped = registry.scoped(origin)
        try:
            impl.function(registry=scoped)
        except (Exception, SystemExit) as exc:
            scoped.rollback()
            plugins.failures.append(PluginFailure(impl.plugin_name, origin, _one_line(exc)))
            continue
        for clash in scoped.clashes:
            plugins.failures.append(PluginFailure(impl.plugin_name, origin, clash))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugins (loaded once; the command line reports their failures once)."""
    return load_plugins()


def require_methods(names: list[str]) -> list:
    """Resolve method names, failing with the list of available ones before any work starts."""
    registry = get_plugins().methods
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise FscError(
            f"unknown method(s) {', '.join(unknown)}; available: {', '.join(registry.names()) or 'none'}"
        )
    return [registry.get(n) for n in names]
