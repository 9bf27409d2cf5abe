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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from .cell import Cell
from .errors import ClientError, PassphraseRequired
from .models import Message, OutboxEntry, Peer
from .notices import Notice
from .render import indent_body, safe_label, safe_text
from .resets import describe as describe_notice

__all__ = ["cell"]

T = TypeVar("T")
PRECEDENCES = ("flash", "immediate", "priority", "routine")


class Context:
    def __init__(self, home: Path | None, passphrase: str | None, as_json: bool) -> None:
        self._home = home
        self.passphrase = passphrase
        self.json = as_json

    @property
    def home(self) -> Path:
        """``--home`` (or ``LIAISON_HOME``), checked only when a command needs it, so that
        ``liaison cell SUB --help`` works without one; missing: usage error, exit 2."""
        if self._home is None:
            group: click.Context | None = click.get_current_context()
            while group is not None and group.command is not cell:
                group = group.parent
            param = next(p for p in cell.params if p.name == "home")
            raise click.MissingParameter(ctx=group, param=param)
        return self._home

    def run(self, make: Callable[[str | None], Coroutine[Any, Any, T]]) -> T:
        """Run ``make(passphrase)``; prompt once if the home is sealed and no passphrase was
        given; turn every SDK error into one line and its exit status."""
        self.home  # noqa: B018 - a missing --home is a usage error before anything runs
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
        except ValueError as exc:  # the SDK's word for a bad argument (e.g. a long marking)
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
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


def _stamp(when: datetime) -> str:
    """A full UTC timestamp, as every human line of ``listen`` starts."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _message_line(message: Message) -> str:
    """One message for the operator's screen. Every peer- or relay-controlled part is made
    terminal-safe (``render``); body lines after the first are indented, so no line of a body
    can look like one of these headers (they start with a date)."""
    marking = f" [{safe_label(message.marking)}]" if message.marking else ""
    head = (f"{_stamp(message.received_at)} {message.id[:8]} {message.precedence.upper():<9} "
            f"{safe_text(message.sender)}{marking}:")  # fmt: skip
    if message.error is not None:
        body = message.body if isinstance(message.body, bytes) else None
        notice = describe_notice(message.error, message.sender, body)
        opened = f"(could not be opened: {safe_text(message.error)})"
        return f"{head} {safe_text(notice) if notice else opened}"
    if isinstance(message.body, bytes):
        return f"{head} ({message.content_type}, {len(message.body)} bytes)"
    return f"{head} {indent_body(message.body or '')}"


_REASONS = {"revoked": "recipient revoked", "not_paired": "not paired with the recipient"}


def _notice_line(notice: Notice) -> str:
    peer = safe_text(notice.peer)
    short = (notice.message_id or "")[:8]
    level = "NOTICE " if notice.kind in ("gap_filled", "peer_revoked") else "WARNING"
    if notice.kind == "gap":
        text = (f"messages {notice.first_seq}-{notice.last_seq} from {peer} never arrived "
                f"although later ones did (dropped or withheld); {peer} is told")  # fmt: skip
    elif notice.kind == "gap_filled":
        text = f"messages {notice.first_seq}-{notice.last_seq} from {peer} arrived late"
    elif notice.kind == "failed":
        reason = notice.reason or "refused"
        text = f"your message {short} to {peer} failed: {safe_text(_REASONS.get(reason, reason))}"
    elif notice.kind == "expired":
        text = f"your message {short} to {peer} expired before it was delivered"
    elif notice.kind == "send_missing":
        text = f"your message {short} to {peer} is reported missing by {peer}"
    elif notice.kind == "key_changed":
        text = (f"the identity key of {peer} changed: sending is held; compare: "
                f"liaison cell safety-number {peer}")  # fmt: skip
    else:
        text = f"{peer} was revoked by the relay's administrators"
    return f"{_stamp(notice.at)} {level}  {text}"


def _notice_json(notice: Notice) -> dict[str, Any]:
    data = {f.name: getattr(notice, f.name) for f in fields(notice)}
    data["notice"] = data.pop("kind")
    return data


@click.group()
@click.option(
    "--home",
    envvar="LIAISON_HOME",
    default=None,
    type=click.Path(path_type=Path),
    help="the cell's state directory (required) [env LIAISON_HOME]",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def cell(ctx: click.Context, home: Path | None, as_json: bool) -> None:
    """Operate a liaison cell: enroll, send, listen, verify peers.

    \b
    Exit status: 0 ok, 2 usage, 10 unknown peer, 11 not paired, 12 peer key changed,
    13 relay unreachable, 14 bad enrollment code, 15 wrong or missing passphrase,
    16 corrupted state, 17 this cell revoked, 18 suspended, 19 not enrolled,
    20 already enrolled, 21 replaced by another process, 22 peer revoked,
    23 peer has no prekeys, 24 message too large, 25 unknown message, 26 protocol error,
    27 state in use by another process, 35 backup cannot be written,
    36 not a cell backup, 37 the home's state forbids it (restore over an enrolled
    home, seal a sealed one), 38 relocate: the relay at the new URL has another key,
    130 interrupted (Ctrl-C), 1 other.
    """
    import os

    ctx.obj = Context(home, os.environ.get("LIAISON_PASSPHRASE"), as_json)


@cell.command()
@click.option(
    "--server", envvar="LIAISON_SERVER", show_envvar=True, required=True, help="the relay's URL"
)
@click.option("--code", required=True, help="the one-time enrollment code (ln1-...)")
@click.option(
    "--name",
    default=None,
    help="the name the admin gave this cell: a wrong name is refused before the code is used",
)
@click.option(
    "--seal",
    is_flag=True,
    help="prompt for a passphrase to seal private keys (or take LIAISON_PASSPHRASE)",
)
@click.pass_obj
def enroll(ctx: Context, server: str, code: str, name: str | None, seal: bool) -> None:
    """Enroll this home as a cell with a one-time code from the admin.

    The relay's URL comes from --server or the LIAISON_SERVER environment variable. A refused
    code leaves nothing behind in the home."""
    ctx.home  # noqa: B018 - a missing --home is a usage error before the prompt
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
        name, server = safe_text(info["name"]), safe_text(info["server"])
        click.echo(f"enrolled {name} ({info['cell_id']}) at {server}")


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

    async def go(passphrase: str | None) -> tuple[str, str]:
        async with Cell.open(ctx.home, passphrase) as opened:
            message_id = await opened.send(
                peer, body, precedence=precedence, ttl=ttl, marking=marking
            )
            status = await opened.wait_status(message_id, wait, timeout)
            return message_id, status

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
@click.option(
    "--notices/--no-notices",
    default=None,
    help="also print notices: missing messages (gaps), failed or expired sends, key changes "
    "[default: on, off with --json]",
)
@click.pass_obj
def listen(
    ctx: Context, count: int | None, timeout: float | None, no_read: bool, notices: bool | None
) -> None:
    """Print incoming messages and send read receipts. A message counts as handed over only
    once it has been printed (and flushed): after a crash or a kill it is printed again by the
    next ``listen``, never lost (at least once; the message id tells repeats apart).

    \b
    A message line: UTC time, short message id, precedence, sender, [marking], body; body
    lines after the first are indented. Text from peers and the relay is shown with control
    characters made visible (\\r, \\x1b, <U+202E>). Notice lines (WARNING/NOTICE instead of
    an id) tell of messages from a peer that never arrived although later ones did, sends
    that failed or expired, and changed keys. With --json, each message is one JSON object per
    line, exact; --json --notices adds notice objects (they have a "notice" key)."""
    show_notices = (not ctx.json) if notices is None else notices

    async def go(passphrase: str | None) -> int:
        seen = 0
        async with Cell.open(ctx.home, passphrase) as opened:

            async def announce() -> None:
                async for notice in opened.notices():
                    if ctx.json:
                        click.echo(_dump(_notice_json(notice)))
                    else:
                        click.echo(_notice_line(notice))

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

            watcher = asyncio.create_task(announce()) if show_notices else None
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a racing cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await consume()
            finally:
                if watcher is not None:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
        return seen

    ctx.run(go)


@cell.command()
@click.pass_obj
def peers(ctx: Context) -> None:
    """The cells this cell shares a channel with, and their verification state."""

    async def go(passphrase: str | None) -> list[Peer]:
        async with Cell.open(ctx.home, passphrase) as opened:
            return await _refreshed(opened, opened.refresh_peers)

    listed = ctx.run(go)
    if ctx.json:
        click.echo(_dump([asdict(p) for p in listed]))
        return
    if not listed:
        click.echo("no peers: ask an admin to pair this cell")
        return
    click.echo(f"{'NAME':<24} {'STATUS':<10} {'VERIFIED':<11} {'MISSING':>7}  CELL ID")
    for p in listed:
        verified = "KEY CHANGED" if p.key_changed else ("yes" if p.verified else "no")
        name = safe_text(p.name)
        click.echo(f"{name:<24} {p.status:<10} {verified:<11} {p.missing:>7}  {p.cell_id}")
    if any(p.missing for p in listed):
        click.echo(
            "MISSING: messages that never arrived although later ones did (dropped or "
            "withheld by the relay); the peer has been told",
            err=True,
        )


async def _refreshed(opened: Cell, refresh: Callable[[], Awaitable[list[Peer]]]) -> list[Peer]:
    """Fresh from the relay when it answers within a few seconds, else the cached list."""
    try:
        await opened.wait_connected(5.0)
        async with asyncio.timeout(5.0):
            return await refresh()
    except (TimeoutError, ClientError):
        return opened.peers()


@cell.command("safety-number")
@click.argument("peer")
@click.pass_obj
def safety_number(ctx: Context, peer: str) -> None:
    """The 60-digit safety number to compare with PEER's operators out of band."""

    async def go(passphrase: str | None) -> str:
        async with Cell.open(ctx.home, passphrase) as opened:
            await _refreshed(opened, opened.refresh_peers)
            return opened.safety_number(peer)

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
        async with Cell.open(ctx.home, passphrase) as opened:
            await _refreshed(opened, opened.refresh_peers)
            return await opened.verify(peer, accept_new_key=accept_new_key)

    result = ctx.run(go)
    if ctx.json:
        click.echo(_dump(asdict(result)))
    else:
        click.echo(f"{safe_text(result.name)} verified")


@cell.command()
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.pass_obj
def outbox(ctx: Context, limit: int) -> None:
    """Recent sends with their status (queued, accepted, missing, delivered, read, expired,
    failed). "failed (recipient revoked)": the recipient was revoked and the relay refused
    the message or dropped it from its queue undelivered."""

    async def go(passphrase: str | None) -> list[OutboxEntry]:
        async with Cell.open(ctx.home, passphrase, connect=False) as opened:
            return opened.outbox(limit=limit)

    entries = ctx.run(go)
    if ctx.json:
        click.echo(_dump([asdict(e) for e in entries]))
        return
    for e in entries:
        stamp = e.created_at.strftime("%Y-%m-%d %H:%M:%S")
        reason = "recipient revoked" if e.error == "revoked" else e.error
        error = f" ({safe_text(reason)})" if reason else ""
        peer = safe_text(e.peer)
        click.echo(f"{stamp} {e.message_id} {peer:<20} {e.precedence:<9} {e.status}{error}")


from .home_cli import register  # noqa: E402 - backup, restore, seal, passphrase, reset-session

register(cell)
