"""Opening one delivered envelope and recording it, atomically (SPEC.md §7.5–§7.6, §11.8–§11.10).

Theory of operation
-------------------
:func:`receive` runs for every DELIVER, before the ACK is sent, and is synchronous (no await),
so nothing else touches the state while it runs:

1. Decode the envelope. One that does not parse is recorded as ``malformed_envelope`` under a
   message id derived from its bytes (so a redelivery is still a duplicate).
2. Deduplicate on ``(sender, message_id)`` *before* decrypting (M-CLI-2): the inbox is the set
   of processed ids. A duplicate is only acknowledged — unless the id is recorded as a failure
   to open (``decrypt_failed``, ``wrong_recipient``, ``malformed_envelope``): then this copy
   is tried, because a relay could otherwise suppress a genuine envelope by delivering an
   altered copy of it first. If it opens it replaces the failure; if not, it is a duplicate.
3. Reject an envelope addressed to another cell (M-ENV-4).
4. A PREKEY envelope whose setup block names an identity other than the one pinned for the
   sender is held, not opened (M-SES-7, M-SN-2), if it opens under that identity and the
   sender's cell id (a trial ``respond()``, nothing kept): the new identity becomes the peer's
   ``pending_identity`` and the envelope is kept so that it can be opened once the operator
   accepts the key (``Cell.verify(..., accept_new_key=True)``). One that does not open is a
   decryption failure, so a relay cannot raise a key-change alarm by re-addressing another
   cell's setup block or altering one.
5. Try the sessions with the sender in the order of M-SES-10: the one whose setup ephemeral
   matches the setup block (M-SES-8), then the current one, then older ones; for a PREKEY
   envelope none of them opens, build a responder session with ``respond()`` from the prekeys
   the setup block names (M-SES-6; an unknown or used one-time prekey is a failure).
6. Commit in **one transaction**: the inbox row, the updated (or new, now current) session,
   the deletion of the one-time prekey used, the pin of a first-seen identity, the channel
   number's gap bookkeeping (``channels.opened``) and, for a RECEIPT, the outbox status
   changes (M-SES-9, M-RAT-12, M-ENV-10, M-ENV-11). Only after it returns does the caller send
   the ACK.

A failure to open is recorded as an inbox row with ``decrypt_failed`` and no body and is
acknowledged like any message (M-CLI-4); no session changes, except that a body which
authenticated but does not parse keeps the ratchet advance (M-ENV-7).

Receipts (content type RECEIPT) carry ``kind (1 = delivered, 2 = read) ‖ message ids (16 each,
1..100)``, or a gap report ``3 ‖ ranges (first u64 ‖ last u64, 1..100)`` of channel numbers
missing (SPEC.md §9.3); they are never receipted themselves and never shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass

from liaison.protocol.envelope import Body, ContentType, Envelope, Routing, SessionSetup
from liaison.protocol.errors import DecryptionError, LiaisonError, MalformedData
from liaison.protocol.session import Session, respond

from . import channels, files, resets, tables
from .state import Keys, Store

__all__ = ["MAX_RECEIPT_IDS", "Outcome", "build_receipt", "parse_receipt", "receive"]

MAX_RECEIPT_IDS = 100
RECEIPT_DELIVERED = 1
RECEIPT_READ = 2
_FAILURE_KEEP_SECONDS = 30 * 24 * 3600


def build_receipt(kind: int, message_ids: list[bytes]) -> bytes:
    if kind not in (RECEIPT_DELIVERED, RECEIPT_READ) or not 1 <= len(message_ids) <= 100:
        raise ValueError("a receipt has kind 1 or 2 and 1..100 message ids")
    return bytes([kind]) + b"".join(message_ids)


def parse_receipt(payload: bytes) -> tuple[int, list[bytes]] | None:
    count, extra = divmod(len(payload) - 1, 16)
    if not payload or extra or not 1 <= count <= MAX_RECEIPT_IDS or payload[0] not in (1, 2):
        return None
    return payload[0], [payload[1 + 16 * i : 17 + 16 * i] for i in range(count)]


@dataclass(slots=True)
class Outcome:
    """What processing one envelope did (the caller ACKs in every case)."""

    duplicate: bool = False
    shown: bool = False
    """A row ``messages()`` will yield (a message, or a failure notice)."""
    receipt_due: bool = False
    status_changed: bool = False
    unknown_sender: bool = False
    key_changed: bool = False
    gap_changed: bool = False
    """A gap in the sender's channel numbers opened or closed (``channels.opened``)."""


@dataclass(frozen=True, slots=True)
class _Base:
    sender: bytes
    message_id: bytes
    precedence: int
    relay_seq: int
    received_at_ms: int
    expires_at: int

    def add(
        self, store: Store, *, body: Body | None = None, payload: bytes | None = None,
        hidden: bool = False, error: str | None = None, held_envelope: bytes | None = None,
    ) -> None:  # fmt: skip
        """Insert this envelope's inbox row."""
        tables.inbox_add(
            store, sender=self.sender, message_id=self.message_id, precedence=self.precedence,
            relay_seq=self.relay_seq, received_at_ms=self.received_at_ms,
            expires_at=self.expires_at,
            content_type=None if body is None else int(body.content_type),
            body=payload, marking="" if body is None else body.marking,
            seq=None if body is None else body.seq,
            sent_at_ms=None if body is None else body.sent_at_ms, hidden=hidden, error=error,
            held_envelope=held_envelope, delivery_receipt=payload is not None,
        )  # fmt: skip


def receive(
    store: Store,
    sender: bytes,
    relay_seq: int,
    received_at_ms: int,
    data: bytes,
    *,
    replace_row: int | None = None,
) -> Outcome:
    """Process one delivered envelope (see the module docstring). ``replace_row`` re-opens a
    held envelope: that inbox row is replaced in the same transaction."""
    keys, own = store.keys, store.cell_id
    assert keys is not None
    assert own is not None
    try:
        envelope = Envelope.decode(data)
    except MalformedData:
        return _unreadable(store, sender, relay_seq, received_at_ms, data, replace_row)
    routing = envelope.routing
    retry = False
    if replace_row is None and tables.inbox_seen(store, sender, routing.message_id):
        replace_row = _failed_row(store, sender, routing.message_id)
        if replace_row is None:
            return Outcome(duplicate=True)
        retry = True  # only an opened copy replaces the failure; another failure is a duplicate
    base = _Base(sender, routing.message_id, int(routing.precedence), relay_seq, received_at_ms,
                 routing.expires_at)  # fmt: skip
    peer = tables.peer_by_id(store, sender)
    unknown = peer is None or peer.name is None
    if routing.recipient != own:
        return _fail(store, base, "wrong_recipient", replace_row, unknown, retry)
    setup = envelope.setup
    if setup is not None and peer is not None and peer.identity is not None \
            and bytes(setup.identity) != peer.identity:  # fmt: skip
        if not _opens_as(store, keys, own, sender, envelope, setup):
            return _fail(store, base, "decrypt_failed", replace_row, unknown, retry)
        with store.transaction():
            if replace_row is not None:
                tables.inbox_delete(store, replace_row)
            tables.set_pending_identity(store, sender, bytes(setup.identity))
            base.add(store, error="key_changed", held_envelope=data)
        return Outcome(shown=True, unknown_sender=unknown, key_changed=True)

    rows = tables.sessions_for(store, sender)
    if setup is not None:
        ephemeral = bytes(setup.ephemeral)
        rows.sort(key=lambda row: row.setup_ephemeral != ephemeral)  # stable: M-SES-8 first
    for row in rows:
        session = row.load()
        try:
            body = session.open(envelope)
        except MalformedData:
            if session.to_bytes() != row.state:  # authenticated but unparseable: M-ENV-7
                return _malformed(store, base, session, row.id, None, replace_row, unknown)
            continue
        except LiaisonError:
            continue  # this session does not open it (state unchanged, M-RAT-7)
        from_setup = setup is not None and row.setup_ephemeral == bytes(setup.ephemeral)
        return _commit(store, base, session, row.id, None, body, replace_row, unknown,
                       from_setup=from_setup)  # fmt: skip

    if setup is None:
        return _fail(store, base, "decrypt_failed", replace_row, unknown, retry)
    try:
        session = _respond(store, keys, own, sender, setup)
    except LiaisonError:
        return _fail(store, base, "decrypt_failed", replace_row, unknown, retry)
    before = session.to_bytes()
    try:
        body = session.open(envelope)
    except MalformedData:
        if session.to_bytes() != before:
            opk = setup.one_time_prekey_id
            return _malformed(store, base, session, None, opk, replace_row, unknown)
        return _fail(store, base, "decrypt_failed", replace_row, unknown, retry)
    except LiaisonError:
        return _fail(store, base, "decrypt_failed", replace_row, unknown, retry)
    return _commit(store, base, session, None, setup.one_time_prekey_id, body, replace_row,
                   unknown)  # fmt: skip


_RETRYABLE = ("decrypt_failed", "wrong_recipient", "malformed_envelope", "stale_session")


def _failed_row(store: Store, sender: bytes, message_id: bytes) -> int | None:
    """The inbox row of ``(sender, message_id)`` if it records a failure to open that a later
    copy of the envelope may cure (not a held envelope, not a message)."""
    row = store.query_one(
        "SELECT id FROM inbox WHERE sender = ? AND message_id = ? AND held_envelope IS NULL "
        "AND error IN (?, ?, ?, ?)",
        (sender, message_id, *_RETRYABLE),
    )
    return None if row is None else int(row[0])


def _opens_as(store: Store, keys: Keys, own: bytes, sender: bytes, envelope: Envelope,
              setup: SessionSetup) -> bool:  # fmt: skip
    """Whether a PREKEY envelope authenticates as a session set up by ``setup.identity`` from
    cell ``sender`` (a trial: nothing is kept, the one-time prekey stays)."""
    try:
        session = _respond(store, keys, own, sender, setup)
    except LiaisonError:  # an unusable identity, unknown prekeys: nothing authenticates
        return False
    before = session.to_bytes()
    try:
        session.open(envelope)
    except MalformedData:  # authenticated (M-ENV-7 applies once the key is accepted) or not
        return session.to_bytes() != before
    except LiaisonError:
        return False
    return True


def _respond(store: Store, keys: Keys, own: bytes, sender: bytes, setup: SessionSetup) -> Session:
    """A responder session from the prekeys the setup block names (M-SES-6)."""
    if setup.signed_prekey_id != keys.spk_id or setup.kem_prekey_id != keys.kem_id:
        raise DecryptionError()
    one_time = None
    if setup.one_time_prekey_id is not None:
        one_time = store.one_time_prekey(setup.one_time_prekey_id)
        if one_time is None:  # unknown, or already used by another session
            raise DecryptionError()
    return respond(keys.identity, own, sender, setup, keys.spk, keys.kem, one_time)


def _commit(
    store: Store, base: _Base, session: Session, row_id: int | None, one_time_prekey: int | None,
    body: Body, replace_row: int | None, unknown: bool, *, from_setup: bool = True,
) -> Outcome:  # fmt: skip
    """``from_setup``: the session was built from this envelope's setup block (just now by
    ``respond()``, ``row_id`` None, or earlier from another envelope of it, M-SES-8)."""
    outcome = Outcome(unknown_sender=unknown)
    now = time.time()
    # A session reset (M-SES-12): only in a PREKEY envelope of the session its setup built.
    reset = from_setup and body.content_type == ContentType.CONTROL \
        and resets.parse_reset(body.payload) is not None \
        and not resets.is_reset_session(store, base.sender, row_id)  # fmt: skip
    with store.transaction():
        old = resets.superseded(store, base.sender, row_id)  # opens, is never current again
        kept = _keep_session(store, base, session, row_id, one_time_prekey, replace_row,
                             current=not old)  # fmt: skip
        if reset:
            resets.mark_reset_session(store, base.sender, kept)
            resets.drop_request(store, base.sender)  # the peer made a fresh session already
        if reset and row_id is None:
            outcome.gap_changed = resets.restart_channel(store, base.sender, body.seq)
        elif not old:  # superseded: numbers of the channel before the reset (a late reset: on)
            outcome.gap_changed = channels.opened(store, base.sender, body.seq, now)
        if reset:
            tables.inbox_add(
                store, sender=base.sender, message_id=base.message_id,
                precedence=base.precedence, relay_seq=base.relay_seq,
                received_at_ms=base.received_at_ms, expires_at=base.expires_at,
                content_type=int(body.content_type), body=body.payload, marking=body.marking,
                seq=body.seq, sent_at_ms=body.sent_at_ms, error="session_reset",
                delivery_receipt=True,
            )  # fmt: skip
            outcome.shown = outcome.receipt_due = True
        elif body.content_type == ContentType.RECEIPT:
            parsed = parse_receipt(body.payload)
            report = None if parsed is not None else channels.parse_gap_report(body.payload)
            if parsed is not None:
                kind, ids = parsed
                status = "delivered" if kind == RECEIPT_DELIVERED else "read"
                outcome.status_changed = tables.outbox_advance(store, base.sender, ids, status) > 0
            elif report is not None:
                changed, reissue = channels.reported_missing(store, base.sender, report, now)
                outcome.status_changed, outcome.receipt_due = changed > 0, reissue > 0
            well_formed = parsed is not None or report is not None
            base.add(store, body=body, hidden=True,
                     error=None if well_formed else "malformed_receipt")  # fmt: skip
        elif body.content_type == ContentType.CONTROL:
            base.add(store, body=body, hidden=True)
        elif body.content_type == ContentType.FILE and not _file_ok(body.payload):
            base.add(store, error="malformed_body")  # M-FILE-1: shown as a failure only
            outcome.shown = True
        else:
            base.add(store, body=body, payload=body.payload)
            outcome.shown = outcome.receipt_due = True
    return outcome


def _file_ok(payload: bytes) -> bool:
    try:
        files.decode_file(payload)
    except ValueError:
        return False
    return True


def _malformed(
    store: Store, base: _Base, session: Session, row_id: int | None, one_time_prekey: int | None,
    replace_row: int | None, unknown: bool,
) -> Outcome:  # fmt: skip
    """M-ENV-7: keep the ratchet advance, show nothing but the failure."""
    with store.transaction():
        _keep_session(store, base, session, row_id, one_time_prekey, replace_row)
        base.add(store, error="malformed_body")
    return Outcome(shown=True, unknown_sender=unknown)


def _keep_session(
    store: Store, base: _Base, session: Session, row_id: int | None,
    one_time_prekey: int | None, replace_row: int | None, *, current: bool = True,
) -> int:  # fmt: skip
    """The session part of a receive, inside the caller's transaction: the advanced session
    becomes current, the sender's identity is pinned, a used one-time prekey is deleted.
    Returns the session's row id."""
    if replace_row is not None:
        tables.inbox_delete(store, replace_row)
    tables.ensure_peer(store, base.sender)
    tables.pin_identity(store, base.sender, bytes(session.peer_identity))
    kept = tables.save_session(store, row_id, session, current=current)
    if one_time_prekey is not None:
        store.delete_one_time_prekey(one_time_prekey)
    return kept


def _fail(store: Store, base: _Base, error: str, replace_row: int | None,
          unknown: bool, retry: bool = False) -> Outcome:  # fmt: skip
    """Record a failure to open. On a ``retry`` (the id already failed) nothing is written:
    the envelope is a duplicate of the recorded failure."""
    if retry:
        return Outcome(duplicate=True)
    with store.transaction():
        if replace_row is not None:
            tables.inbox_delete(store, replace_row)
        if error == "decrypt_failed":  # the third in a row over a session: say it looks stale
            error = resets.failure_error(store, base.sender)
        base.add(store, error=error)
    return Outcome(shown=True, unknown_sender=unknown)


def _unreadable(store: Store, sender: bytes, relay_seq: int, received_at_ms: int, data: bytes,
                replace_row: int | None) -> Outcome:  # fmt: skip
    """An envelope that does not parse: its id is derived from its bytes."""
    message_id = hashlib.sha256(b"Liaison unreadable envelope" + data).digest()[:16]
    with contextlib.suppress(MalformedData, ValueError):
        message_id = Routing.decode(data).message_id
    if replace_row is None and tables.inbox_seen(store, sender, message_id):
        return Outcome(duplicate=True)
    expires_at = int(time.time()) + _FAILURE_KEEP_SECONDS
    base = _Base(sender, message_id, 3, relay_seq, received_at_ms, expires_at)
    return _fail(store, base, "malformed_envelope", replace_row, tables.peer_by_id(store, sender)
                 is None)  # fmt: skip
