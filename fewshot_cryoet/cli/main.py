"""The ``fsc`` command line: a thin face over :mod:`fewshot_cryoet.api`.

Each command parses its options, calls one API function and prints what it returns. Every command
turns :class:`FscError` into one line on stderr and exit status 2 (credentials masked, paths
printed literally, a library setting shown as its option), Ctrl-C into exit status 130 and SIGTERM
into 143; outputs are written atomically, so neither leaves half-written data that looks complete.
"""

from __future__ import annotations

import sys

import click
from rich.text import Text

from fewshot_cryoet import api
from fewshot_cryoet.cli.terminal import (
    console,
    error_text,
    print_error,
    print_warning,
)
from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.version import __version__


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every partial output is cleaned up the same way."""


#: Seconds after which a SIGTERM that arrived inside a finaliser is delivered again.
REDELIVER_SECONDS = 0.05


def _on_sigterm(signum, frame) -> None:
    """Raise :class:`Terminated`, unless the signal arrived inside a ``__del__``: Python prints and
    ignores an exception raised there (a file object closed by the garbage collector was the case
    seen), so the command would run on to the end. Then the signal is sent again a moment later,
    when the finaliser has returned."""
    caller = frame
    while caller is not None:
        if caller.f_code.co_name == "__del__":
            import os
            import threading

            threading.Timer(REDELIVER_SECONDS, os.kill, (os.getpid(), signum)).start()
            return
        caller = caller.f_back
    raise Terminated


#: Options that take several values after one flag, as users type them (``--templates maps/ model.cif``).
LIST_OPTIONS = ("--templates",)


def expand_list_options(args: list[str]) -> list[str]:
    """``--templates a b --snr 1`` → ``--templates a --templates b --snr 1``: click options take one
    value per flag, so the values after one flag are spelled out; a token starting with ``-`` ends
    the list. No command with such an option takes positional arguments, so nothing is swallowed."""
    out: list[str] = []
    current: str | None = None  # the list option whose values follow
    awaiting = False  # its own value (``--templates a``) has not come yet
    for token in args:
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            current = name if name in LIST_OPTIONS else None
            awaiting = current is not None and "=" not in token
            out.append(token)
        elif current is not None and not awaiting:
            out += [current, token]
        else:
            awaiting = False
            out.append(token)
    return out


class FscGroup(click.Group):
    """Reports FscError as one line and exit status 2, Ctrl-C as 130, SIGTERM as 143; several
    values after one list option are accepted (:func:`expand_list_options`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not ctx.parent:  # the top-level group sees every token once
            args = expand_list_options(list(args))
            ctx.meta["fsc.args"] = list(args)  # the command as given, for --workers to repeat
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            api.check_installation()  # a broken torch/torchvision pair, in one line, before any command
            return super().invoke(ctx)
        except FscError as exc:
            print_error(error_text(exc))
            sys.exit(2)
        except RuntimeError as exc:  # torch's out-of-memory error: one line naming what to lower
            if not api.is_out_of_memory(exc):
                raise
            print_error(api.out_of_memory(f"fsc {ctx.invoked_subcommand}", ctx.invoked_subcommand or ""))
            sys.exit(2)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            console.print(Text.assemble(("fsc: terminated" if terminated else "fsc: interrupted", "bold red"),
                                        "; finished work is kept (results in the store, trained models, imported "
                                        "particles) and only this run's unfinished output folder was removed. Run "
                                        "the same command again to continue (fsc bench: add --resume)."))
            sys.exit(143 if terminated else 130)


@click.group(cls=FscGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fsc")
def main() -> None:
    """fewshot-cryoet: few-shot classification and segmentation benchmarks for cryo-ET."""


def _add_commands() -> None:
    """The built-in commands (one module per group of verbs), then plugins' commands
    (``fsc_add_cli_commands``); a plugin that fails to load or to add commands is reported, never
    fatal."""
    from fewshot_cryoet.cli.bench import bench, leaderboard, list_methods
    from fewshot_cryoet.cli.data import combine, export, import_, info, show, simulate
    from fewshot_cryoet.cli.models import predict, train
    from fewshot_cryoet.cli.tune import tune

    for command in (simulate, import_, combine, show, export, info, bench, list_methods, leaderboard, tune, train, predict):
        main.add_command(command)
    for failure in api.plugin_failures():
        print_warning(failure)
    api.add_plugin_commands(main, print_warning)


_add_commands()

if __name__ == "__main__":
    main()
