"""The ``liaison`` command line: ``server``, ``admin`` and ``cell`` command groups."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["main"]

EXIT_NOT_AVAILABLE = 3
EXIT_INTERRUPTED = 130


class _Main(click.Group):
    """The root group: whatever a command does, a failure is one line and a documented exit.

    * Ctrl-C at any moment (parsing, a prompt, a command) exits 130, quietly;
    * an argument that is not valid UTF-8 (``$'\\xff'``) is a usage error (exit 2), before any
      command could pass it on as text;
    * an exception no command translated (a bug) is one ``error:`` line and exit 1
      (``LIAISON_DEBUG=1`` shows the traceback).
    """

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:  # fmt: skip
        _check_utf8(args)
        try:
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C at a prompt
                sys.exit(EXIT_INTERRUPTED)
            raise
        except (click.ClickException, click.exceptions.Exit):
            raise
        except OSError as exc:  # a closed pipe is click's; a full disk etc. is one line
            import errno

            if exc.errno == errno.EPIPE or os.environ.get("LIAISON_DEBUG"):
                raise
            click.echo(f"error: {exc.strerror or type(exc).__name__}", err=True)
            sys.exit(1)
        except Exception as exc:
            if os.environ.get("LIAISON_DEBUG"):
                raise
            # The type only: an unexpected exception's text may hold anything.
            click.echo(f"error: unexpected internal error ({type(exc).__name__}); "
                       "LIAISON_DEBUG=1 shows the details", err=True)  # fmt: skip
            sys.exit(1)


def _check_utf8(args: Sequence[str]) -> None:
    for position, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise click.UsageError(
                f"argument {position} is not valid UTF-8 text (check the terminal's encoding)"
            ) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="liaison-relay", prog_name="liaison")
def main() -> None:
    """Liaison: end-to-end-encrypted messaging between liaison cells.

    \b
    Shell completion (bash; zsh and fish alike, with zsh_source / fish_source):
      eval "$(_LIAISON_COMPLETE=bash_source liaison)"
    """


def _server_group() -> click.Group:
    """``liaison server ...`` lives in the relay package; the client install works without it."""
    try:
        from liaison.server.cli import server
    except ImportError as exc:
        missing = exc.name or "a server dependency"

        @click.group(
            "server", invoke_without_command=True, context_settings={"ignore_unknown_options": True}
        )
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args: tuple[str, ...]) -> None:
            """Run and administer a relay (needs the [server] extra)."""
            click.echo(
                f"liaison: the relay is not installed ({missing} is missing); "
                "install it with: pip install 'liaison-relay[server]'",
                err=True,
            )
            sys.exit(EXIT_NOT_AVAILABLE)

        return unavailable
    return server


main.add_command(_server_group(), "server")


from .admin_cli import admin  # noqa: E402 - registered last, after the groups above

main.add_command(admin)

from .cell_cli import cell  # noqa: E402 - registered after the groups above
from .relocate_cli import relocate_command  # noqa: E402

cell.add_command(relocate_command)
main.add_command(cell)
