"""Sealing outgoing envelopes into the outbox, atomically (M-CLI-1, M-RAT-12, M-ENV-3).

Every envelope — a user's message or a receipt — is sealed exactly once, and the advanced
session state and the outbox row holding the envelope bytes are committed in **one
transaction** before any byte goes to the relay. A crash before the commit leaves neither (the
message was never sent and the session is as before); a crash after it leaves the envelope in
the outbox, which is resent unchanged, in order, on every (re)connect until ACCEPTED.

Receipts are batched: :func:`queue_receipts` turns every inbox row waiting for a delivery or a
read receipt into RECEIPT envelopes of up to 100 message ids per peer and kind, marking the
rows in the same transaction as the envelope. The receipt carries the highest precedence of
the messages it acknowledges. It also seals the gap reports that are due (RECEIPT kind 3, at
FLASH precedence) and seals again the receipts a peer reported missing (``channels``).

Every envelope takes the next channel sequence number of its peer (``channels.next_seq``),
recorded in the transaction that stores it (M-ENV-8).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from liaison.protocol.envelope import ContentType, Precedence
from liaison.protocol.errors import LiaisonError
from liaison.protocol.errors import MessageTooLarge as ProtocolTooLarge
from liaison.protocol.session import Session

from . import channels, files, resets, tables
from .errors import MessageTooLarge
from .receive import MAX_RECEIPT_IDS, build_receipt
from .state import Store

__all__ = ["queue_receipts", "seal_into_outbox", "seal_pending", "store_pending"]


def seal_into_outbox(
    store: Store,
    session: Session,
    row_id: int | None,
    *,
    content_type: ContentType,
    payload: bytes,
    precedence: Precedence,
    expires_at: int,
    marking: str = "",
    pin: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Seal one message and commit (session, outbox row, channel number[, identity pin])
    together.

    ``row_id`` is the stored session, or ``None`` for a session just made by ``initiate``,
    which is inserted as the peer's current session. Returns ``(message_id, envelope)``.
    """
    message_id = os.urandom(16)
    peer = session.peer_cell_id
    seq = channels.next_seq(store, peer)
    try:
        envelope = session.seal(content_type, payload, message_id=message_id,
                                precedence=precedence, expires_at=expires_at,
                                marking=marking, seq=seq)  # fmt: skip
    except ProtocolTooLarge as exc:
        first = session.pending_setup is not None  # the setup block takes room too
        limit = files.max_payload(marking, first=first)
        raise MessageTooLarge(str(exc), size=len(payload), limit=limit) from None
    with store.transaction():
        if pin is not None:
            tables.ensure_peer(store, peer)
            tables.pin_identity(store, peer, pin)
        tables.save_session(store, row_id, session, current=row_id is None)
        tables.outbox_add(store, message_id=message_id, peer=peer, envelope=envelope,
                          content_type=int(content_type), precedence=int(precedence),
                          expires_at=expires_at, body=payload, marking=marking)  # fmt: skip
        channels.sealed(store, peer, seq, message_id)
    return message_id, envelope


def store_pending(
    store: Store, peer: bytes, *, content_type: ContentType, payload: bytes,
    precedence: Precedence, expires_at: int, marking: str = "",
) -> bytes:  # fmt: skip
    """Store a send that cannot be sealed yet (no session with ``peer`` and the relay not
    reached for its bundle): an outbox row with the payload sealed at rest and no envelope.
    :func:`seal_pending` seals it once the bundle is fetched. Returns the message id."""
    message_id = os.urandom(16)
    with store.transaction():
        tables.outbox_add(store, message_id=message_id, peer=peer, envelope=None,
                          content_type=int(content_type), precedence=int(precedence),
                          expires_at=expires_at, body=payload, marking=marking)  # fmt: skip
    return message_id


def seal_pending(
    store: Store, session: Session, row_id: int | None, pending: tables.PendingRow,
    pin: bytes | None = None,
) -> bytes:  # fmt: skip
    """Seal a pending send under its stored message id and commit (session, envelope, channel
    number[, pin]) together, like :func:`seal_into_outbox`. Returns the envelope."""
    peer = session.peer_cell_id
    seq = channels.next_seq(store, peer)
    try:
        envelope = session.seal(ContentType(pending.content_type), pending.body,
                                message_id=pending.message_id,
                                precedence=Precedence(pending.precedence),
                                expires_at=pending.expires_at, marking=pending.marking,
                                seq=seq)  # fmt: skip
    except ProtocolTooLarge as exc:
        raise MessageTooLarge(str(exc)) from None
    with store.transaction():
        if pin is not None:
            tables.ensure_peer(store, peer)
            tables.pin_identity(store, peer, pin)
        tables.save_session(store, row_id, session, current=row_id is None)
        tables.outbox_set_envelope(store, pending.message_id, envelope)
        channels.sealed(store, peer, seq, pending.message_id)
    return envelope


def queue_receipts(
    store: Store, *, ttl: int, peer: bytes | None = None, gaps_before: float | None = None
) -> list[tuple[bytes, bytes]]:
    """Seal every pending delivery/read receipt (of ``peer``, or of all peers) into the
    outbox, then (for all peers) every gap noticed at or before ``gaps_before`` and not yet
    reported (none if it is ``None``) and every receipt reported missing; returns the
    ``(message_id, envelope)`` pairs to transmit."""
    out: list[tuple[bytes, bytes]] = []
    for sender, items in tables.pending_receipts(store).items():
        if peer is not None and sender != peer:
            continue
        reachable = _reachable(store, sender)
        if reachable is None:
            continue  # M-SN-2: nothing goes to this peer until the new key is accepted
        if not reachable:
            with store.transaction():  # nobody to tell: drop them
                for kind in (1, 2):
                    tables.receipts_done(store, kind, [i for i, k, _, _ in items if k == kind], 0)
            continue
        for kind in (1, 2):
            batch = [item for item in items if item[1] == kind]
            for start in range(0, len(batch), MAX_RECEIPT_IDS):
                chunk = batch[start : start + MAX_RECEIPT_IDS]
                precedence = Precedence(min(prec for _, _, _, prec in chunk))
                payload = build_receipt(kind, [mid for _, _, mid, _ in chunk])
                rows = [i for i, _, _, _ in chunk]

                def done(sent: bool, kind: int = kind, rows: list[int] = rows) -> None:
                    tables.receipts_done(store, kind, rows, 2 if sent else 0)

                _collect(out, _seal_receipt(store, sender, payload, precedence, ttl, done))
    if gaps_before is not None:
        for target, ranges in channels.due_gaps(store, gaps_before).items():
            reachable = _reachable(store, target)
            if reachable is None:
                continue
            for start in range(0, len(ranges), channels.MAX_REPORT_RANGES):
                part = ranges[start : start + channels.MAX_REPORT_RANGES]

                def reported(_sent: bool, target: bytes = target,
                             part: list[tuple[int, int]] = part) -> None:  # fmt: skip
                    channels.mark_reported(store, target, [first for first, _ in part])

                if not reachable:
                    with store.transaction():
                        reported(False)
                    continue
                payload = channels.build_gap_report(part)
                _collect(out, _seal_receipt(store, target, payload, Precedence.FLASH, ttl,
                                            reported))  # fmt: skip
    for target, receipts in channels.reissues(store).items():
        reachable = _reachable(store, target)
        if reachable is None:
            continue
        for seq, payload in receipts:

            def moved(_sent: bool, target: bytes = target, seq: int = seq) -> None:
                channels.reissued(store, target, seq)

            if not reachable:
                with store.transaction():
                    moved(False)
                continue
            _collect(out, _seal_receipt(store, target, payload, Precedence.FLASH, ttl, moved))
    return out


def _reachable(store: Store, peer: bytes) -> bool | None:
    """Whether receipts can go to ``peer``: ``False`` if nobody is there to tell (they are
    dropped), ``None`` while its key change waits for the operator (they wait)."""
    row = tables.peer_by_id(store, peer)
    if row is None or row.status == "revoked" or not row.paired:
        return False
    if not tables.sessions_for(store, peer):
        return False
    if resets.is_pending(store, peer):
        return None  # they go with the new session, once the reset is sent
    return None if row.pending_identity is not None else True


def _collect(out: list[tuple[bytes, bytes]], sealed: tuple[bytes, bytes] | None) -> None:
    if sealed is not None:
        out.append(sealed)


def _seal_receipt(
    store: Store, peer: bytes, payload: bytes, precedence: Precedence, ttl: int,
    done: Callable[[bool], None],
) -> tuple[bytes, bytes] | None:  # fmt: skip
    """Seal one RECEIPT envelope into the outbox; ``done(sent)`` runs in the same
    transaction (``sent`` is false when the session cannot send: the receipt is dropped)."""
    current = tables.sessions_for(store, peer)[0]
    session = current.load()
    message_id = os.urandom(16)
    expires_at = int(time.time()) + ttl
    seq = channels.next_seq(store, peer)
    try:
        envelope = session.seal(ContentType.RECEIPT, payload, message_id=message_id,
                                precedence=precedence, expires_at=expires_at,
                                seq=seq)  # fmt: skip
    except LiaisonError:  # a session that cannot send: drop this receipt
        with store.transaction():
            done(False)
        return None
    with store.transaction():
        tables.save_session(store, current.id, session, current=False)
        tables.outbox_add(store, message_id=message_id, peer=peer, envelope=envelope,
                          content_type=int(ContentType.RECEIPT), precedence=int(precedence),
                          expires_at=expires_at)  # fmt: skip
        channels.sealed(store, peer, seq, message_id, payload)
        done(True)
    return message_id, envelope
