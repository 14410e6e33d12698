"""What front ends need of the plugins: the ones that failed to load (to warn once), and the
commands plugins add through ``fsc_add_cli_commands``."""

from __future__ import annotations

from typing import Any, Callable


def plugin_failures() -> list[str]:
    """One line per plugin that failed to import, raised in a hook or clashed with a name."""
    from fewshot_cryoet.plugins import get_plugins

    return [str(failure) for failure in get_plugins().failures]


def add_plugin_commands(cli: Any, on_failure: Callable[[str], None]) -> None:
    """Let each plugin add its commands to ``cli`` (a click group); one that raises is reported
    through ``on_failure`` and skipped, never fatal."""
    from fewshot_cryoet.plugins import get_plugins

    for impl in get_plugins().manager.hook.fsc_add_cli_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except (Exception, SystemExit) as exc:
            on_failure(f"plugin {impl.plugin_name} could not add commands: {exc}")
