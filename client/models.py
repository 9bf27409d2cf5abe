"""The SDK's public value types: :class:`Message`, :class:`Peer`, :class:`OutboxEntry`,
:class:`Gap`.

Ids are lowercase hex strings (message ids 32 characters, cell ids 32, identity keys 64);
times are timezone-aware UTC ``datetime`` objects; precedences and content types are the
lowercase names below.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from liaison.protocol.envelope import ContentType, Precedence

__all__ = [
    "CONTENT_TYPES",
    "PRECEDENCES",
    "STATUSES",
    "Gap",
    "Message",
    "OutboxEntry",
    "Peer",
    "Status",
    "content_type_name",
    "parse_precedence",
    "precedence_name",
]

Status = Literal["queued", "accepted", "missing", "delivered", "read", "expired", "failed"]
STATUSES: tuple[Status, ...] = (
    "queued", "accepted", "missing", "delivered", "read", "expired", "failed",
)  # fmt: skip
PRECEDENCES = ("flash", "immediate", "priority", "routine")
CONTENT_TYPES = {
    ContentType.TEXT: "text",
    ContentType.JSON: "json",
    ContentType.RECEIPT: "receipt",
    ContentType.FILE_CHUNK: "file",
    ContentType.CONTROL: "control",
    ContentType.FILE: "file",  # a file with its name (SPEC.md §9.4); FILE_CHUNK: no name
}


def precedence_name(value: int) -> str:
    return PRECEDENCES[value] if 0 <= value < len(PRECEDENCES) else str(value)


def parse_precedence(value: str | int | Precedence) -> Precedence:
    """``"flash"``/``"immediate"``/``"priority"``/``"routine"`` (any case) or 0..3."""
    if isinstance(value, str):
        try:
            return Precedence(PRECEDENCES.index(value.strip().lower()))
        except ValueError:
            raise ValueError(
                f"precedence must be one of {', '.join(PRECEDENCES)}, not {value!r}"
            ) from None
    return Precedence(value)


def content_type_name(value: int | None) -> str:
    if value is None:
        return "unknown"
    try:
        return CONTENT_TYPES[ContentType(value)]
    except ValueError:
        return str(value)


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class Peer:
    """A paired cell as this cell knows it."""

    name: str
    """The relay's name for the cell, or its hex cell id while no PEERS frame named it."""
    cell_id: str
    status: str
    """``pending``, ``active``, ``suspended``, ``revoked``, or ``unpaired`` when the relay no
    longer lists it."""
    identity: str | None
    """The pinned identity key (hex), ``None`` until the peer has enrolled."""
    verified: bool
    """The operator compared safety numbers (``Cell.verify``)."""
    key_changed: bool
    """A different identity key was seen: sending is blocked until it is accepted."""
    missing: int = 0
    """How many of this peer's envelopes to this cell are missing: later channel numbers
    arrived and these did not within the grace period (:meth:`Cell.gaps`). Dropped
    envelopes, or ones delayed past the grace period, count here; the peer is told."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Channel numbers of a peer that have not arrived although a later one did (SPEC.md
    §9.3): dropped, or still delayed. ``missing`` once the gap has stayed open for the grace
    period (``gap_grace``, 120 s by default); the peer is then told, and its status of those
    messages becomes ``missing``. A number that arrives late leaves the gap."""

    peer: str
    first_seq: int
    last_seq: int
    noticed_at: datetime
    missing: bool

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A message this cell sent, with its delivery status. ``missing``: the recipient
    reported that it never arrived (later messages did; the relay dropped or withheld it);
    a delivery receipt that still comes moves it on to ``delivered``."""

    message_id: str
    peer: str
    status: Status
    precedence: str
    content_type: str
    created_at: datetime
    expires_at: datetime
    relay_seq: int | None
    error: str | None
    """For ``failed``: the relay's error code (``not_paired``, ``revoked``, ``queue_full``,
    ``envelope_too_large``, ``bad_expiry``, ...)."""


@dataclass(slots=True)
class Message:
    """A received message.

    ``body`` is a ``str`` for ``text`` and ``json`` messages and ``bytes`` for ``file``
    messages. ``file_name`` is the name a ``file`` came with (``None`` if it had none): the
    sender's choice, untrusted — never use it as a path as it is (``files.safe_file_name``,
    ``files.save_file``). A message that could not be opened has ``error`` set (``decrypt_failed``,
    ``key_changed``, ``malformed_body``, ``malformed_envelope``, ``wrong_recipient``) and no
    body; it was acknowledged to the relay so it never blocks the queue (M-CLI-4). The same
    id can be yielded again later with its body: after a key change is accepted, or when the
    intact envelope arrives after an altered copy of it failed (M-CLI-2).
    ``stale_session`` is ``decrypt_failed`` for the third failure in a row from a peer this
    cell has a session with: this home (or the peer's) looks restored from an older copy, and
    ``Cell.reset_session(peer)`` recovers. Two ``error`` values are notices, not failures
    (content type ``control``): ``session_reset`` (the peer reset its session with this cell,
    SPEC.md §7.7) and ``session_reset_sent`` (this cell did).
    """

    id: str
    sender: str
    sender_id: str
    body: str | bytes | None
    content_type: str
    precedence: str
    marking: str
    sent_at: datetime | None
    received_at: datetime
    seq: int | None = None
    read: bool = False
    error: str | None = None
    _mark_read: Callable[[Message], Awaitable[None]] | None = field(
        default=None, repr=False, compare=False
    )
    file_name: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def text(self) -> str:
        """The body as text (bytes are decoded as UTF-8 with replacement)."""
        if isinstance(self.body, bytes):
            return self.body.decode(errors="replace")
        return self.body or ""

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.text)

    async def mark_read(self) -> None:
        """Mark the message read and send the sender an end-to-end-encrypted read receipt."""
        if self._mark_read is None:
            raise RuntimeError("this message is not attached to an open cell")
        await self._mark_read(self)
