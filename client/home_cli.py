"""``liaison cell backup|restore|seal|passphrase|reset-session``: looking after a cell's home.

Registered on the ``cell`` group by :func:`register` (end of ``cell_cli``). Each command
prints one line (``--json``: one object) and, on failure, one ``error: ...`` line with the
error's exit status (``liaison.client.errors``). See docs/backup.md.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .backup import backup as backup_home
from .backup import restore as restore_home
from .cell import Cell
from .errors import ClientError, PassphraseRequired, StateConflict
from .render import safe_text
from .state import Store

if TYPE_CHECKING:
    from .cell_cli import Context

__all__ = ["register"]

T = TypeVar("T")


def _guarded(action: Callable[[], T]) -> T:
    """Run ``action``; a ``ClientError`` becomes one line and its exit status."""
    try:
        return action()
    except ClientError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _say(ctx: Context, text: str, **data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True) if ctx.json else text)


# -- backup and restore ---------------------------------------------------------------------------


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def backup(ctx: Context, file: Path) -> None:
    """Write a consistent copy of this home's state to FILE (0600; never overwrites). Safe
    while the cell runs. Restore it with `liaison cell restore FILE`, which resets the
    sessions with every peer: never copy a home back by hand."""
    name = _guarded(lambda: backup_home(ctx.home, file))
    _say(ctx, f"backed up {safe_text(name)} to {file}", name=name, file=str(file))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="replace the cell state this home already holds")
@click.pass_obj
def restore(ctx: Context, file: Path, force: bool) -> None:
    """Restore this home from a backup FILE made by `liaison cell backup`. The home must be
    new or empty (--force replaces an existing state; stop every process using it first).
    The restored cell resets its session with every peer when it next connects."""
    result = _guarded(lambda: restore_home(file, ctx.home, force=force))
    _say(
        ctx,
        f"restored {safe_text(result.name)} from {file}; its sessions with {result.resets} "
        "peer(s) are reset when it next connects (messages received after the backup was made "
        "are not in it: their senders see them as missing)",
        name=result.name,
        resets=result.resets,
    )


# -- sealing --------------------------------------------------------------------------------------


def _read_stdin_line() -> str:
    line = sys.stdin.readline()
    if not line:
        raise click.UsageError("--passphrase-stdin: stdin ended before a passphrase")
    return line.rstrip("\r\n")


def _new_passphrase(given: str | None, from_stdin: bool) -> str:
    if from_stdin:
        value = _read_stdin_line()
    elif given is not None:
        value = given
    elif sys.stdin.isatty():
        value = click.prompt("new passphrase", hide_input=True, confirmation_prompt=True)
    else:
        raise click.UsageError(
            "no new passphrase: give it on a terminal, in LIAISON_PASSPHRASE (seal) or "
            "LIAISON_NEW_PASSPHRASE (passphrase), or with --passphrase-stdin"
        )
    if not value:
        raise click.UsageError("the passphrase must not be empty")
    return value


def _reseal(ctx: Context, old: str | None, new: str) -> int:
    def go() -> int:
        store = Store.open_exclusive(ctx.home, old)
        try:
            return store.reseal(new)
        finally:
            store.close()

    return _guarded(go)


@click.command()
@click.option("--passphrase-stdin", "from_stdin", is_flag=True,
              help="read the new passphrase from the first line of stdin")  # fmt: skip
@click.pass_obj
def seal(ctx: Context, from_stdin: bool) -> None:
    """Seal this (unsealed) home's private keys, sessions and messages with a new passphrase
    (prompted twice; or LIAISON_PASSPHRASE, or --passphrase-stdin). Atomic: a failure leaves
    the home unsealed. No other process may use the home meanwhile."""

    def check() -> None:
        try:
            Store.open(ctx.home, None).close()
        except PassphraseRequired:
            raise StateConflict(
                "this home is sealed already: change its passphrase with `liaison cell passphrase`"
            ) from None

    _guarded(check)
    new = _new_passphrase(None if from_stdin else ctx.passphrase, from_stdin)
    count = _reseal(ctx, None, new)
    _say(ctx, f"sealed ({count} values); the passphrase is needed to open this home from now on",
         sealed=count)  # fmt: skip


@click.command()
@click.option(
    "--passphrase-stdin",
    "from_stdin",
    is_flag=True,
    help="read the current and the new passphrase from stdin (one line each)",
)
@click.pass_obj
def passphrase(ctx: Context, from_stdin: bool) -> None:
    """Change the passphrase of this sealed home (the current one is required: prompted, or
    LIAISON_PASSPHRASE; the new one prompted twice, or LIAISON_NEW_PASSPHRASE, or with
    --passphrase-stdin). Atomic: a failure leaves the old passphrase in force."""
    import os

    old = _read_stdin_line() if from_stdin else ctx.passphrase

    def check() -> None:
        try:
            Store.open(ctx.home, None).close()
        except PassphraseRequired:
            return
        raise StateConflict("this home is not sealed: seal it with `liaison cell seal`")

    _guarded(check)
    if old is None:
        if not sys.stdin.isatty():
            raise click.UsageError("no current passphrase: give LIAISON_PASSPHRASE")
        old = click.prompt("current passphrase", hide_input=True)
    _guarded(lambda: Store.open(ctx.home, old).close())  # a wrong one: exit 15, before asking
    new = _new_passphrase(None if from_stdin else os.environ.get("LIAISON_NEW_PASSPHRASE"),
                          from_stdin)  # fmt: skip
    count = _reseal(ctx, old, new)
    _say(ctx, f"passphrase changed ({count} values re-sealed)", resealed=count)


# -- session reset ------------------------------------------------------------------------------


@click.command("reset-session")
@click.argument("peer")
@click.option("--timeout", type=click.FloatRange(0), default=10.0, show_default=True,
              help="seconds to wait for the relay")  # fmt: skip
@click.pass_obj
def reset_session(ctx: Context, peer: str, timeout: float) -> None:
    """Start a new session with PEER when its messages cannot be opened (this home was
    restored from an older copy, or PEER's was). PEER is told and uses the new session;
    what it sent under the old one cannot be opened here. Offline, it is done at the next
    connect."""

    async def go(secret: str | None) -> tuple[str | None, str]:
        async with Cell.open(ctx.home, secret, wait_connected=None) as opened:
            with contextlib.suppress(ClientError):
                await opened.wait_connected(timeout)
            message_id = await opened.reset_session(peer)
            status = "queued"
            if message_id is not None:
                status = await opened.wait_status(message_id, "accepted", timeout)
            return message_id, status

    message_id, status = ctx.run(go)
    shown = safe_text(peer)
    if message_id is None:
        text = f"session reset with {shown} requested: it is done when this cell next connects"
    elif status == "queued":
        text = f"session with {shown} reset; the relay has not taken it yet (sent on connect)"
    else:
        text = f"session with {shown} reset; {shown} is told when it receives {message_id[:8]}"
    _say(ctx, text, peer=peer, message_id=message_id, status=status)


def register(group: click.Group) -> None:
    """Add these commands to the ``cell`` group."""
    for command in (backup, restore, seal, passphrase, reset_session):
        group.add_command(command)
