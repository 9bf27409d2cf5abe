"""Session resets: starting a new session with a peer over a broken or stale one (SPEC.md §7.7).

Theory of operation
-------------------
A session breaks for good when one side's ratchet state goes back in time — its home was
restored from an older copy (``cp -a`` of last week's home, ``liaison cell restore``) — or
was never shared (a relay substituted the one-time prekey of a new session, §12.2). Every later
envelope then fails to open on both sides (``decrypt_failed``).

*Resetting* the session with peer P (M-SES-11): in one transaction the cell stores a new
session started from a freshly fetched bundle of P's pinned identity (the checks of a first
session) as its current one with P, and seals a CONTROL envelope carrying the session-reset
payload ``0x01 ‖ reason`` as the first envelope of that session (so it carries the setup
block) at FLASH precedence. The channel's sequence numbers go on (M-ENV-8).

Receiving one (M-SES-12): a PREKEY envelope that opens under the session its setup block
built (by ``respond()`` just now, or from an earlier envelope of the same setup when a relay
held the reset back, M-SES-8), from the pinned identity, and carries the reset payload makes
that session current and is shown to the operator as a notice (``error`` =
``session_reset``). When it is the first envelope of its session it also restarts the
tracking of P's channel numbers at the reset's number (P's count may have gone back with its
state; older gaps can no longer be filled); after others of its session, the numbers go on.
A relay cannot make one: the setup needs P's identity private key, and a replay is a
duplicate (its row is kept, never pruned).

On both sides the sessions from before the reset are *superseded* (``reset_sessions``): they
still open envelopes that were already on their way (the relay delivers the FLASH reset ahead
of older ROUTINE ones), but never become current again and their channel numbers are not
counted, so nothing is ever sealed again on a session the other side may have lost.

When: only on request — the operator's (``liaison cell reset-session PEER``,
``Cell.reset_session``) or a restore (``liaison cell restore`` requests one with every
paired peer). A request is stored in ``session_resets`` and carried out on the next link
(before anything else is sealed to that peer); nothing a relay can send triggers it.

Detection of a stale home that was copied back by hand: when the third envelope in a row from
a peer that has a session fails to open, and nothing from it opened since, the failure is
recorded as ``stale_session`` instead of ``decrypt_failed`` and the CLI says what to do. A relay
can cause that notice too (by altering envelopes), never a reset.
"""

from __future__ import annotations

import os
import time

from liaison.protocol.envelope import ContentType, Precedence
from liaison.protocol.session import Session

from . import channels, tables
from .state import Store

__all__ = [
    "CONTROL_SESSION_RESET",
    "NOTICE_ERRORS",
    "REASON_OPERATOR",
    "REASON_RESTORED",
    "STALE_AFTER",
    "build_reset",
    "describe",
    "drop_request",
    "failure_error",
    "is_pending",
    "is_reset_session",
    "mark_reset_session",
    "parse_reset",
    "pending",
    "request",
    "request_all",
    "restart_channel",
    "seal_reset",
    "superseded",
]

CONTROL_SESSION_RESET = 0x01
REASON_OPERATOR = 1
REASON_RESTORED = 2
STALE_AFTER = 3
"""Failures in a row from a peer with a session (nothing opened since) that make the cell
say the session looks stale."""
NOTICE_ERRORS = ("session_reset", "session_reset_sent")
"""Inbox ``error`` values of notices (not failures): never pruned, never receipted."""
_NOTICE_KEEP_SECONDS = 30 * 24 * 3600


# -- the payload ----------------------------------------------------------------------------------


def build_reset(reason: int) -> bytes:
    """``0x01 ‖ reason`` (1 the operator asked, 2 the home was restored; others reserved)."""
    if not 0 <= reason <= 255:
        raise ValueError("a reset reason is one byte")
    return bytes([CONTROL_SESSION_RESET, reason])


def parse_reset(payload: bytes) -> int | None:
    """The reason of a session-reset CONTROL payload, or ``None`` for any other payload."""
    if len(payload) != 2 or payload[0] != CONTROL_SESSION_RESET:
        return None
    return payload[1]


# -- requests -------------------------------------------------------------------------------------


def request(store: Store, peer: bytes, reason: int) -> None:
    """Ask for a reset of the session with ``peer`` at the next link (inside a transaction)."""
    store.execute(
        "INSERT OR REPLACE INTO session_resets (peer, reason, requested_at) VALUES (?, ?, ?)",
        (peer, reason, time.time()),
    )


def request_all(store: Store, reason: int) -> int:
    """A reset with every paired, not revoked peer (a restored home); how many."""
    peers = [row.cell_id for row in tables.peer_rows(store)
             if row.paired and row.status != "revoked"]  # fmt: skip
    for peer in peers:
        request(store, peer, reason)
    return len(peers)


def pending(store: Store) -> dict[bytes, int]:
    """Requested resets not carried out yet: ``{peer: reason}``."""
    rows = store.query("SELECT peer, reason FROM session_resets ORDER BY requested_at")
    return {bytes(peer): int(reason) for peer, reason in rows}


def is_pending(store: Store, peer: bytes) -> bool:
    return store.query_one("SELECT 1 FROM session_resets WHERE peer = ?", (peer,)) is not None


def drop_request(store: Store, peer: bytes) -> None:
    store.execute("DELETE FROM session_resets WHERE peer = ?", (peer,))


# -- sending one ----------------------------------------------------------------------------------


def seal_reset(
    store: Store, session: Session, reason: int, *, ttl: int, pin: bytes | None
) -> tuple[bytes, bytes]:
    """Seal the reset CONTROL envelope with the new ``session`` (from ``initiate``) and commit,
    in one transaction: the old sessions with the peer dropped, the new one stored as current,
    the outbox row, the channel number, the request done and a notice for this operator.
    Returns ``(message_id, envelope)``."""
    peer = session.peer_cell_id
    message_id = os.urandom(16)
    expires_at = int(time.time()) + ttl
    seq = channels.next_seq(store, peer)
    envelope = session.seal(ContentType.CONTROL, build_reset(reason), message_id=message_id,
                            precedence=Precedence.FLASH, expires_at=expires_at,
                            seq=seq)  # fmt: skip
    with store.transaction():
        if pin is not None:
            tables.ensure_peer(store, peer)
            tables.pin_identity(store, peer, pin)
        new_id = tables.save_session(store, None, session, current=True)
        mark_reset_session(store, peer, new_id)
        tables.outbox_add(store, message_id=message_id, peer=peer, envelope=envelope,
                          content_type=int(ContentType.CONTROL),
                          precedence=int(Precedence.FLASH), expires_at=expires_at)  # fmt: skip
        channels.sealed(store, peer, seq, message_id)
        drop_request(store, peer)
        tables.inbox_add(
            store, sender=peer, message_id=message_id, precedence=int(Precedence.FLASH),
            relay_seq=0, received_at_ms=int(time.time() * 1000),
            expires_at=int(time.time()) + _NOTICE_KEEP_SECONDS,
            content_type=int(ContentType.CONTROL), body=build_reset(reason), seq=seq,
            error="session_reset_sent",
        )  # fmt: skip
    return message_id, envelope


# -- receiving one --------------------------------------------------------------------------------


def restart_channel(store: Store, peer: bytes, seq: int) -> bool:
    """A reset from ``peer`` opened with channel number ``seq``: its numbers are tracked
    afresh from there (inside the receive transaction). Returns whether gaps were dropped."""
    dropped = store.execute("DELETE FROM gaps WHERE peer = ?", (peer,))
    store.execute("INSERT OR IGNORE INTO channels (peer) VALUES (?)", (peer,))
    store.execute("UPDATE channels SET received = ? WHERE peer = ?", (max(seq, 0), peer))
    return dropped > 0


def mark_reset_session(store: Store, peer: bytes, session_id: int) -> None:
    """``session_id`` is the session a reset with ``peer`` made (sent or received): the
    sessions before it still open envelopes that were on their way, but never become
    current again and their channel numbers are not counted (``superseded``)."""
    store.execute("INSERT OR REPLACE INTO reset_sessions (peer, session_id) VALUES (?, ?)",
                  (peer, session_id))  # fmt: skip


def is_reset_session(store: Store, peer: bytes, session_id: int | None) -> bool:
    """Whether ``session_id`` is the session the last reset with ``peer`` made."""
    if session_id is None:
        return False
    row = store.query_one("SELECT session_id FROM reset_sessions WHERE peer = ?", (peer,))
    return row is not None and int(row[0]) == session_id


def superseded(store: Store, peer: bytes, session_id: int | None) -> bool:
    """Whether the stored session ``session_id`` is older than the last reset with ``peer``."""
    if session_id is None:
        return False
    row = store.query_one("SELECT session_id FROM reset_sessions WHERE peer = ?", (peer,))
    return row is not None and int(row[0]) > session_id


def failure_error(store: Store, sender: bytes) -> str:
    """``stale_session`` for the STALE_AFTER-th failure in a row from a peer that has a
    session (nothing from it opened since the last success), else ``decrypt_failed``."""
    if store.query_one("SELECT 1 FROM sessions WHERE peer = ?", (sender,)) is None:
        return "decrypt_failed"
    row = store.query_one(
        "SELECT count(*) FROM inbox WHERE sender = ? AND error IN ('decrypt_failed', "
        "'stale_session') AND id > (SELECT coalesce(max(id), 0) FROM inbox WHERE sender = ? "
        "AND (error IS NULL OR error = 'session_reset'))",
        (sender, sender),
    )
    earlier = 0 if row is None else int(row[0])
    return "stale_session" if earlier + 1 >= STALE_AFTER else "decrypt_failed"


# -- telling the operator -------------------------------------------------------------------------


def describe(error: str, peer: str, body: bytes | None = None) -> str | None:
    """One line for a notice or a stale-session failure (``peer`` already made safe to
    print), or ``None`` for any other error."""
    if error == "stale_session":
        return (f"messages from {peer} cannot be opened: this home looks restored from an "
                f"older copy, or {peer} reset its session; run "
                f"`liaison cell reset-session {peer}`")  # fmt: skip
    why = ""
    reason = None if body is None else parse_reset(body)
    if reason == REASON_RESTORED:
        why = " (a home restored from a backup)"
    elif reason == REASON_OPERATOR:
        why = " (its operator asked)"
    if error == "session_reset":
        return (f"{peer} reset its session with this cell{why}; messages from now on open "
                f"under the new session")  # fmt: skip
    if error == "session_reset_sent":
        why = why.replace("its operator", "the operator").replace("a home", "this home")
        return f"session with {peer} reset{why}; {peer} is told with the new session"
    return None
