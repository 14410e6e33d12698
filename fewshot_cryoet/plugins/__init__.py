"""Plugins: the hook specifications, one registry per concept, and the manager that loads the
built-ins and every ``fewshot_cryoet`` entry point through the same hooks."""

from fewshot_cryoet.plugins.manager import (
    BUILTIN_PLUGINS,
    PluginFailure,
    Plugins,
    disabled_plugins,
    get_plugins,
    load_plugins,
    require_methods,
)

__all__ = ["BUILTIN_PLUGINS", "PluginFailure", "Plugins", "disabled_plugins", "get_plugins", "load_plugins",
           "require_methods"]
