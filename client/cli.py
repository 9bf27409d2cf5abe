"""The ``liaison`` command line: ``server``, ``admin`` and ``cell`` command groups."""

from __future__ import annotations

import sys

import click

__all__ = ["main"]

EXIT_NOT_AVAILABLE = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="liaison-relay", prog_name="liaison")
def main() -> None:
    """Liaison: end-to-end-encrypted messaging between liaison cells."""


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

main.add_command(cell)
