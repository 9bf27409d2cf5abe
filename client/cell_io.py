"""What the ``liaison cell`` commands read and how they end: the body of ``send`` (argv, a
file, stdin), its ``--wait`` outcome, safety numbers around a key change, received files,
and the CLI's own wording of SDK errors (flags, not SDK parameters).

Rules (the commands' ``--help`` and README say the same):

* ``send`` without ``--wait`` waits up to ``--timeout`` for ``accepted`` and is content with
  less: the message is stored, ``queued`` exits 0 (it is sent when this cell next connects).
  An explicit ``--wait LEVEL`` must be reached within ``--timeout``, else exit 31
  (``status_timeout``; the ``ID STATUS`` line is still printed). ``--wait queued``: stored is
  enough. A final failure always exits non-zero with its reason: 32 (``failed``, the relay's
  code and explanation) or 33 (``expired``).
* ``send PEER TEXT``: TEXT from argv. ``send PEER`` without TEXT and without ``--file``
  reads the text from stdin when stdin is not a terminal (UTF-8; one trailing newline is
  dropped). ``--file PATH`` sends PATH's bytes under its name; ``--file -`` sends stdin's
  bytes (no name unless ``--file-name``).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

import click

from . import files
from .cell import Cell
from .errors import (
    ClientError,
    KeyChanged,
    MessageExpired,
    MessageTooLarge,
    SafetyNumberMismatch,
    SendFailed,
    StatusTimeout,
)
from .models import Message
from .render import safe_text

__all__ = [
    "Numbers",
    "cli_text",
    "digits",
    "fail",
    "file_note",
    "numbers",
    "outcome",
    "read_body",
    "refused",
    "save_received",
    "show_numbers",
]

SAFETY_DIGITS = 60

_HINTS = {
    "bad_expiry": "give a smaller --ttl (or check this machine's clock)",
    "queue_full": "the recipient's queue is full: try again later",
    "envelope_too_large": "the relay accepts smaller messages only",
    "not_paired": "this cell is no longer paired with the recipient",
    "revoked": "the recipient cell has been revoked",
}


def _quoted(peer: str) -> str:
    return safe_text(shlex.quote(peer))


def cli_text(exc: ClientError) -> str:
    """The one-line text the CLI prints for ``exc`` (``error: `` is added by the caller):
    the SDK's text, except where the CLI has its own words (flags instead of parameters)
    and relay-controlled parts are escaped."""
    if exc.relayed:  # worded (and escaped) by the process that ran the work
        return str(exc)
    if isinstance(exc, KeyChanged):
        return (
            f"the identity key of {exc.peer!r} has changed: compare the new safety number "
            f"(liaison cell safety-number {_quoted(exc.peer)}) with its operators, then accept "
            f"it: liaison cell verify {_quoted(exc.peer)} --accept-new-key NEW-NUMBER"
        )
    if isinstance(exc, SendFailed):
        detail = f" ({safe_text(exc.detail)})" if exc.detail else ""
        hint = _HINTS.get(exc.reason)
        return f"the relay refused message {exc.message_id}: {safe_text(exc.reason)}{detail}" + (
            f"; {hint}" if hint else ""
        )
    if isinstance(exc, MessageExpired):
        return f"{exc}: its --ttl passed before it got there"
    if isinstance(exc, StatusTimeout):
        return f"{exc}; it stays in the outbox (liaison cell outbox), or wait longer with --timeout"
    return safe_text(str(exc))


def fail(exc: ClientError) -> NoReturn:
    """Print ``exc`` as the CLI's one ``error:`` line and exit with its status."""
    click.echo(f"error: {cli_text(exc)}", err=True)
    sys.exit(exc.exit_code)


# -- send: the body ------------------------------------------------------------------------------


def _read_at_most(stream: BinaryIO, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of ``stream`` (one more than allowed: too large)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _too_large(what: str, size: int | None, limit: int) -> MessageTooLarge:
    amount = f"more than {limit}" if size is None else str(size)
    return MessageTooLarge(
        f"{what} is {amount} bytes; at most {limit} bytes fit one message (larger files are "
        "not supported yet)",
        size=size, limit=limit,
    )  # fmt: skip


def read_body(
    text: str | None, path: Path | None, file_name: str | None, marking: str
) -> tuple[str | bytes, str | None]:
    """The body to send and its file name (see the module docstring); ``click.UsageError``
    for a wrong combination, ``MessageTooLarge`` for a body that cannot fit one message."""
    if text is not None and path is not None:
        raise click.UsageError("give either TEXT or --file, not both")
    if file_name is not None and path is None:
        raise click.UsageError("--file-name goes with --file")
    if path is not None:
        stdin = str(path) == "-"
        name = file_name if file_name is not None or stdin else path.name
        if name is not None:
            try:
                files.encode_file(name, b"")
            except ValueError as exc:
                raise click.UsageError(f"cannot send under that file name: {exc}") from None
        limit = files.max_payload(marking) if name is None else files.max_file_bytes(name, marking)
        if stdin:
            data = _read_at_most(sys.stdin.buffer, limit)
            if len(data) > limit:
                raise _too_large("stdin", None, limit)
            return data, name
        try:
            size = path.stat().st_size
            if size > limit:
                raise _too_large(f"the file {safe_text(str(path))}", size, limit)
            return path.read_bytes(), name
        except OSError as exc:
            raise click.UsageError(f"cannot read {path}: {exc.strerror}") from None
    if text is not None:
        return text, None
    if sys.stdin.isatty():
        raise click.UsageError("give TEXT, --file PATH, or pipe the text on stdin")
    limit = files.max_payload(marking)
    raw = _read_at_most(sys.stdin.buffer, limit)
    if len(raw) > limit:
        raise MessageTooLarge(
            f"the text on stdin is more than {limit} bytes; at most {limit} fit one message",
            size=None, limit=limit,
        )  # fmt: skip
    try:
        piped = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise click.UsageError("stdin is not UTF-8 text: send bytes with --file -") from None
    piped = piped.removesuffix("\n").removesuffix("\r")
    if not piped:
        raise click.UsageError("nothing to send: stdin was empty")
    return piped, None


# -- send: the outcome ---------------------------------------------------------------------------


async def outcome(
    opened: Cell, message_id: str, wait: str | None, timeout: float
) -> tuple[str, ClientError | None]:
    """The status to print and the error to exit with (``None``: exit 0); see the module
    docstring for the rule."""
    try:  # "queued" is reached at once: only a final failure raises
        return await opened.wait_status(message_id, wait or "accepted", timeout), None
    except StatusTimeout as exc:
        return exc.status, None if wait is None else exc
    except (SendFailed, MessageExpired) as exc:
        return exc.status, exc


# -- safety numbers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Numbers:
    peer: str
    current: str
    """The safety number of the pinned (verified or first-seen) key."""
    new: str | None
    """The number of the changed key waiting to be accepted, if any."""


def numbers(opened: Cell, peer: str) -> Numbers:
    label = opened.peer(peer).name
    current = opened.safety_number(peer)
    new = opened.safety_number(peer, new_key=True) if opened.peer(peer).key_changed else None
    return Numbers(label, current, new)


def show_numbers(found: Numbers, *, err: bool = False) -> None:
    """Old and new safety numbers, labelled, and what to do (human output)."""
    peer = safe_text(found.peer)
    click.echo(f"KEY CHANGED: the identity key of {peer} is not the one pinned before", err=err)
    click.echo(f"old key (pinned):      {found.current}", err=err)
    click.echo(f"new key (not trusted): {found.new}", err=err)
    click.echo(
        f"compare the NEW number with {peer}'s operators out of band; if it matches: "
        f"liaison cell verify {_quoted(found.peer)} --accept-new-key {found.new}",
        err=err,
    )


def digits(parts: tuple[str, ...]) -> str | None:
    """The safety number given as one or more arguments (spaces optional); ``None`` if none;
    ``click.UsageError`` unless it is 60 digits."""
    joined = "".join("".join(parts).split())
    if not joined:
        return None
    if len(joined) != SAFETY_DIGITS or not joined.isascii() or not joined.isdigit():
        raise click.UsageError(
            f"NUMBER must be the {SAFETY_DIGITS} digits of a safety number (spaces optional)"
        )
    return joined


def refused(peer: str, why: str) -> SafetyNumberMismatch:
    """The new key was not accepted (exit 34): ``why``."""
    return SafetyNumberMismatch(peer, f"the new key of {peer!r} was not accepted: {why}")


# -- received files ------------------------------------------------------------------------------


def save_received(directory: Path, message: Message) -> Path | None:
    """Save a received file (a ``bytes`` body) into ``directory`` under its sanitised name
    (``file-<id>`` without one); ``None`` for other messages."""
    if not isinstance(message.body, bytes) or message.error is not None:
        return None
    name = files.safe_file_name(message.file_name, f"file-{message.id[:12]}")
    try:
        return files.save_file(directory, name, message.body)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ClientError(
            f"cannot save a file into {safe_text(str(directory))}: {safe_text(reason)}"
        ) from None


def file_note(message: Message, saved: Path | None) -> str:
    """``(file "NAME", N bytes[, saved to PATH])`` for a listen line; the name escaped."""
    assert isinstance(message.body, bytes)
    name = "" if message.file_name is None else f' "{safe_text(message.file_name)}"'
    where = "" if saved is None else f", saved to {safe_text(str(saved))}"
    return f"({message.content_type}{name}, {len(message.body)} bytes{where})"
