"""Sealing outgoing envelopes into the outbox, atomically (M-CLI-1, M-RAT-12, M-ENV-3).

Every envelope — a user's message or a receipt — is sealed exactly once, and the advanced
session state and the outbox row holding the envelope bytes are committed in **one
transaction** before any byte goes to the relay. A crash before the commit leaves neither (the
message was never sent and the session is as before); a crash after it leaves the envelope in
the outbox, which is resent unchanged, in order, on every (re)connect until ACCEPTED.

Receipts are batched: :func:`queue_receipts` turns every inbox row waiting for a delivery or a
read receipt into RECEIPT envelopes of up to 100 message ids per peer and kind, marking the
rows in the same transaction as the envelope. The receipt carries the highest precedence of
the messages it acknowledges.
"""

from __future__ import annotations

import os
import time

from liaison.protocol.envelope import ContentType, Precedence
from liaison.protocol.errors import LiaisonError
from liaison.protocol.errors import MessageTooLarge as ProtocolTooLarge
from liaison.protocol.session import Session

from . import tables
from .errors import MessageTooLarge
from .receive import MAX_RECEIPT_IDS, build_receipt
from .state import Store

__all__ = ["queue_receipts", "seal_into_outbox"]


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
    """Seal one message and commit (session, outbox row[, identity pin]) together.

    ``row_id`` is the stored session, or ``None`` for a session just made by ``initiate``,
    which is inserted as the peer's current session. Returns ``(message_id, envelope)``.
    """
    message_id = os.urandom(16)
    try:
        envelope = session.seal(content_type, payload, message_id=message_id,
                                precedence=precedence, expires_at=expires_at,
                                marking=marking)  # fmt: skip
    except ProtocolTooLarge as exc:
        raise MessageTooLarge(str(exc)) from None
    peer = session.peer_cell_id
    with store.transaction():
        if pin is not None:
            tables.ensure_peer(store, peer)
            tables.pin_identity(store, peer, pin)
        tables.save_session(store, row_id, session, current=row_id is None)
        tables.outbox_add(store, message_id=message_id, peer=peer, envelope=envelope,
                          content_type=int(content_type), precedence=int(precedence),
                          expires_at=expires_at)  # fmt: skip
    return message_id, envelope


def queue_receipts(
    store: Store, *, ttl: int, peer: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    """Seal every pending delivery/read receipt (of ``peer``, or of all peers) into the
    outbox; returns the ``(message_id, envelope)`` pairs to transmit."""
    out: list[tuple[bytes, bytes]] = []
    for sender, items in tables.pending_receipts(store).items():
        if peer is not None and sender != peer:
            continue
        row = tables.peer_by_id(store, sender)
        sessions = tables.sessions_for(store, sender)
        if row is None or row.status == "revoked" or not row.paired or not sessions:
            with store.transaction():  # nobody to tell: drop them
                for kind in (1, 2):
                    tables.receipts_done(store, kind, [i for i, k, _, _ in items if k == kind], 0)
            continue
        if row.pending_identity is not None:
            continue  # M-SN-2: nothing goes to this peer until the new key is accepted
        for kind in (1, 2):
            batch = [item for item in items if item[1] == kind]
            for start in range(0, len(batch), MAX_RECEIPT_IDS):
                chunk = batch[start : start + MAX_RECEIPT_IDS]
                sealed = _seal_receipt(store, sender, kind, chunk, ttl)
                if sealed is not None:
                    out.append(sealed)
    return out


def _seal_receipt(store: Store, peer: bytes, kind: int, chunk: list[tuple[int, int, bytes, int]],
                  ttl: int) -> tuple[bytes, bytes] | None:  # fmt: skip
    current = tables.sessions_for(store, peer)[0]
    session = current.load()
    message_id = os.urandom(16)
    precedence = Precedence(min(prec for _, _, _, prec in chunk))
    payload = build_receipt(kind, [mid for _, _, mid, _ in chunk])
    expires_at = int(time.time()) + ttl
    try:
        envelope = session.seal(ContentType.RECEIPT, payload, message_id=message_id,
                                precedence=precedence, expires_at=expires_at)  # fmt: skip
    except LiaisonError:  # a session that cannot send: drop these receipts
        with store.transaction():
            tables.receipts_done(store, kind, [i for i, _, _, _ in chunk], 0)
        return None
    with store.transaction():
        tables.save_session(store, current.id, session, current=False)
        tables.outbox_add(store, message_id=message_id, peer=peer, envelope=envelope,
                          content_type=int(ContentType.RECEIPT), precedence=int(precedence),
                          expires_at=expires_at)  # fmt: skip
        tables.receipts_done(store, kind, [i for i, _, _, _ in chunk])
    return message_id, envelope
