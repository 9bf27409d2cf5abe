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


@main.group()
def server() -> None:
    """Run and administer a relay (needs the [server] extra)."""


@server.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def server_run(host: str, port: int) -> None:
    """Start the relay."""
    click.echo(
        f"liaison: the relay ({host}:{port}) is not implemented yet; it arrives with issue #3",
        err=True,
    )
    sys.exit(EXIT_NOT_AVAILABLE)
