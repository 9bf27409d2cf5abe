"""Everything in the store that differs between SQLite and PostgreSQL, in one place.

Theory of operation:

* **Insert-or-ignore and upsert** use each dialect's own ``INSERT ... ON CONFLICT`` construct
  (``sqlalchemy.dialects.sqlite.insert`` / ``sqlalchemy.dialects.postgresql.insert``); the SQL
  is the same on both, only the construct's import differs.
* **Write transactions.** Python's ``sqlite3`` module (under aiosqlite) only sends ``BEGIN``
  lazily, right before the first INSERT/UPDATE/DELETE, so a SELECT at the start of a
  "transaction" would read outside it. :func:`write_transaction` therefore opens every SQLite
  write transaction with ``BEGIN IMMEDIATE``: the database write lock is taken up front (waiting
  up to ``busy_timeout``), every read inside sees a stable snapshot, and a read-then-write
  transaction can never fail with ``SQLITE_BUSY_SNAPSHOT``. SQLite has one writer anyway.
  On PostgreSQL (read committed) :func:`write_transaction` is a plain transaction.
* **Row-level serialisation on PostgreSQL.** Where a transaction must read-then-write a count
  exactly (queue quotas, the one-time-prekey cap) and several relay nodes may race,
  :func:`lock_keys` takes transaction-scoped advisory locks, always in ascending key order so
  that two transactions cannot deadlock on them. On SQLite the ``BEGIN IMMEDIATE`` write lock
  already serialises all writers, so it is a no-op there.
* **Excluding a large set of integers** (``seq NOT IN``) binds the whole set as ONE parameter
  (:func:`int_not_in`: a ``BIGINT[]`` on PostgreSQL, a JSON array read by ``json_each`` on
  SQLite), so its size is not limited by the drivers' 32k bound parameters.
* **Consuming one row of a stock** (one-time prekeys): :func:`skip_locked` adds
  ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so that concurrent consumers each get a different row
  without waiting on each other; SQLite needs nothing (single writer).
* **Looking up many ``(sender, message_id)`` keys at once** (deduplication on the write path):
  :func:`rows_with_keys` joins the table with the keys in a statement whose SQL does not depend
  on the keys, so SQLAlchemy compiles it once, instead of an ``(a = ? AND b = ?) OR ...``
  expression built and compiled anew for every chunk (≈40 µs per key). PostgreSQL joins
  ``unnest`` of two ``bytea[]`` parameters. SQLite (no array type, and a row-value ``IN
  (VALUES ...)`` is planned as a table scan) joins a ``SELECT ?, ? UNION ALL ...`` CTE, padded
  to one of a few fixed sizes; both are one unique-index probe per key.
* **One node of many** (the expiry sweeper): :func:`try_session_lock` is PostgreSQL's
  session-level ``pg_try_advisory_lock``: one node holds it for as long as its connection
  lives, and the next node to ask gets it when that node dies. SQLite serves one node.
* **Change detection on SQLite.** :func:`data_version` reads ``PRAGMA data_version``, which
  changes exactly when *another* connection has committed to the database since this
  connection last looked: the writer's in-memory quota counters use it to notice writes made
  behind its back (expiry and revocation purges, a second writer) and reload.
* **Sync and async.** The helpers here take a sync :class:`~sqlalchemy.engine.Connection` or an
  :class:`~sqlalchemy.ext.asyncio.AsyncConnection` where it makes sense: the group-commit
  writer runs whole batches as synchronous functions (in its own thread on SQLite, through
  ``AsyncConnection.run_sync`` on PostgreSQL).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    LargeBinary,
    Select,
    Table,
    all_,
    and_,
    bindparam,
    func,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

__all__ = [
    "advisory_key",
    "begin_immediate",
    "data_version",
    "dialect_name",
    "insert_ignore",
    "insert_ignore_for",
    "int_not_in",
    "lock_keys",
    "lock_keys_sync",
    "rows_with_keys",
    "skip_locked",
    "try_session_lock",
    "upsert",
    "write_transaction",
]

_SUPPORTED = ("sqlite", "postgresql")
_BYTEA_ARRAY = postgresql.ARRAY(LargeBinary)

AnyConnection = Connection | AsyncConnection


def dialect_name(bind: AnyConnection | AsyncEngine | Engine) -> str:
    """``"sqlite"`` or ``"postgresql"``; any other database is refused here, once."""
    name = bind.dialect.name
    if name not in _SUPPORTED:
        raise NotImplementedError(f"Liaison's store supports SQLite and PostgreSQL, not {name}")
    return name


def _insert(bind: AnyConnection, table: Table) -> sqlite.Insert | postgresql.Insert:
    if dialect_name(bind) == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def insert_ignore(bind: AnyConnection, table: Table, conflict_columns: Sequence[str]) -> Insert:
    """``INSERT ... ON CONFLICT (conflict_columns) DO NOTHING`` for ``bind``'s dialect.

    The statement is built once per dialect, table and columns (statements are immutable): on
    the write path, building one and computing its cache key costs more than running it."""
    return insert_ignore_for(dialect_name(bind), table, tuple(conflict_columns))


@functools.cache
def insert_ignore_for(name: str, table: Table, conflict_columns: tuple[str, ...]) -> Insert:
    """:func:`insert_ignore` for the dialect called ``name`` (``"sqlite"``, ``"postgresql"``)."""
    insert = sqlite.insert(table) if name == "sqlite" else postgresql.insert(table)
    return insert.on_conflict_do_nothing(index_elements=list(conflict_columns))


def upsert(
    bind: AnyConnection, table: Table, conflict_columns: Sequence[str], values: dict[str, Any]
) -> Insert:
    """``INSERT ... ON CONFLICT (conflict_columns) DO UPDATE`` setting every other column of
    ``values``: one row per key, last writer wins."""
    stmt = _insert(bind, table).values(values)
    updates = {k: v for k, v in values.items() if k not in conflict_columns}
    return stmt.on_conflict_do_update(index_elements=list(conflict_columns), set_=updates)


def skip_locked(bind: AsyncConnection, stmt: Select[Any]) -> Select[Any]:
    """``stmt FOR UPDATE SKIP LOCKED`` on PostgreSQL; unchanged on SQLite."""
    if dialect_name(bind) == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


def int_not_in(
    bind: AsyncConnection, column: ColumnElement[int], values: Collection[int]
) -> ColumnElement[bool]:
    """``column NOT IN values`` with ``values`` bound as a single parameter."""
    if dialect_name(bind) == "postgresql":
        array = bindparam(None, list(values), type_=postgresql.ARRAY(BigInteger))
        return column != all_(array)
    items: Select[Any] = select(literal_column("value")).select_from(
        func.json_each(bindparam(None, json.dumps(list(values))))
    )
    return column.not_in(items)


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that commits on normal exit and rolls back on error.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (see the module docstring), so
    reads inside it are consistent with its writes. Use it for any read-then-write sequence.
    """
    async with engine.begin() as conn:
        if dialect_name(conn) == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


def advisory_key(namespace: bytes, key: bytes) -> int:
    """A signed 64-bit advisory-lock key for ``key`` within ``namespace``."""
    digest = hashlib.blake2b(key, digest_size=8, person=namespace[:16]).digest()
    return int.from_bytes(digest, "big", signed=True)


async def try_session_lock(conn: AsyncConnection, namespace: bytes, key: bytes) -> bool:
    """Take a lock held for ``conn``'s whole session, if nobody holds it: PostgreSQL's
    ``pg_try_advisory_lock`` (released when the session ends, so a dead node's role passes to
    the next node that asks). SQLite has one relay process per database file: always True."""
    if dialect_name(conn) != "postgresql":
        return True
    result = await conn.execute(
        select(func.pg_try_advisory_lock(bindparam("key", advisory_key(namespace, key))))
    )
    held = bool(result.scalar())
    await conn.commit()
    return held


_LOCK_MANY = text(
    "SELECT pg_advisory_xact_lock(k) FROM unnest(:keys) WITH ORDINALITY AS t(k, i) ORDER BY i"
).bindparams(bindparam("keys", type_=postgresql.ARRAY(BigInteger)))


async def lock_keys(conn: AsyncConnection, namespace: bytes, keys: Iterable[bytes]) -> None:
    """Serialise transactions that touch the same ``keys`` until this transaction ends.

    PostgreSQL: ``pg_advisory_xact_lock`` on each key's 64-bit hash, in ascending order (a
    consistent order, so no deadlock between two callers). SQLite: nothing to do inside a
    :func:`write_transaction`, which already holds the database write lock.
    """
    if dialect_name(conn) != "postgresql":
        return
    ordered = sorted({advisory_key(namespace, k) for k in keys})
    if ordered:
        await conn.execute(_LOCK_MANY, {"keys": ordered})


def lock_keys_sync(conn: Connection, namespace: bytes, keys: Iterable[bytes]) -> None:
    """:func:`lock_keys` on a sync connection (e.g. inside ``AsyncConnection.run_sync``)."""
    if dialect_name(conn) != "postgresql":
        return
    ordered = sorted({advisory_key(namespace, k) for k in keys})
    if ordered:
        conn.execute(_LOCK_MANY, {"keys": ordered})


def begin_immediate(conn: Connection) -> None:
    """Make the transaction just begun on a sync SQLite ``conn`` take the write lock now
    (``BEGIN IMMEDIATE``, see the module docstring); call it right after ``conn.begin()``.
    Sent to the driver directly: transaction control, with no result to process."""
    conn.connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]


def data_version(conn: Connection) -> int:
    """SQLite ``PRAGMA data_version``: it differs from the previous reading on the same
    connection exactly when another connection has committed a change in between. (Asked of
    the driver directly, like :func:`begin_immediate`: it runs once per batch.)"""
    driver = conn.connection.driver_connection
    return int(driver.execute("PRAGMA data_version").fetchone()[0])  # type: ignore[union-attr]


# --------------------------------------------------------------------------- key lookups

_PG_KEY_CHUNK = 10_000  # keys per unnest() join (two array parameters, no bound-count limit)
# SQLite: keys per statement, padded up to one of these sizes (repeating a key is harmless) so
# that only a handful of statements exist and each is compiled once; a compound SELECT may have
# at most 500 terms.
_SQLITE_KEY_SIZES = (1, 4, 16, 64, 256)


@functools.cache
def _pg_rows_with_keys(table: Table) -> Select[Any]:
    wanted = (
        func.unnest(bindparam("senders", type_=_BYTEA_ARRAY), bindparam("ids", type_=_BYTEA_ARRAY))
        .table_valued("sender", "message_id")
        .render_derived(name="wanted")
    )
    match = and_(table.c.sender == wanted.c.sender, table.c.message_id == wanted.c.message_id)
    return select(table.c.sender, table.c.message_id, table.c.seq).join_from(table, wanted, match)


@functools.cache
def _sqlite_rows_with_keys(table: Table, size: int) -> Select[Any]:
    terms = [
        select(
            bindparam(f"s{i}", type_=LargeBinary).label("sender"),
            bindparam(f"m{i}", type_=LargeBinary).label("message_id"),
        )
        for i in range(size)
    ]
    wanted = (terms[0] if size == 1 else union_all(*terms)).cte("wanted")
    match = and_(table.c.sender == wanted.c.sender, table.c.message_id == wanted.c.message_id)
    return select(table.c.sender, table.c.message_id, table.c.seq).join_from(wanted, table, match)


def rows_with_keys(
    conn: Connection, table: Table, keys: Collection[tuple[bytes, bytes]]
) -> dict[tuple[bytes, bytes], int]:
    """``{(sender, message_id): seq}`` for the rows of ``table`` (``envelopes`` or
    ``delivered``: columns ``sender``, ``message_id``, ``seq``) whose key is among ``keys``.

    One unique-index probe per key, in statements whose SQL does not depend on the keys:
    PostgreSQL joins ``unnest`` of two ``bytea[]`` parameters; SQLite joins a
    ``WITH wanted AS (SELECT ?, ? UNION ALL ...)`` of a few fixed sizes (see the module
    docstring)."""
    found: dict[tuple[bytes, bytes], int] = {}
    ordered = sorted(set(keys))
    if dialect_name(conn) == "postgresql":
        for start in range(0, len(ordered), _PG_KEY_CHUNK):
            chunk = ordered[start : start + _PG_KEY_CHUNK]
            arrays = {"senders": [s for s, _ in chunk], "ids": [m for _, m in chunk]}
            for sender, message_id, seq in conn.execute(_pg_rows_with_keys(table), arrays):
                found[(sender, message_id)] = seq
        return found
    largest = _SQLITE_KEY_SIZES[-1]
    for start in range(0, len(ordered), largest):
        chunk = ordered[start : start + largest]
        size = next(n for n in _SQLITE_KEY_SIZES if n >= len(chunk))
        chunk += [chunk[-1]] * (size - len(chunk))
        params: dict[str, bytes] = {}
        for i, (sender, message_id) in enumerate(chunk):
            params[f"s{i}"] = sender
            params[f"m{i}"] = message_id
        for sender, message_id, seq in conn.execute(_sqlite_rows_with_keys(table, size), params):
            found[(sender, message_id)] = seq
    return found
