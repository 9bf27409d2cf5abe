"""Channel sequence numbers and gap detection (SPEC.md §9.2–§9.3, M-ENV-8, M-ENV-10, M-ENV-11).

Theory of operation
-------------------
A *channel* is one direction between two cells: everything this cell seals to one peer. Its
sequence number travels inside the encrypted body (``Body.seq``), so the relay can neither read
nor change it.

Sending. Every envelope sealed to a peer — a message, a receipt, a gap report — takes the next
number, ``channels.sent + 1``, whichever session seals it: the count survives a new session
with the same peer. The number, the message id and (for a receipt) its payload are recorded in
``channel_sent`` in the transaction that stores the sealed envelope, so a number is never used
twice and a gap report can be mapped back to the messages it names.

Receiving. ``channels.received`` is the highest number opened from the peer. Opening a higher
number than ``received + 1`` records the numbers skipped as a *gap* (``gaps``: a range and the
time it was noticed); opening a number inside a gap removes it from the gap (it was late, e.g.
overtaken by a higher precedence). A gap still open ``grace`` seconds after it was noticed is
*missing*: it is shown (``Cell.gaps()``, ``Peer.missing``) and reported to the peer once, in a
RECEIPT of kind 3 listing the missing ranges. Nothing that does not authenticate touches these
tables: a forged or altered envelope cannot open a gap or close one.

Reports. A cell that receives a gap report marks each reported message still ``accepted`` as
``missing`` (a delivery receipt that arrives later moves it on to ``delivered``), and seals
again, under new numbers, every receipt it had sent under a reported number (``reissue``).

A new identity key on either side starts a new channel: accepting a peer's new key resets both
directions (``reset``).

All functions run inside the caller's transaction; none opens one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .state import Store

__all__ = [
    "MAX_REPORT_RANGES",
    "GapRow",
    "build_gap_report",
    "due_gaps",
    "gap_rows",
    "mark_reported",
    "missing_counts",
    "next_deadline",
    "next_seq",
    "opened",
    "parse_gap_report",
    "reissued",
    "reissues",
    "reported_missing",
    "reset",
    "sealed",
]

RECEIPT_MISSING = 3
MAX_REPORT_RANGES = 100
_RANGE = struct.Struct(">QQ")


# -- the gap report payload (RECEIPT kind 3) ------------------------------------------------------


def build_gap_report(ranges: list[tuple[int, int]]) -> bytes:
    """``0x03 ‖ n × (first u64 ‖ last u64)``, 1 ≤ n ≤ 100, each range first ≤ last."""
    if not 1 <= len(ranges) <= MAX_REPORT_RANGES:
        raise ValueError("a gap report names 1..100 ranges")
    for first, last in ranges:
        if not 1 <= first <= last < 2**64:
            raise ValueError("a gap range is 1 <= first <= last < 2**64")
    return bytes([RECEIPT_MISSING]) + b"".join(_RANGE.pack(a, b) for a, b in ranges)


def parse_gap_report(payload: bytes) -> list[tuple[int, int]] | None:
    count, extra = divmod(len(payload) - 1, _RANGE.size)
    if not payload or payload[0] != RECEIPT_MISSING or extra:
        return None
    if not 1 <= count <= MAX_REPORT_RANGES:
        return None
    ranges = [_RANGE.unpack_from(payload, 1 + _RANGE.size * i) for i in range(count)]
    if any(not 1 <= first <= last for first, last in ranges):
        return None
    return [(int(first), int(last)) for first, last in ranges]


# -- sending --------------------------------------------------------------------------------------


def next_seq(store: Store, peer: bytes) -> int:
    """The number the next envelope sealed to ``peer`` takes."""
    row = store.query_one("SELECT sent FROM channels WHERE peer = ?", (peer,))
    return 1 if row is None else int(row[0]) + 1


def sealed(store: Store, peer: bytes, seq: int, message_id: bytes,
           receipt: bytes | None = None) -> None:  # fmt: skip
    """Record that ``seq`` was sealed to ``peer`` as ``message_id`` (with the transaction that
    stores the envelope)."""
    store.execute("INSERT OR IGNORE INTO channels (peer) VALUES (?)", (peer,))
    store.execute("UPDATE channels SET sent = max(sent, ?) WHERE peer = ?", (seq, peer))
    store.execute(
        "INSERT OR REPLACE INTO channel_sent (peer, seq, message_id, receipt, reissue) "
        "VALUES (?, ?, ?, ?, 0)",
        (peer, seq, message_id, receipt),
    )


# -- receiving ------------------------------------------------------------------------------------


def opened(store: Store, peer: bytes, seq: int, now: float) -> bool:
    """Account for an envelope from ``peer`` that opened with channel number ``seq``; returns
    whether the gaps changed. A number at or below the highest one seen and in no gap (a
    counter restored from a backup) changes nothing."""
    if seq < 1:
        return False
    row = store.query_one("SELECT received FROM channels WHERE peer = ?", (peer,))
    received = 0 if row is None else int(row[0])
    if seq > received:
        store.execute("INSERT OR IGNORE INTO channels (peer) VALUES (?)", (peer,))
        store.execute("UPDATE channels SET received = ? WHERE peer = ?", (seq, peer))
        if seq == received + 1:
            return False
        store.execute(
            "INSERT INTO gaps (peer, first_seq, last_seq, noticed_at) VALUES (?, ?, ?, ?)",
            (peer, received + 1, seq - 1, now),
        )
        return True
    gap = store.query_one(
        "SELECT first_seq, last_seq, noticed_at, reported FROM gaps "
        "WHERE peer = ? AND first_seq <= ? AND last_seq >= ?",
        (peer, seq, seq),
    )
    if gap is None:
        return False
    first, last, noticed, reported = int(gap[0]), int(gap[1]), float(gap[2]), int(gap[3])
    store.execute("DELETE FROM gaps WHERE peer = ? AND first_seq = ?", (peer, first))
    for a, b in ((first, seq - 1), (seq + 1, last)):
        if a <= b:
            store.execute(
                "INSERT INTO gaps (peer, first_seq, last_seq, noticed_at, reported) "
                "VALUES (?, ?, ?, ?, ?)",
                (peer, a, b, noticed, reported),
            )
    return True


@dataclass(frozen=True, slots=True)
class GapRow:
    peer: bytes
    first_seq: int
    last_seq: int
    noticed_at: float
    reported: bool


def gap_rows(store: Store, peer: bytes | None = None) -> list[GapRow]:
    """Open gaps, by peer and number."""
    where, params = ("WHERE peer = ?", (peer,)) if peer is not None else ("", ())
    rows = store.query(
        f"SELECT peer, first_seq, last_seq, noticed_at, reported FROM gaps {where} "
        "ORDER BY peer, first_seq",
        params,
    )
    return [GapRow(bytes(p), int(a), int(b), float(n), bool(r)) for p, a, b, n, r in rows]


def missing_counts(store: Store, noticed_before: float) -> dict[bytes, int]:
    """Per peer: how many numbers are missing (in gaps reported, or noticed before
    ``noticed_before``)."""
    rows = store.query(
        "SELECT peer, sum(last_seq - first_seq + 1) FROM gaps "
        "WHERE reported = 1 OR noticed_at <= ? GROUP BY peer",
        (noticed_before,),
    )
    return {bytes(peer): int(count) for peer, count in rows}


def due_gaps(store: Store, noticed_before: float) -> dict[bytes, list[tuple[int, int]]]:
    """Gaps not reported yet that were noticed before ``noticed_before``, by peer."""
    rows = store.query(
        "SELECT peer, first_seq, last_seq FROM gaps WHERE reported = 0 AND noticed_at <= ? "
        "ORDER BY peer, first_seq",
        (noticed_before,),
    )
    out: dict[bytes, list[tuple[int, int]]] = {}
    for peer, first, last in rows:
        out.setdefault(bytes(peer), []).append((int(first), int(last)))
    return out


def mark_reported(store: Store, peer: bytes, firsts: Iterable[int]) -> None:
    for first in firsts:
        store.execute("UPDATE gaps SET reported = 1 WHERE peer = ? AND first_seq = ?",
                      (peer, first))  # fmt: skip


def next_deadline(store: Store, grace: float) -> float | None:
    """When the next unreported gap becomes missing (unix seconds), or ``None``."""
    row = store.query_one("SELECT min(noticed_at) FROM gaps WHERE reported = 0")
    return None if row is None or row[0] is None else float(row[0]) + grace


# -- reports from the peer ------------------------------------------------------------------------


def reported_missing(
    store: Store, peer: bytes, ranges: list[tuple[int, int]], now: float
) -> tuple[int, int]:
    """A gap report from ``peer``: our messages in ``ranges`` that are still ``accepted``
    become ``missing``; our receipts in them are marked to be sealed again. Returns
    ``(statuses changed, receipts to reissue)``."""
    changed = reissue = 0
    for first, last in ranges:
        changed += store.execute(
            "UPDATE outbox SET status = 'missing', updated_at = ? WHERE peer = ? "
            "AND status = 'accepted' AND content_type != 3 AND message_id IN "
            "(SELECT message_id FROM channel_sent WHERE peer = ? AND seq BETWEEN ? AND ?)",
            (now, peer, peer, first, last),
        )
        reissue += store.execute(
            "UPDATE channel_sent SET reissue = 1 WHERE peer = ? AND seq BETWEEN ? AND ? "
            "AND receipt IS NOT NULL",
            (peer, first, last),
        )
    return changed, reissue


def reissues(store: Store) -> dict[bytes, list[tuple[int, bytes]]]:
    """Receipts reported missing, to seal again: ``{peer: [(seq, payload)]}``."""
    rows = store.query(
        "SELECT peer, seq, receipt FROM channel_sent WHERE reissue = 1 AND receipt IS NOT NULL "
        "ORDER BY peer, seq"
    )
    out: dict[bytes, list[tuple[int, bytes]]] = {}
    for peer, seq, receipt in rows:
        out.setdefault(bytes(peer), []).append((int(seq), bytes(receipt)))
    return out


def reissued(store: Store, peer: bytes, seq: int) -> None:
    """The receipt sealed under ``seq`` was sealed again (its payload moved to the new one)."""
    store.execute("UPDATE channel_sent SET reissue = 0, receipt = NULL WHERE peer = ? AND seq = ?",
                  (peer, seq))  # fmt: skip


def reset(store: Store, peer: bytes) -> None:
    """A new identity key for ``peer``: a new channel in both directions."""
    for table in ("channels", "channel_sent", "gaps"):
        store.execute(f"DELETE FROM {table} WHERE peer = ?", (peer,))
