"""The relay's storage API: SQLAlchemy Core statements over an ``AsyncEngine``.

Theory of operation:

* The store keeps opaque end-to-end envelopes in one table, ``envelopes``. ``seq`` is a global,
  never-reused insertion counter (SQLite ``AUTOINCREMENT``, a PostgreSQL identity), so ordering
  by ``seq`` is arrival order and an acknowledgement by ``seq`` can never hit a later message.
* A send is stored at most once: the unique key ``(sender, message_id)`` plus
  ``INSERT ... ON CONFLICT DO NOTHING`` make the database, not a prior lookup, decide. A
  re-send is reported as a duplicate carrying the original ``seq``.
* Delivery order for one recipient: ``precedence`` ascending (0 = FLASH first), then ``seq``
  ascending, which is FIFO per channel within a precedence. Expired envelopes are never
  delivered; :func:`purge_expired` deletes them and leaves an ``expiry_notices`` row for each
  sender in the same transaction.
* Most functions take a ``Bind``: an ``AsyncConnection`` runs them inside the caller's
  transaction (open it with :func:`liaison.server.dialect.write_transaction` for read-then-write
  sequences); an ``AsyncEngine`` makes them open and commit their own. Durable sends and acks on
  the hot path go through :class:`liaison.server.writer.GroupCommitWriter`, which batches them
  into one transaction per fsync.
* The write path (dedup lookups, inserts, acks, queue usage) is written once, as synchronous
  functions on a sync ``Connection`` (``*_sync``): the writer runs a whole batch through them
  in one call (in its own thread on SQLite, via ``AsyncConnection.run_sync`` on PostgreSQL),
  and the async functions of the same name are thin ``run_sync`` wrappers around them. Their
  statements are built once (SQL that does not change with the data, lists bound as one
  expanding parameter), since on a batch of a few rows building a statement and computing its
  cache key would cost more than running it.
* Dialect-specific SQL lives in :mod:`liaison.server.dialect`; nothing here is ORM.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias, TypeVar

from sqlalchemy import and_, bindparam, delete, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import ReturningInsert

from liaison.server import dialect
from liaison.server.schema import (
    delivered,
    envelopes,
    expiry_notices,
    one_time_prekeys,
    signed_prekeys,
)

__all__ = [
    "Bind",
    "EnvelopeRow",
    "ExpiryNotice",
    "SignedPrekeys",
    "StoredEnvelope",
    "TakenBundle",
    "add_one_time_prekeys",
    "delete_acked",
    "delete_acked_pairs",
    "delete_acked_pairs_sync",
    "delete_prekeys",
    "delivered_seqs",
    "delivered_seqs_sync",
    "drop_queue",
    "existing_seqs",
    "existing_seqs_sync",
    "forget_expiry_notices",
    "get_signed_prekeys",
    "insert_envelopes",
    "insert_envelopes_sync",
    "one_time_prekey_count",
    "pending_for",
    "purge_cell_queue",
    "purge_expired",
    "queue_usage",
    "queue_usages",
    "queue_usages_sync",
    "store_signed_prekeys",
    "take_bundle",
    "take_expiry_notices",
]

Bind: TypeAlias = AsyncEngine | AsyncConnection
"""A connection (use the caller's transaction) or an engine (open and commit one)."""

# Bound parameters per statement stay well under SQLite's and asyncpg's limits (32766/32767).
_CHUNK = 500
_KEY_CHUNK = 200
_PREKEY_LOCK = b"liaison-otpk"

_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@asynccontextmanager
async def _reading(bind: Bind) -> AsyncIterator[AsyncConnection]:
    if isinstance(bind, AsyncConnection):
        yield bind
    else:
        async with bind.connect() as conn:
            yield conn


@asynccontextmanager
async def _writing(bind: Bind) -> AsyncIterator[AsyncConnection]:
    if isinstance(bind, AsyncConnection):
        yield bind
    else:
        async with dialect.write_transaction(bind) as conn:
            yield conn


@dataclass(frozen=True, slots=True)
class EnvelopeRow:
    """An envelope accepted from a sender, not yet stored. ``expires_at`` is unix seconds."""

    recipient: bytes
    sender: bytes
    message_id: bytes
    precedence: int
    expires_at: int
    received_at_ms: int
    data: bytes

    @property
    def key(self) -> tuple[bytes, bytes]:
        """The deduplication key ``(sender, message_id)``."""
        return (self.sender, self.message_id)


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """A queued envelope as delivered to its recipient."""

    seq: int
    recipient: bytes
    sender: bytes
    message_id: bytes
    precedence: int
    expires_at: int
    received_at_ms: int
    data: bytes


class ExpiryNotice(NamedTuple):
    """An envelope from ``sender`` to ``recipient`` was deleted undelivered: it expired
    (``code`` None: an EXPIRED frame), or the relay dropped it for the reason ``code`` names
    (an ERROR frame with that code and ref = message id; ``revoked``: purged with the queue of
    its revoked recipient, SPEC.md M-REL-20)."""

    sender: bytes
    message_id: bytes
    recipient: bytes
    code: str | None = None


@dataclass(frozen=True, slots=True)
class SignedPrekeys:
    """A cell's current signed X25519 prekey and signed ML-KEM-768 prekey (one row per cell)."""

    cell_id: bytes
    spk_id: int
    spk_public: bytes
    spk_signature: bytes
    kem_id: int
    kem_public: bytes
    kem_signature: bytes
    updated_at_ms: int


class TakenBundle(NamedTuple):
    """What :func:`take_bundle` hands out: the signed prekeys (``None`` if the cell never
    uploaded any), one one-time prekey ``(prekey_id, public)`` or ``None`` when the stock is
    empty, and the size of the stock left afterwards."""

    signed: SignedPrekeys | None
    one_time: tuple[int, bytes] | None
    remaining: int


# --------------------------------------------------------------------------- envelopes

_STORED_COLUMNS = (
    envelopes.c.seq,
    envelopes.c.recipient,
    envelopes.c.sender,
    envelopes.c.message_id,
    envelopes.c.precedence,
    envelopes.c.expires_at,
    envelopes.c.received_at_ms,
    envelopes.c.data,
)


def _envelope_params(row: EnvelopeRow) -> dict[str, Any]:
    return {
        "recipient": row.recipient,
        "sender": row.sender,
        "message_id": row.message_id,
        "precedence": row.precedence,
        "expires_at": row.expires_at,
        "received_at_ms": row.received_at_ms,
        "size": len(row.data),
        "data": row.data,
    }


async def existing_seqs(
    conn: AsyncConnection, keys: Iterable[tuple[bytes, bytes]]
) -> dict[tuple[bytes, bytes], int]:
    """``{(sender, message_id): seq}`` for those of ``keys`` already stored, queued or
    acknowledged (a tombstone in ``delivered``)."""
    return await conn.run_sync(existing_seqs_sync, list(keys))


async def delivered_seqs(
    conn: AsyncConnection, keys: Iterable[tuple[bytes, bytes]]
) -> dict[tuple[bytes, bytes], int]:
    """``{(sender, message_id): seq}`` for those of ``keys`` delivered and acknowledged."""
    return await conn.run_sync(delivered_seqs_sync, list(keys))


async def insert_envelopes(
    conn: AsyncConnection, rows: Sequence[EnvelopeRow]
) -> list[tuple[int, bool]]:
    """Store ``rows``, ignoring any whose ``(sender, message_id)`` is already stored.

    Returns ``(seq, duplicate)`` for each row, in input order. A row is a duplicate when its key
    was stored before this call (queued, or acknowledged and tombstoned) or appears earlier in
    ``rows``; duplicates carry the ``seq`` of the stored copy. Run it inside a transaction and
    acknowledge only after that commits.
    """
    if not rows:
        return []
    return await conn.run_sync(insert_envelopes_sync, rows)


async def queue_usage(bind: Bind, recipient: bytes) -> tuple[int, int]:
    """``(messages, bytes)`` queued for ``recipient`` (expired but unpurged ones included)."""
    return (await queue_usages(bind, [recipient])).get(recipient, (0, 0))


async def queue_usages(bind: Bind, recipients: Iterable[bytes]) -> dict[bytes, tuple[int, int]]:
    """``{recipient: (messages, bytes)}`` for those of ``recipients`` with anything queued."""
    async with _reading(bind) as conn:
        return await conn.run_sync(queue_usages_sync, list(recipients))


async def queue_counts(bind: Bind, recipients: Sequence[bytes]) -> dict[bytes, int]:
    """``{recipient: unexpired envelopes queued}`` for those of ``recipients`` with any (the
    cluster's fallback poll: one grouped query per 500 linked cells)."""
    now = int(time.time())
    counts: dict[bytes, int] = {}
    async with _reading(bind) as conn:
        for chunk in _chunks(recipients):
            stmt = (
                select(envelopes.c.recipient, func.count())
                .where(envelopes.c.recipient.in_(chunk), envelopes.c.expires_at > now)
                .group_by(envelopes.c.recipient)
            )
            for recipient, count in await conn.execute(stmt):
                counts[bytes(recipient)] = int(count)
    return counts


async def queue_depths(bind: Bind) -> dict[int, tuple[int, float]]:
    """``{precedence: (envelopes queued, age of the oldest in seconds)}`` over every queue
    (``/metrics``; one grouped scan of the envelope table per scrape)."""
    now_ms = time.time() * 1000
    stmt = select(
        envelopes.c.precedence, func.count(), func.min(envelopes.c.received_at_ms)
    ).group_by(envelopes.c.precedence)
    async with _reading(bind) as conn:
        rows = (await conn.execute(stmt)).all()
    return {int(p): (int(n), max(0.0, (now_ms - int(oldest)) / 1000)) for p, n, oldest in rows}


# The synchronous twins of the write path. The group-commit writer runs a whole batch as one
# synchronous function on one connection: in its own thread on SQLite (one thread hop per
# batch instead of one per statement), through ``AsyncConnection.run_sync`` on PostgreSQL. The
# async functions above run the same code through ``run_sync``.


def existing_seqs_sync(
    conn: Connection, keys: Iterable[tuple[bytes, bytes]]
) -> dict[tuple[bytes, bytes], int]:
    """:func:`existing_seqs` on a sync connection."""
    wanted = set(keys)
    queued = dialect.rows_with_keys(conn, envelopes, wanted)
    return queued | dialect.rows_with_keys(conn, delivered, wanted - queued.keys())


def delivered_seqs_sync(
    conn: Connection, keys: Iterable[tuple[bytes, bytes]]
) -> dict[tuple[bytes, bytes], int]:
    """:func:`delivered_seqs` on a sync connection."""
    return dialect.rows_with_keys(conn, delivered, set(keys))


@functools.cache
def _insert_envelopes(name: str) -> ReturningInsert[int, bytes, bytes]:
    return dialect.insert_ignore_for(name, envelopes, ("sender", "message_id")).returning(
        envelopes.c.seq, envelopes.c.sender, envelopes.c.message_id
    )


def insert_envelopes_sync(conn: Connection, rows: Sequence[EnvelopeRow]) -> list[tuple[int, bool]]:
    """:func:`insert_envelopes` on a sync connection (one multi-row ``INSERT ... ON CONFLICT
    DO NOTHING RETURNING`` per ``insertmanyvalues`` page, after one tombstone lookup)."""
    if not rows:
        return []
    # Already delivered and acknowledged: acknowledge again, never store twice (M-REL-4).
    tombstones = delivered_seqs_sync(conn, [row.key for row in rows])
    unique: dict[tuple[bytes, bytes], EnvelopeRow] = {}
    for row in rows:
        if row.key not in tombstones:
            unique.setdefault(row.key, row)
    inserted: dict[tuple[bytes, bytes], int] = {}
    stored: dict[tuple[bytes, bytes], int] = dict(tombstones)
    todo = list(unique.values())
    # A key that conflicted but whose row is gone before we read it back (delivered and acked
    # in between, on another node) is inserted again: at-least-once, the recipient drops
    # duplicates. Three rounds can only be exhausted under a pathological race.
    for _ in range(3):
        if not todo:
            break
        stmt = _insert_envelopes(dialect.dialect_name(conn))
        for seq, sender, message_id in conn.execute(stmt, [_envelope_params(r) for r in todo]):
            inserted[(sender, message_id)] = seq
        missing = [r.key for r in todo if r.key not in inserted]
        stored.update(dialect.rows_with_keys(conn, envelopes, missing) if missing else {})
        todo = [r for r in todo if r.key not in inserted and r.key not in stored]
        if not todo:
            break
    else:
        raise RuntimeError("envelopes kept vanishing between insert and read-back")
    out: list[tuple[int, bool]] = []
    first_seen: set[tuple[bytes, bytes]] = set()
    for row in rows:
        key = row.key
        if key in inserted and key not in first_seen:
            out.append((inserted[key], False))
        else:
            out.append((inserted[key] if key in inserted else stored[key], True))
        first_seen.add(key)
    return out


# The write path's statements are built once: building a statement and computing its cache key
# costs more than running it when a batch holds a few rows. Lists are bound as one "expanding"
# parameter each.
_USAGE = (
    select(envelopes.c.recipient, func.count(), func.coalesce(func.sum(envelopes.c.size), 0))
    .where(envelopes.c.recipient.in_(bindparam("recipients", expanding=True)))
    .group_by(envelopes.c.recipient)
)
_OWNERS = select(envelopes.c.seq, envelopes.c.recipient).where(
    envelopes.c.seq.in_(bindparam("seqs", expanding=True))
)
_DELETE_ACKED = (
    delete(envelopes)
    .where(envelopes.c.seq.in_(bindparam("seqs", expanding=True)))
    .returning(
        envelopes.c.seq, envelopes.c.recipient, envelopes.c.sender,
        envelopes.c.message_id, envelopes.c.expires_at, envelopes.c.size,
    )
)  # fmt: skip


def queue_usages_sync(
    conn: Connection, recipients: Iterable[bytes]
) -> dict[bytes, tuple[int, int]]:
    """:func:`queue_usages` on a sync connection."""
    usage: dict[bytes, tuple[int, int]] = {}
    for chunk in _chunks(sorted(set(recipients))):
        for recipient, count, total in conn.execute(_USAGE, {"recipients": chunk}):
            usage[recipient] = (int(count), int(total))
    return usage


def delete_acked_pairs_sync(
    conn: Connection, pairs: Iterable[tuple[bytes, int]]
) -> dict[tuple[bytes, int], int]:
    """:func:`delete_acked_pairs` on a sync connection; also gives each deleted envelope's size
    (``{(recipient, seq): size}``), for quota accounting."""
    wanted = set(pairs)
    owners: dict[int, bytes] = {}
    for chunk in _chunks(sorted({seq for _, seq in wanted})):
        for seq, recipient in conn.execute(_OWNERS, {"seqs": chunk}):
            owners[seq] = recipient
    matched = sorted(seq for seq, recipient in owners.items() if (recipient, seq) in wanted)
    deleted: dict[tuple[bytes, int], int] = {}
    remember = dialect.insert_ignore(conn, delivered, ("sender", "message_id"))
    for chunk in _chunks(matched):
        tombstones = []
        for seq, recipient, sender, message_id, expires_at, size in conn.execute(
            _DELETE_ACKED, {"seqs": chunk}
        ):
            deleted[(recipient, seq)] = size
            tombstones.append(
                {"sender": sender, "message_id": message_id, "seq": seq, "expires_at": expires_at}
            )
        if tombstones:
            conn.execute(remember, tombstones)
    return deleted


async def pending_for(
    bind: Bind,
    recipient: bytes,
    limit: int,
    after_seq: int | None = None,
    *,
    exclude: Collection[int] = (),
    now_s: int | None = None,
) -> list[StoredEnvelope]:
    """Up to ``limit`` unexpired envelopes for ``recipient``, in delivery order.

    Order: precedence ascending (FLASH first), then ``seq`` (arrival order, so FIFO per channel
    within a precedence). ``after_seq`` keeps only envelopes that arrived after it
    (``seq > after_seq``); ``exclude`` skips the given sequence numbers (those already sent on
    this link and not yet acknowledged), so a caller can page through a backlog. Envelopes
    with ``expires_at <= now_s`` (default: the wall clock) are never returned.
    """
    now = int(time.time()) if now_s is None else now_s
    stmt = (
        select(*_STORED_COLUMNS)
        .where(envelopes.c.recipient == recipient, envelopes.c.expires_at > now)
        .order_by(envelopes.c.precedence, envelopes.c.seq)
        .limit(limit)
    )
    if after_seq is not None:
        stmt = stmt.where(envelopes.c.seq > after_seq)
    async with _reading(bind) as conn:
        if exclude:
            stmt = stmt.where(dialect.int_not_in(conn, envelopes.c.seq, exclude))
        result = await conn.execute(stmt)
        return [StoredEnvelope(*row) for row in result]


async def delete_acked(bind: Bind, recipient: bytes, seqs: Iterable[int]) -> int:
    """Delete the envelopes ``seqs`` of ``recipient``'s own queue; return how many went.

    Sequence numbers belonging to another recipient are ignored: a cell cannot delete
    anything but its own queue.
    """
    async with _writing(bind) as conn:
        return len(await delete_acked_pairs(conn, [(recipient, seq) for seq in set(seqs)]))


async def delete_acked_pairs(
    conn: AsyncConnection, pairs: Iterable[tuple[bytes, int]]
) -> set[tuple[bytes, int]]:
    """Acks from many recipients at once: delete each ``(recipient, seq)`` whose envelope
    belongs to that recipient, leaving a tombstone in ``delivered`` for it; return the pairs
    that were deleted (primary-key lookups)."""
    return set(await conn.run_sync(delete_acked_pairs_sync, list(pairs)))


async def purge_expired(
    engine: AsyncEngine, now_s: int, *, limit: int = 5000
) -> list[ExpiryNotice]:
    """Delete up to ``limit`` envelopes with ``expires_at <= now_s`` and, in the same
    transaction, record an expiry notice for each one's sender. Returns what was purged (oldest
    expiry first); call again while it returns ``limit`` notices."""
    async with dialect.write_transaction(engine) as conn:
        victims = (
            select(envelopes.c.seq)
            .where(envelopes.c.expires_at <= now_s)
            .order_by(envelopes.c.expires_at, envelopes.c.seq)
            .limit(limit)
        )
        stmt = (
            delete(envelopes)
            .where(envelopes.c.seq.in_(victims.scalar_subquery()))
            .returning(
                envelopes.c.seq, envelopes.c.sender, envelopes.c.message_id, envelopes.c.recipient
            )
        )
        purged = sorted((await conn.execute(stmt)).all())
        await conn.execute(delete(delivered).where(delivered.c.expires_at <= now_s))
        notices = [ExpiryNotice(sender, mid, rcpt) for _, sender, mid, rcpt in purged]
        if notices:
            rows = [n._asdict() | {"created_at_ms": now_s * 1000} for n in notices]
            await conn.execute(expiry_notices.insert(), rows)
        return notices


async def take_expiry_notices(
    bind: Bind, sender: bytes, *, limit: int = 1000
) -> list[ExpiryNotice]:
    """Remove and return up to ``limit`` expiry notices for ``sender``, oldest first.

    Taking is final: call it when the notices can be handed to the sender's live link.
    """
    async with _writing(bind) as conn:
        ids = (
            select(expiry_notices.c.id)
            .where(expiry_notices.c.sender == sender)
            .order_by(expiry_notices.c.id)
            .limit(limit)
        )
        stmt = (
            delete(expiry_notices)
            .where(expiry_notices.c.id.in_(ids.scalar_subquery()))
            .returning(
                expiry_notices.c.id,
                expiry_notices.c.sender,
                expiry_notices.c.message_id,
                expiry_notices.c.recipient,
                expiry_notices.c.error_code,
            )
        )
        rows = sorted((await conn.execute(stmt)).all())
        return [ExpiryNotice(s, m, r, code) for _, s, m, r, code in rows]


async def forget_expiry_notices(bind: Bind, told: Iterable[tuple[bytes, bytes]]) -> int:
    """Delete the notices for these ``(sender, message_id)`` pairs (the senders were told
    directly, on their live link, right after :func:`purge_expired`); return how many went."""
    deleted = 0
    col = expiry_notices.c
    async with _writing(bind) as conn:
        for chunk in _chunks(sorted(set(told)), _KEY_CHUNK):
            match = or_(*(and_(col.sender == s, col.message_id == m) for s, m in chunk))
            deleted += (await conn.execute(delete(expiry_notices).where(match))).rowcount
    return deleted


async def drop_queue(bind: Bind, recipient: bytes, code: str, now_ms: int) -> list[ExpiryNotice]:
    """Delete every envelope queued for ``recipient`` and, in the same transaction, record a
    notice with ``code`` for each one's sender (M-REL-20: the sender learns its accepted
    message will never be delivered). Returns the notices recorded, in queue order."""
    async with _writing(bind) as conn:
        stmt = (
            delete(envelopes)
            .where(envelopes.c.recipient == recipient)
            .returning(envelopes.c.seq, envelopes.c.sender, envelopes.c.message_id)
        )
        dropped = sorted((await conn.execute(stmt)).all())
        notices = [ExpiryNotice(bytes(s), bytes(m), recipient, code) for _, s, m in dropped]
        for chunk in _chunks(notices):
            rows = [
                {"sender": n.sender, "message_id": n.message_id, "recipient": n.recipient,
                 "error_code": n.code, "created_at_ms": now_ms}
                for n in chunk
            ]  # fmt: skip
            await conn.execute(expiry_notices.insert(), rows)
        return notices


async def purge_cell_queue(bind: Bind, cell_id: bytes) -> int:
    """Revocation: delete every envelope queued for ``cell_id`` (telling each sender, see
    :func:`drop_queue`) and the notices it would have collected; return the number of
    envelopes deleted. Envelopes the cell sent before its revocation stay queued for their
    recipients (they were authentic when sent)."""
    async with _writing(bind) as conn:
        await conn.execute(delete(expiry_notices).where(expiry_notices.c.sender == cell_id))
        return len(await drop_queue(conn, cell_id, "revoked", int(time.time() * 1000)))


# --------------------------------------------------------------------------- prekeys

_SIGNED_COLUMNS = (
    signed_prekeys.c.cell_id,
    signed_prekeys.c.spk_id,
    signed_prekeys.c.spk_public,
    signed_prekeys.c.spk_signature,
    signed_prekeys.c.kem_id,
    signed_prekeys.c.kem_public,
    signed_prekeys.c.kem_signature,
    signed_prekeys.c.updated_at_ms,
)


async def store_signed_prekeys(bind: Bind, prekeys: SignedPrekeys) -> None:
    """Insert or replace the cell's signed prekeys (the cell must exist in ``cells``)."""
    values = {column.name: getattr(prekeys, column.name) for column in _SIGNED_COLUMNS}
    async with _writing(bind) as conn:
        await conn.execute(dialect.upsert(conn, signed_prekeys, ("cell_id",), values))


async def get_signed_prekeys(bind: Bind, cell_id: bytes) -> SignedPrekeys | None:
    """The cell's signed prekeys, or ``None`` if it never uploaded any."""
    stmt = select(*_SIGNED_COLUMNS).where(signed_prekeys.c.cell_id == cell_id)
    async with _reading(bind) as conn:
        row = (await conn.execute(stmt)).first()
    return None if row is None else SignedPrekeys(*row)


async def one_time_prekey_count(bind: Bind, cell_id: bytes) -> int:
    """How many one-time prekeys the cell has in stock."""
    stmt = select(func.count()).where(one_time_prekeys.c.cell_id == cell_id)
    async with _reading(bind) as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def add_one_time_prekeys(
    bind: Bind, cell_id: bytes, prekeys: Sequence[tuple[int, bytes]], max_total: int
) -> int:
    """Add ``(prekey_id, public)`` pairs to the cell's stock; return how many were stored.

    Ids already in stock (or repeated in ``prekeys``) are ignored, and the stock never grows
    past ``max_total``: the first new pairs that fit are kept, in input order. With a
    connection, call it inside :func:`~liaison.server.dialect.write_transaction` so that the
    count and the insert agree; with an engine it opens such a transaction itself.
    """
    async with _writing(bind) as conn:
        await dialect.lock_keys(conn, _PREKEY_LOCK, [cell_id])
        room = max_total - await one_time_prekey_count(conn, cell_id)
        if room <= 0 or not prekeys:
            return 0
        existing: set[int] = set()
        for chunk in _chunks(sorted({pid for pid, _ in prekeys})):
            stmt = select(one_time_prekeys.c.prekey_id).where(
                one_time_prekeys.c.cell_id == cell_id, one_time_prekeys.c.prekey_id.in_(chunk)
            )
            existing.update((await conn.execute(stmt)).scalars())
        fresh: dict[int, bytes] = {}
        for pid, public in prekeys:
            if len(fresh) == room:
                break
            if pid not in existing and pid not in fresh:
                fresh[pid] = public
        if not fresh:
            return 0
        insert = dialect.insert_ignore(conn, one_time_prekeys, ("cell_id", "prekey_id"))
        params = [{"cell_id": cell_id, "prekey_id": k, "public": v} for k, v in fresh.items()]
        result = await conn.execute(insert.returning(one_time_prekeys.c.prekey_id), params)
        return len(result.all())


async def take_bundle(engine: AsyncEngine, cell_id: bytes) -> TakenBundle:
    """Atomically consume one one-time prekey (the lowest id) and return the cell's bundle.

    ``signed`` is ``None`` if the cell has no signed prekeys (nothing is consumed then). With an
    empty stock ``one_time`` is ``None`` and ``remaining`` is 0. Concurrent callers each get a
    different prekey (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: one writer at a time).
    """
    async with dialect.write_transaction(engine) as conn:
        signed = await get_signed_prekeys(conn, cell_id)
        if signed is None:
            return TakenBundle(None, None, await one_time_prekey_count(conn, cell_id))
        lowest = dialect.skip_locked(
            conn,
            select(one_time_prekeys.c.prekey_id)
            .where(one_time_prekeys.c.cell_id == cell_id)
            .order_by(one_time_prekeys.c.prekey_id)
            .limit(1),
        )
        stmt = (
            delete(one_time_prekeys)
            .where(
                one_time_prekeys.c.cell_id == cell_id,
                one_time_prekeys.c.prekey_id == lowest.scalar_subquery(),
            )
            .returning(one_time_prekeys.c.prekey_id, one_time_prekeys.c.public)
        )
        row = (await conn.execute(stmt)).first()
        one_time = None if row is None else (int(row[0]), bytes(row[1]))
        return TakenBundle(signed, one_time, await one_time_prekey_count(conn, cell_id))


async def delete_prekeys(bind: Bind, cell_id: bytes) -> None:
    """Revocation: remove the cell's signed and one-time prekeys so no new session can start."""
    async with _writing(bind) as conn:
        await conn.execute(delete(one_time_prekeys).where(one_time_prekeys.c.cell_id == cell_id))
        await conn.execute(delete(signed_prekeys).where(signed_prekeys.c.cell_id == cell_id))
