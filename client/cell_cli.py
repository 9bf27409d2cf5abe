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
import shlex
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from . import cell_io, cli_ops, listening
from .cell import Cell
from .errors import ClientError, PassphraseRequired
from .listening import STALE_NOTE, local_note
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
            cell_io.fail(exc)  # one line: the CLI's wording (flags), escaped
        except ValueError as exc:  # the SDK's word for a bad argument (e.g. a long marking)
            click.echo(f"error: {safe_text(str(exc))}", err=True)
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


def _message_line(message: Message, saved: Path | None = None) -> str:
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
        if message.error == "key_changed":  # held, not lost: opened once the key is accepted
            who = safe_text(shlex.quote(message.sender))
            opened = (f"(held: the identity key of {safe_text(message.sender)} changed; "
                      f"compare: liaison cell safety-number {who}, then: liaison cell verify "
                      f"{who} --accept-new-key NEW-NUMBER; it is shown again then)")  # fmt: skip
        return f"{head} {safe_text(notice) if notice else opened}"
    if isinstance(message.body, bytes):
        return f"{head} {cell_io.file_note(message, saved)}"
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
    27 state in use by another process, 28 another process is receiving (listen),
    29 another process holds the link (SDK), 30 the process holding the link did not answer,
    31 status asked for (send --wait) not reached in time, 32 the relay refused the message
    (send failed), 33 the message expired, 34 safety number mismatch (nothing verified or
    accepted), 35 backup cannot be written, 36 not a cell backup, 37 the home's state forbids
    it (restore over an enrolled home, seal a sealed one), 38 relocate: the relay at the new
    URL has another key, 130 interrupted (Ctrl-C), 1 other.

    \b
    While a process holds this home's link (a running listen), the other commands hand their
    work to it over <home>/cell.sock and print the same output. With the relay down, send
    stores the message and prints queued; peers, safety-number, verify, outbox, history and
    inbox work from local state (a note on stderr says it may be stale).
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
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
    help="send this file (its bytes and name) instead of TEXT; '-': stdin's bytes",
)
@click.option("--file-name", default=None, help="the name to send the file under")
@click.option("--precedence", type=click.Choice(PRECEDENCES), default="routine", show_default=True)
@click.option("--ttl", type=click.IntRange(1), default=3600, show_default=True, help="seconds")
@click.option("--marking", default="", help='classification marking, e.g. "NATO RESTRICTED"')
@click.option(
    "--wait",
    type=click.Choice(["queued", "accepted", "delivered", "read"]),
    default=None,
    help="this status must be reached within --timeout, else exit 31 [default: wait for "
    "accepted, but queued is enough]",
)
@click.option("--timeout", type=click.FloatRange(0), default=30.0, show_default=True)
@click.pass_obj
def send(
    ctx: Context,
    peer: str,
    text: str | None,
    path: Path | None,
    file_name: str | None,
    precedence: str,
    ttl: int,
    marking: str,
    wait: str | None,
    timeout: float,
) -> None:
    """Send TEXT (or --file) to PEER. The message is stored first and sent until the relay
    has it, across restarts too.

    \b
    The body: TEXT; or, without TEXT, the text piped on stdin (UTF-8, one trailing newline
    dropped); or --file PATH (the file's bytes and name, --file-name to rename); or --file -
    (stdin's bytes). One message holds about 61 KB.
    Without --wait: up to --timeout for "accepted", but "queued" exits 0 too (the message is
    sent when this cell next connects). --wait LEVEL must be reached within --timeout, else
    exit 31 ("ID STATUS" is still printed). A refused (32) or expired (33) message always
    exits non-zero with the reason."""
    try:
        body, name = cell_io.read_body(text, path, file_name, marking)
    except ClientError as exc:
        cell_io.fail(exc)
    params: dict[str, Any] = {"peer": peer, "precedence": precedence, "ttl": ttl,
                              "marking": marking, "wait": wait, "timeout": timeout,
                              "file_name": name}  # fmt: skip
    params |= {"text": body} if isinstance(body, str) else {"hex": body.hex()}

    async def go(passphrase: str | None) -> tuple[str, str, dict[str, Any] | None]:
        # Stored first, then sent: here, or by the process holding this home's link.
        result = await cli_ops.run_op(ctx.home, passphrase, "send", params)
        return result["message_id"], result["status"], result.get("problem")

    message_id, status, problem = ctx.run(go)
    if ctx.json:
        click.echo(_dump({"message_id": message_id, "status": status}))
    else:
        click.echo(f"{message_id} {status}")
    if problem is not None:  # the CLI's line for it, made where the work ran
        click.echo(f"error: {problem['message']}", err=True)
        sys.exit(int(problem["exit_code"]))
    if not ctx.json and status == "queued":
        click.echo("the relay was not reached; it is sent when this cell next connects", err=True)


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
@click.option(
    "--save-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="save received files into DIR (sanitised names, never overwriting)",
)
@click.pass_obj
def listen(
    ctx: Context,
    count: int | None,
    timeout: float | None,
    no_read: bool,
    notices: bool | None,
    save_dir: Path | None,
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
    line, exact; --json --notices adds notice objects (they have a "notice" key).

    With --save-dir, a received file is written into DIR first (created 0700 if missing) as a
    new 0600 file under its sender's name made safe (one path component, no control or bidi
    characters, no leading dot, at most 120 bytes; "file-ID" without a name), "NAME-1.EXT",
    ... if taken; the line says "saved to DIR/NAME". A file printed again after a crash is
    saved again under a new name.

    One listen per home (a second exits with 28); the home's other commands run beside it.
    With the relay down it waits and retries ("relay unreachable, retrying" on stderr)."""
    show_notices = (not ctx.json) if notices is None else notices

    async def go(passphrase: str | None) -> int:
        seen = 0
        # The one receiver of this home (else 28); waits out relay outages (listening.py).
        async with listening.receiver(ctx.home, passphrase) as opened:

            async def announce() -> None:
                async for notice in opened.notices():
                    if ctx.json:
                        click.echo(_dump(_notice_json(notice)))
                    else:
                        click.echo(_notice_line(notice))

            async def consume() -> None:
                nonlocal seen
                async for message in opened.messages(confirm=True):
                    saved = None if save_dir is None else cell_io.save_received(save_dir, message)
                    if ctx.json:
                        data = _message_json(message)
                        if saved is not None:
                            data["saved_to"] = str(saved)
                        click.echo(_dump(data))
                    else:
                        click.echo(_message_line(message, saved))  # click.echo flushes
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


def _stale_note(result: dict[str, Any]) -> None:
    if result.get("stale"):
        click.echo(STALE_NOTE, err=True)


@cell.command("safety-number")
@click.argument("peer")
@click.pass_obj
def safety_number(ctx: Context, peer: str) -> None:
    """The 60-digit safety number to compare with PEER's operators out of band. After a
    key change: the old (pinned) and the new number, labelled (``--json``: ``safety_number``
    is the pinned key's, ``new_safety_number`` the new key's or null)."""

    async def go(passphrase: str | None) -> cell_io.Numbers:
        result = await cli_ops.run_op(ctx.home, passphrase, "safety_number", {"peer": peer})
        _stale_note(result)
        return cell_io.Numbers(**result["numbers"])

    found = ctx.run(go)
    if ctx.json:
        new = None if found.new is None else found.new.replace(" ", "")
        click.echo(_dump({"peer": peer, "safety_number": found.current.replace(" ", ""),
                          "key_changed": new is not None, "new_safety_number": new}))  # fmt: skip
    elif found.new is not None:
        cell_io.show_numbers(found)
    else:
        click.echo(found.current)


@cell.command()
@click.argument("peer")
@click.argument("number", nargs=-1)
@click.option(
    "--accept-new-key", is_flag=True, help="accept PEER's changed key: its new NUMBER, or --yes"
)
@click.option("--yes", "-y", is_flag=True, help="accept the new number shown, without asking")
@click.pass_obj
def verify(
    ctx: Context, peer: str, number: tuple[str, ...], accept_new_key: bool, yes: bool
) -> None:
    """Mark PEER as verified after comparing safety numbers (or accept its new key).

    \b
    NUMBER, if given (spaces optional): the number you compared; nothing is recorded unless
    it is the safety number (exit 34). After a key change: --accept-new-key NUMBER accepts the
    new key if NUMBER is its number; --accept-new-key alone shows old and new numbers and
    asks (on a terminal), --yes accepts the number shown."""
    given = cell_io.digits(number)

    async def go(passphrase: str | None) -> Peer | cell_io.Numbers:
        params = {"peer": peer, "accept_new_key": accept_new_key, "safety_number": given,
                  "yes": yes}  # fmt: skip
        result = await cli_ops.run_op(ctx.home, passphrase, "verify", params)
        _stale_note(result)
        if "shown" in result:  # --yes: the number accepted, shown first
            cell_io.show_numbers(cell_io.Numbers(**result["shown"]), err=ctx.json)
        if "numbers" in result:  # asked below, outside the event loop
            cell_io.show_numbers(cell_io.Numbers(**result["numbers"]), err=ctx.json)
            return cell_io.Numbers(**result["numbers"])
        return Peer(**result["peer"])

    result = ctx.run(go)
    if isinstance(result, cell_io.Numbers):
        if not sys.stdin.isatty():
            cell_io.fail(cell_io.refused(result.peer, "give the NEW number, or --yes"))
        question = f"does {safe_text(result.peer)}'s operator read out the same NEW number?"
        if not click.confirm(question, default=False):
            cell_io.fail(cell_io.refused(result.peer, "you said it does not match"))
        shown = result.new

        async def accept(passphrase: str | None) -> Peer:
            params = {"peer": peer, "accept_new_key": True, "safety_number": shown, "yes": False}
            answer = await cli_ops.run_op(ctx.home, passphrase, "verify", params)
            return Peer(**answer["peer"])

        result = ctx.run(accept)
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
            entries = opened.outbox(limit=limit)
        local_note(ctx.home)
        return entries

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


from . import cell_history  # noqa: E402, F401 - registers ``history`` and ``inbox`` on ``cell``
from .home_cli import register  # noqa: E402 - backup, restore, seal, passphrase, reset-session

register(cell)
