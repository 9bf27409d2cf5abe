"""``liaison cell ...``: a liaison cell's operator commands, over the SDK.

Human-readable output by default, ``--json`` for scripts (``listen --json`` prints one JSON
object per line). Every failure prints one line ``error: ...`` on stderr and exits with the
error's documented status (see ``liaison.client.errors``; 2 is a usage error); no tracebacks.
``LIAISON_HOME`` and ``LIAISON_PASSPHRASE`` may replace ``--home`` and the passphrase prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from . import cli_ops, listening
from .cell import Cell
from .errors import ClientError, PassphraseRequired
from .listening import STALE_NOTE, local_note
from .models import Message, OutboxEntry, Peer

__all__ = ["cell"]

T = TypeVar("T")
PRECEDENCES = ("flash", "immediate", "priority", "routine")


class Context:
    def __init__(self, home: Path, passphrase: str | None, as_json: bool) -> None:
        self.home = home
        self.passphrase = passphrase
        self.json = as_json

    def run(self, make: Callable[[str | None], Coroutine[Any, Any, T]]) -> T:
        """Run ``make(passphrase)``; prompt once if the home is sealed and no passphrase was
        given; turn every SDK error into one line and its exit status."""
        try:
            try:
                return asyncio.run(make(self.passphrase))
            except PassphraseRequired:
                if not sys.stdin.isatty():
                    raise
                self.passphrase = click.prompt("passphrase", hide_input=True)
                return asyncio.run(make(self.passphrase))
        except ClientError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)


def _dump(value: Any) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return obj.isoformat()
        if isinstance(obj, bytes):
            return obj.hex()
        raise TypeError(type(obj).__name__)

    return json.dumps(value, default=default, sort_keys=True)


def _message_json(message: Message) -> dict[str, Any]:
    # Not dataclasses.asdict: it would deep-copy the private mark-read callback too.
    data = {f.name: getattr(message, f.name) for f in fields(message) if not f.name.startswith("_")}
    if isinstance(message.body, bytes):
        data["body"] = message.body.hex()
        data["body_encoding"] = "hex"
    return data


def _message_line(message: Message) -> str:
    when = message.received_at.strftime("%H:%M:%S")
    marking = f" [{message.marking}]" if message.marking else ""
    head = f"{when} {message.precedence.upper():<9} {message.sender}{marking}:"
    if message.error is not None:
        return f"{head} (could not be opened: {message.error})"
    if isinstance(message.body, bytes):
        return f"{head} ({message.content_type}, {len(message.body)} bytes)"
    return f"{head} {message.body}"


@click.group()
@click.option(
    "--home",
    envvar="LIAISON_HOME",
    required=True,
    type=click.Path(path_type=Path),
    help="the cell's state directory [env LIAISON_HOME]",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def cell(ctx: click.Context, home: Path, as_json: bool) -> None:
    """Operate a liaison cell: enroll, send, listen, verify peers.

    \b
    Exit status: 0 ok, 2 usage, 10 unknown peer, 11 not paired, 12 peer key changed,
    13 relay unreachable, 14 bad enrollment code, 15 wrong or missing passphrase,
    16 corrupted state, 17 this cell revoked, 18 suspended, 19 not enrolled,
    20 already enrolled, 21 replaced by another process, 22 peer revoked,
    23 peer has no prekeys, 24 message too large, 25 unknown message, 26 protocol error,
    27 state in use by another process, 28 another process is receiving (listen),
    29 another process holds the link (SDK), 30 the process holding the link did not answer,
    1 other.

    \b
    While a process holds this home's link (a running listen), the other commands hand their
    work to it over <home>/cell.sock and print the same output. With the relay down, send
    stores the message and prints queued; peers, safety-number, verify, outbox, history and
    inbox work from local state (a note on stderr says it may be stale).
    """
    import os

    ctx.obj = Context(home, os.environ.get("LIAISON_PASSPHRASE"), as_json)


@cell.command()
@click.option("--server", envvar="LIAISON_SERVER", required=True, help="the relay's URL")
@click.option("--code", required=True, help="the one-time enrollment code (ln1-...)")
@click.option("--name", default=None, help="the name the admin gave this cell (checked)")
@click.option("--seal", is_flag=True, help="prompt for a passphrase to seal private keys")
@click.pass_obj
def enroll(ctx: Context, server: str, code: str, name: str | None, seal: bool) -> None:
    """Enroll this home as a cell with a one-time code from the admin."""
    if seal and ctx.passphrase is None:
        ctx.passphrase = click.prompt("new passphrase", hide_input=True, confirmation_prompt=True)

    async def go(passphrase: str | None) -> Cell:
        return await Cell.enroll(
            ctx.home, server=server, code=code, name=name, passphrase=passphrase
        )

    enrolled = ctx.run(go)

    async def describe(passphrase: str | None) -> dict[str, str]:
        async with Cell.open(ctx.home, passphrase, connect=False) as opened:
            return {"cell_id": opened.cell_id, "name": opened.name, "server": opened.server}

    del enrolled
    info = ctx.run(describe)
    if ctx.json:
        click.echo(_dump(info))
    else:
        click.echo(f"enrolled {info['name']} ({info['cell_id']}) at {info['server']}")


@cell.command()
@click.argument("peer")
@click.argument("text", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="send this file's bytes instead of TEXT",
)
@click.option("--precedence", type=click.Choice(PRECEDENCES), default="routine", show_default=True)
@click.option("--ttl", type=click.IntRange(1), default=3600, show_default=True, help="seconds")
@click.option("--marking", default="", help='classification marking, e.g. "NATO RESTRICTED"')
@click.option(
    "--wait",
    type=click.Choice(["accepted", "delivered", "read"]),
    default="accepted",
    show_default=True,
    help="return once the message reached this status",
)
@click.option("--timeout", type=click.FloatRange(0), default=30.0, show_default=True)
@click.pass_obj
def send(
    ctx: Context,
    peer: str,
    text: str | None,
    path: Path | None,
    precedence: str,
    ttl: int,
    marking: str,
    wait: str,
    timeout: float,
) -> None:
    """Send TEXT (or --file) to PEER. The message is stored first and sent until the relay
    has it, across restarts too."""
    if (text is None) == (path is None):
        raise click.UsageError("give either TEXT or --file")
    body: str | bytes = path.read_bytes() if path is not None else str(text)
    params: dict[str, Any] = {"peer": peer, "precedence": precedence, "ttl": ttl,
                              "marking": marking, "wait": wait, "timeout": timeout}  # fmt: skip
    params |= {"text": body} if isinstance(body, str) else {"hex": body.hex()}

    async def go(passphrase: str | None) -> tuple[str, str]:
        # Stored first, then sent: here, or by the process holding this home's link.
        result = await cli_ops.run_op(ctx.home, passphrase, "send", params)
        return result["message_id"], result["status"]

    message_id, status = ctx.run(go)
    if ctx.json:
        click.echo(_dump({"message_id": message_id, "status": status}))
    else:
        click.echo(f"{message_id} {status}")
        if status == "queued":
            click.echo(
                "the relay was not reached; it is sent when this cell next connects", err=True
            )


@cell.command()
@click.option("--count", type=click.IntRange(1), default=None, help="stop after N messages")
@click.option(
    "--timeout", type=click.FloatRange(0), default=None, help="stop after this many seconds"
)
@click.option("--no-read", is_flag=True, help="do not send read receipts")
@click.pass_obj
def listen(ctx: Context, count: int | None, timeout: float | None, no_read: bool) -> None:
    """Print incoming messages and send read receipts. A message counts as handed over only
    once it has been printed (and flushed): after a crash or a kill it is printed again by the
    next ``listen``, never lost (at least once; the message id tells repeats apart).

    One listen per home (a second exits with 28); the home's other commands run beside it.
    With the relay down it waits and retries ("relay unreachable, retrying" on stderr)."""

    async def go(passphrase: str | None) -> int:
        seen = 0
        # The one receiver of this home (else 28); waits out relay outages (listening.py).
        async with listening.receiver(ctx.home, passphrase) as opened:

            async def consume() -> None:
                nonlocal seen
                async for message in opened.messages(confirm=True):
                    if ctx.json:
                        click.echo(_dump(_message_json(message)))
                    else:
                        click.echo(_message_line(message))  # click.echo flushes
                    if not no_read and message.error is None:
                        await message.mark_read()  # confirms it too
                    else:
                        await opened.confirm(message)
                    seen += 1
                    if count is not None and seen >= count:
                        return

            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a racing cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await consume()
        return seen

    ctx.run(go)


@cell.command()
@click.pass_obj
def peers(ctx: Context) -> None:
    """The cells this cell shares a channel with, and their verification state."""

    async def go(passphrase: str | None) -> list[Peer]:
        result = await cli_ops.run_op(ctx.home, passphrase, "peers", {})
        _stale_note(result)
        return [Peer(**p) for p in result["peers"]]

    listed = ctx.run(go)
    if ctx.json:
        click.echo(_dump([asdict(p) for p in listed]))
        return
    if not listed:
        click.echo("no peers: ask an admin to pair this cell")
        return
    click.echo(f"{'NAME':<24} {'STATUS':<10} {'VERIFIED':<9} CELL ID")
    for p in listed:
        verified = "KEY CHANGED" if p.key_changed else ("yes" if p.verified else "no")
        click.echo(f"{p.name:<24} {p.status:<10} {verified:<9} {p.cell_id}")


def _stale_note(result: dict[str, Any]) -> None:
    if result.get("stale"):
        click.echo(STALE_NOTE, err=True)


@cell.command("safety-number")
@click.argument("peer")
@click.pass_obj
def safety_number(ctx: Context, peer: str) -> None:
    """The 60-digit safety number to compare with PEER's operators out of band."""

    async def go(passphrase: str | None) -> str:
        result = await cli_ops.run_op(ctx.home, passphrase, "safety_number", {"peer": peer})
        _stale_note(result)
        return str(result["safety_number"])

    number = ctx.run(go)
    if ctx.json:
        click.echo(_dump({"peer": peer, "safety_number": number.replace(" ", "")}))
    else:
        click.echo(number)


@cell.command()
@click.argument("peer")
@click.option("--accept-new-key", is_flag=True, help="accept a changed identity key")
@click.pass_obj
def verify(ctx: Context, peer: str, accept_new_key: bool) -> None:
    """Mark PEER as verified after comparing safety numbers (or accept its new key)."""

    async def go(passphrase: str | None) -> Peer:
        params = {"peer": peer, "accept_new_key": accept_new_key}
        result = await cli_ops.run_op(ctx.home, passphrase, "verify", params)
        _stale_note(result)
        return Peer(**result["peer"])

    result = ctx.run(go)
    if ctx.json:
        click.echo(_dump(asdict(result)))
    else:
        click.echo(f"{result.name} verified")


@cell.command()
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.pass_obj
def outbox(ctx: Context, limit: int) -> None:
    """Recent sends with their status (queued, accepted, missing, delivered, read, expired,
    failed)."""

    async def go(passphrase: str | None) -> list[OutboxEntry]:
        async with Cell.open(ctx.home, passphrase, connect=False) as opened:
            entries = opened.outbox(limit=limit)
        local_note(ctx.home)
        return entries

    entries = ctx.run(go)
    if ctx.json:
        click.echo(_dump([asdict(e) for e in entries]))
        return
    for e in entries:
        error = f" ({e.error})" if e.error else ""
        stamp = e.created_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{stamp} {e.message_id} {e.peer:<20} {e.precedence:<9} {e.status}{error}")


from . import cell_history  # noqa: E402, F401 - registers ``history`` and ``inbox`` on ``cell``
