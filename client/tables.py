"""Row-level operations on the state tables (peers, sessions, outbox, inbox).

Plain functions over an open :class:`~liaison.client.state.Store`. None of them opens a
transaction: the callers (``receive``, ``outgoing``, ``cell``) group them into one, so the
atomic unit is always visible at the call site. Secret columns (session states, message bodies
and markings) are sealed and unsealed here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from liaison.protocol import frames as f
from liaison.protocol.errors import LiaisonError
from liaison.protocol.session import Session

from .errors import CorruptState
from .state import Store

__all__ = [
    "KEEP_SESSIONS",
    "InboxRow",
    "PeerRow",
    "PendingRow",
    "SessionRow",
]

KEEP_SESSIONS = 5
"""Sessions kept per peer: the current one and the four before it (M-SES-10)."""

_STATUS_RANK = {"queued": 0, "accepted": 1, "expired": 1, "missing": 1, "delivered": 2, "read": 3}


# -- peers --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerRow:
    cell_id: bytes
    name: str | None
    status: str
    paired: bool
    identity: bytes | None
    verified: bool
    pending_identity: bytes | None

    @property
    def label(self) -> str:
        return self.name or self.cell_id.hex()


_PEER_COLUMNS = "cell_id, name, status, paired, identity, verified, pending_identity"


def _peer(row: tuple[Any, ...]) -> PeerRow:
    cell_id, name, status, paired, identity, verified, pending = row
    return PeerRow(bytes(cell_id), None if name is None else str(name), str(status),
                   bool(paired), None if identity is None else bytes(identity),
                   bool(verified), None if pending is None else bytes(pending))  # fmt: skip


def peer_rows(store: Store) -> list[PeerRow]:
    rows = store.query(f"SELECT {_PEER_COLUMNS} FROM peers ORDER BY name, cell_id")
    return [_peer(r) for r in rows]


def peer_by_id(store: Store, cell_id: bytes) -> PeerRow | None:
    row = store.query_one(f"SELECT {_PEER_COLUMNS} FROM peers WHERE cell_id = ?", (cell_id,))
    return None if row is None else _peer(row)


def peer_by_name(store: Store, name: str) -> PeerRow | None:
    row = store.query_one(
        f"SELECT {_PEER_COLUMNS} FROM peers WHERE name = ? ORDER BY paired DESC, updated_at DESC",
        (name,),
    )
    return None if row is None else _peer(row)


def apply_peers(store: Store, entries: Sequence[f.PeerEntry]) -> list[bytes]:
    """Merge a PEERS answer: names and statuses, identities pinned on first use; a different
    identity becomes ``pending_identity`` (M-CLI-5). Peers the relay no longer lists are
    marked unpaired. Returns the cell ids whose key changed just now."""
    now = int(time.time())
    changed = []
    listed = set()
    for entry in entries:
        listed.add(entry.cell_id)
        identity = entry.identity if any(entry.identity) else None
        row = peer_by_id(store, entry.cell_id)
        if row is None:
            store.execute(
                "INSERT INTO peers (cell_id, name, status, paired, identity, updated_at) "
                "VALUES (?, ?, ?, 1, ?, ?)",
                (entry.cell_id, entry.name, entry.status, identity, now),
            )
            continue
        status = "revoked" if row.status == "revoked" else entry.status  # revocation is final
        store.execute(
            "UPDATE peers SET name = ?, status = ?, paired = 1, updated_at = ? WHERE cell_id = ?",
            (entry.name, status, now, entry.cell_id),
        )
        if identity is None:
            continue
        if row.identity is None:
            pin_identity(store, entry.cell_id, identity)
        elif identity != row.identity and identity != row.pending_identity:
            set_pending_identity(store, entry.cell_id, identity)
            changed.append(entry.cell_id)
    for row in peer_rows(store):
        if row.cell_id not in listed and row.paired:
            store.execute("UPDATE peers SET paired = 0, updated_at = ? WHERE cell_id = ?",
                          (now, row.cell_id))  # fmt: skip
    return changed


def ensure_peer(store: Store, cell_id: bytes) -> PeerRow:
    """The peer's row, inserted (unnamed, active) for a sender the relay has not listed yet."""
    row = peer_by_id(store, cell_id)
    if row is not None:
        return row
    store.execute(
        "INSERT INTO peers (cell_id, name, status, paired, updated_at) VALUES (?, NULL, "
        "'active', 1, ?)",
        (cell_id, int(time.time())),
    )
    row = peer_by_id(store, cell_id)
    assert row is not None
    return row


def set_peer_status(store: Store, cell_id: bytes, status: str) -> None:
    ensure_peer(store, cell_id)
    store.execute("UPDATE peers SET status = ?, updated_at = ? WHERE cell_id = ?",
                  (status, int(time.time()), cell_id))  # fmt: skip


def pin_identity(store: Store, cell_id: bytes, identity: bytes) -> None:
    """Pin ``identity`` if the peer has none pinned yet (trust on first use)."""
    store.execute("UPDATE peers SET identity = ? WHERE cell_id = ? AND identity IS NULL",
                  (identity, cell_id))  # fmt: skip


def set_pending_identity(store: Store, cell_id: bytes, identity: bytes) -> None:
    store.execute("UPDATE peers SET pending_identity = ?, updated_at = ? WHERE cell_id = ?",
                  (identity, int(time.time()), cell_id))  # fmt: skip


def accept_pending_identity(store: Store, cell_id: bytes) -> None:
    """Pin the pending identity, mark it verified and drop the sessions of the old key."""
    store.execute(
        "UPDATE peers SET identity = pending_identity, pending_identity = NULL, verified = 1, "
        "updated_at = ? WHERE cell_id = ? AND pending_identity IS NOT NULL",
        (int(time.time()), cell_id),
    )
    store.execute("DELETE FROM sessions WHERE peer = ?", (cell_id,))


def set_verified(store: Store, cell_id: bytes, verified: bool = True) -> None:
    store.execute("UPDATE peers SET verified = ? WHERE cell_id = ?", (int(verified), cell_id))


# -- sessions -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: int
    state: bytes
    """The unsealed ``Session.to_bytes()``."""
    setup_ephemeral: bytes | None
    cache: dict[int, tuple[bytes, Any]] | None = None

    def load(self) -> Session:
        """The session object. Parsing expands every ML-KEM key in the state, so the object
        saved last for this row is reused when it still serialises to the stored bytes (a
        caller may have changed it without committing; then it is parsed again)."""
        if self.cache is not None:
            cached = self.cache.get(self.id)
            if cached is not None and cached[0] == self.state:
                session: Session = cached[1]
                if session.to_bytes() == self.state:
                    return session
        try:
            session = Session.from_bytes(self.state)
        except LiaisonError as exc:
            raise CorruptState("a session in the state file is malformed") from exc
        if self.cache is not None:
            self.cache[self.id] = (self.state, session)
        return session


def sessions_for(store: Store, peer: bytes) -> list[SessionRow]:
    """The sessions with ``peer``, current first (M-SES-10)."""
    rows = store.query(
        "SELECT id, state, setup_ephemeral FROM sessions WHERE peer = ? ORDER BY rank DESC",
        (peer,),
    )
    return [SessionRow(int(i), store.unseal(s), None if e is None else bytes(e),
                       store.session_cache) for i, s, e in rows]  # fmt: skip


def save_session(store: Store, row_id: int | None, session: Session, *, current: bool) -> int:
    """Insert or update a session; ``current`` makes it the one used to send to the peer."""
    raw = session.to_bytes()
    state = store.seal(raw)
    rank_row = store.query_one("SELECT coalesce(max(rank), 0) + 1 FROM sessions")
    rank = int(rank_row[0]) if rank_row else 1
    if row_id is not None:
        if current:
            store.execute("UPDATE sessions SET state = ?, rank = ? WHERE id = ?",
                          (state, rank, row_id))  # fmt: skip
        else:
            store.execute("UPDATE sessions SET state = ? WHERE id = ?", (state, row_id))
        store.session_cache[row_id] = (raw, session)
        return row_id
    ephemeral = None if session.setup_ephemeral is None else bytes(session.setup_ephemeral)
    new_id = store.execute(
        "INSERT INTO sessions (peer, state, setup_ephemeral, rank, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (session.peer_cell_id, state, ephemeral, rank, int(time.time())),
    )
    store.session_cache[new_id] = (raw, session)
    store.execute(
        "DELETE FROM sessions WHERE peer = ? AND id NOT IN (SELECT id FROM sessions WHERE "
        "peer = ? ORDER BY rank DESC LIMIT ?)",
        (session.peer_cell_id, session.peer_cell_id, KEEP_SESSIONS),
    )
    return new_id


# -- outbox ---------------------------------------------------------------------------------------


def outbox_add(store: Store, *, message_id: bytes, peer: bytes, envelope: bytes | None,
               content_type: int, precedence: int, expires_at: int,
               body: bytes | None = None, marking: str = "") -> None:  # fmt: skip
    """A new ``queued`` row. ``body``/``marking`` (a user message's payload, kept sealed for
    the history); ``envelope=None``: *pending*, to be sealed once a session exists."""
    now = time.time()
    store.execute(
        "INSERT INTO outbox (message_id, peer, envelope, content_type, precedence, created_at, "
        "expires_at, status, updated_at, body, marking) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        (message_id, peer, envelope, content_type, precedence, now, expires_at, now,
         None if body is None else store.seal(body),
         None if body is None else store.seal(marking.encode())),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A send stored before it could be sealed (no session with the peer yet, offline)."""

    message_id: bytes
    peer: bytes
    content_type: int
    precedence: int
    expires_at: int
    body: bytes
    marking: str


def outbox_pending(store: Store, peer: bytes | None = None) -> list[PendingRow]:
    """Pending sends (queued, no envelope yet), in send order; of ``peer`` or of all."""
    where = "" if peer is None else "AND peer = ?"
    rows = store.query(
        "SELECT message_id, peer, content_type, precedence, expires_at, body, marking FROM outbox "
        f"WHERE status = 'queued' AND envelope IS NULL AND body IS NOT NULL {where} ORDER BY id",
        () if peer is None else (peer,),
    )
    return [PendingRow(bytes(m), bytes(p), int(c), int(pr), int(x), store.unseal(b),
                       "" if k is None else store.unseal(k).decode(errors="replace"))
            for m, p, c, pr, x, b, k in rows]  # fmt: skip


def outbox_set_envelope(store: Store, message_id: bytes, envelope: bytes) -> bool:
    """A pending send sealed at last: its envelope, to send like any other."""
    return (
        store.execute(
            "UPDATE outbox SET envelope = ?, updated_at = ? WHERE message_id = ? "
            "AND status = 'queued' AND envelope IS NULL",
            (envelope, time.time(), message_id),
        )
        > 0
    )


def outbox_queued(store: Store, include_receipts: bool = True) -> list[bytes]:
    """Message ids not accepted by the relay yet (sealed or pending), in send order."""
    where = "" if include_receipts else "AND content_type != 3"
    rows = store.query(f"SELECT message_id FROM outbox WHERE status = 'queued' {where} ORDER BY id")
    return [bytes(m) for (m,) in rows]


def outbox_sent_rows(
    store: Store, peer: bytes | None, since: float | None, limit: int | None
) -> list[tuple[Any, ...]]:
    """User sends for the history, newest first: ``(id, message_id, peer, status, precedence,
    content_type, created_at, body, marking, error)`` with body and marking unsealed."""
    where: list[str] = ["content_type != 3"]
    params: list[Any] = []
    if peer is not None:
        where.append("peer = ?")
        params.append(peer)
    if since is not None:
        where.append("created_at >= ?")
        params.append(since)
    rows = store.query(
        "SELECT id, message_id, peer, status, precedence, content_type, created_at, body, "
        f"marking, error FROM outbox WHERE {' AND '.join(where)} ORDER BY id DESC"
        + ("" if limit is None else f" LIMIT {int(limit)}"),
        params,
    )
    return [(*r[:7], None if r[7] is None else store.unseal(r[7]),
             "" if r[8] is None else store.unseal(r[8]).decode(errors="replace"), r[9])
            for r in rows]  # fmt: skip


def outbox_unsent(store: Store) -> list[tuple[bytes, bytes, int]]:
    """``(message_id, envelope, expires_at)`` of every queued message, in send order."""
    rows = store.query(
        "SELECT message_id, envelope, expires_at FROM outbox WHERE status = 'queued' "
        "AND envelope IS NOT NULL ORDER BY id"
    )
    return [(bytes(m), bytes(e), int(x)) for m, e, x in rows]


def outbox_accepted(store: Store, message_id: bytes, relay_seq: int) -> bool:
    """ACCEPTED: the relay stored it; the envelope bytes are no longer needed."""
    return (
        store.execute(
            "UPDATE outbox SET status = 'accepted', relay_seq = ?, envelope = NULL, updated_at = ? "
            "WHERE message_id = ? AND status = 'queued'",
            (relay_seq, time.time(), message_id),
        )
        > 0
    )


def outbox_finish(store: Store, message_id: bytes, status: str, error: str | None) -> bool:
    """``failed`` (relay refused it) or ``expired``: only from queued/accepted."""
    return (
        store.execute(
            "UPDATE outbox SET status = ?, error = ?, envelope = NULL, updated_at = ? "
            "WHERE message_id = ? AND status IN ('queued', 'accepted')",
            (status, error, time.time(), message_id),
        )
        > 0
    )


def outbox_advance(store: Store, peer: bytes, message_ids: Iterable[bytes], status: str) -> int:
    """A delivery or read receipt from ``peer``: statuses only move forward."""
    rank = _STATUS_RANK[status]
    lower = [s for s, r in _STATUS_RANK.items() if r < rank]
    marks = ",".join("?" * len(lower))
    changed = 0
    for message_id in message_ids:
        changed += store.execute(
            f"UPDATE outbox SET status = ?, envelope = NULL, updated_at = ? WHERE message_id = ? "
            f"AND peer = ? AND content_type != 3 AND status IN ({marks})",
            (status, time.time(), message_id, peer, *lower),
        )
    return changed


_OUTBOX_COLUMNS = ("message_id, peer, status, precedence, content_type, created_at, expires_at, "
                   "relay_seq, error")  # fmt: skip


def outbox_row(store: Store, message_id: bytes) -> tuple[Any, ...] | None:
    return store.query_one(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE message_id = ?", (message_id,)
    )


def outbox_rows(store: Store, limit: int, include_receipts: bool) -> list[tuple[Any, ...]]:
    where = "" if include_receipts else "WHERE content_type != 3"
    return store.query(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox {where} ORDER BY id DESC LIMIT ?", (limit,)
    )[::-1]


# -- inbox ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    sender: bytes
    message_id: bytes
    content_type: int | None
    precedence: int
    body: bytes | None
    marking: str
    seq: int | None
    sent_at_ms: int | None
    received_at_ms: int
    read: bool
    error: str | None


_INBOX_COLUMNS = ("id, sender, message_id, content_type, precedence, body, marking, seq, "
                  "sent_at_ms, received_at_ms, read, error")  # fmt: skip
_USER_TYPES = "(1, 2, 4, 6)"  # TEXT, JSON, FILE_CHUNK, FILE: shown by messages(), inbox()


def _inbox(store: Store, row: tuple[Any, ...]) -> InboxRow:
    rid, sender, mid, ctype, prec, body, marking, seq, sent, received, read, error = row
    return InboxRow(
        int(rid), bytes(sender), bytes(mid), None if ctype is None else int(ctype), int(prec),
        None if body is None else store.unseal(body),
        "" if marking is None else store.unseal(marking).decode(errors="replace"),
        None if seq is None else int(seq), None if sent is None else int(sent), int(received),
        bool(read), None if error is None else str(error),
    )  # fmt: skip


def inbox_seen(store: Store, sender: bytes, message_id: bytes) -> bool:
    return (
        store.query_one(
            "SELECT 1 FROM inbox WHERE sender = ? AND message_id = ?", (sender, message_id)
        )
        is not None
    )


def inbox_row_id(store: Store, sender: bytes, message_id: bytes) -> int | None:
    """The inbox row of ``(sender, message_id)``, if it was received."""
    row = store.query_one(
        "SELECT id FROM inbox WHERE sender = ? AND message_id = ?", (sender, message_id)
    )
    return None if row is None else int(row[0])


def inbox_add(
    store: Store, *, sender: bytes, message_id: bytes, precedence: int, relay_seq: int,
    received_at_ms: int, expires_at: int, content_type: int | None = None,
    body: bytes | None = None, marking: str = "", seq: int | None = None,
    sent_at_ms: int | None = None, hidden: bool = False, error: str | None = None,
    held_envelope: bytes | None = None, delivery_receipt: bool = False,
) -> int:  # fmt: skip
    """Record a processed envelope. ``hidden`` rows (receipts, control) are never yielded."""
    return store.execute(
        "INSERT INTO inbox (sender, message_id, content_type, precedence, body, marking, seq, "
        "sent_at_ms, received_at_ms, relay_seq, expires_at, yielded, decrypt_failed, error, "
        "held_envelope, delivery_receipt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sender, message_id, content_type, precedence,
         None if body is None else store.seal(body), store.seal(marking.encode()), seq,
         sent_at_ms, received_at_ms, relay_seq, expires_at, int(hidden), int(error is not None),
         error, held_envelope, int(delivery_receipt)),
    )  # fmt: skip


def inbox_delete(store: Store, row_id: int) -> None:
    store.execute("DELETE FROM inbox WHERE id = ?", (row_id,))


def inbox_unyielded(store: Store, limit: int, upto: int, after: int = 0) -> list[InboxRow]:
    """Rows not handed over yet (``yielded = 0``), past row id ``after`` and up to row id
    ``upto`` (rows past it are not acknowledged yet)."""
    rows = store.query(
        f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE yielded = 0 AND id > ? AND id <= ? "
        "ORDER BY id LIMIT ?",
        (after, upto, limit),
    )
    return [_inbox(store, r) for r in rows]


def inbox_last_id(store: Store) -> int:
    row = store.query_one("SELECT coalesce(max(id), 0) FROM inbox")
    return 0 if row is None else int(row[0])


def inbox_mark_yielded(store: Store, row_id: int) -> bool:
    """Mark a row handed over (``messages()`` does not yield it again); ``False`` if it
    already was."""
    return store.execute("UPDATE inbox SET yielded = 1 WHERE id = ? AND yielded = 0",
                         (row_id,)) > 0  # fmt: skip


def inbox_rows(store: Store, sender: bytes | None, limit: int) -> list[InboxRow]:
    shown = f"(content_type IN {_USER_TYPES} OR decrypt_failed = 1)"
    if sender is None:
        rows = store.query(
            f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE {shown} ORDER BY id DESC LIMIT ?", (limit,)
        )
    else:
        rows = store.query(
            f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE {shown} AND sender = ? "
            "ORDER BY id DESC LIMIT ?",
            (sender, limit),
        )
    return [_inbox(store, r) for r in rows[::-1]]


def inbox_mark_read(store: Store, row_id: int) -> bool:
    """Mark read and queue a read receipt (only for a message that opened)."""
    return (
        store.execute(
            "UPDATE inbox SET read = 1, read_receipt = "
            "CASE WHEN decrypt_failed = 0 THEN 1 ELSE 0 END WHERE id = ? AND read = 0",
            (row_id,),
        )
        > 0
    )


def pending_receipts(store: Store) -> dict[bytes, list[tuple[int, int, bytes, int]]]:
    """Receipts to send, by peer: ``(row id, kind, message id, precedence)``; kind 1 delivered,
    2 read."""
    rows = store.query(
        "SELECT id, sender, message_id, precedence, delivery_receipt, read_receipt FROM inbox "
        "WHERE delivery_receipt = 1 OR read_receipt = 1 ORDER BY id"
    )
    out: dict[bytes, list[tuple[int, int, bytes, int]]] = {}
    for rid, sender, mid, prec, delivered, read in rows:
        for kind, flag in ((1, delivered), (2, read)):
            if flag == 1:
                out.setdefault(bytes(sender), []).append((int(rid), kind, bytes(mid), int(prec)))
    return out


def receipts_done(store: Store, kind: int, row_ids: Iterable[int], state: int = 2) -> None:
    """Mark receipts queued (2) or dropped (0)."""
    column = "delivery_receipt" if kind == 1 else "read_receipt"
    for row_id in row_ids:
        store.execute(f"UPDATE inbox SET {column} = ? WHERE id = ?", (state, row_id))


def held_rows(store: Store, sender: bytes) -> list[tuple[int, int, int, bytes]]:
    """Envelopes held by a key change: ``(row id, relay_seq, received_at_ms, envelope)``."""
    rows = store.query(
        "SELECT id, relay_seq, received_at_ms, held_envelope FROM inbox WHERE sender = ? "
        "AND held_envelope IS NOT NULL ORDER BY id",
        (sender,),
    )
    return [(int(i), int(s), int(r), bytes(e)) for i, s, r, e in rows]


def prune(store: Store, now: int) -> None:
    """Forget hidden rows (receipts, control, duplicates' markers) once they have expired: the
    relay cannot deliver them again after their expiry (M-CLI-2)."""
    store.execute("DELETE FROM inbox WHERE content_type IN (3, 5) AND expires_at < ? AND "
                  "coalesce(error, '') NOT IN ('session_reset', 'session_reset_sent')",
                  (now,))  # fmt: skip  # a reset's id is kept: a replay stays a duplicate
