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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    all_,
    bindparam,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

__all__ = [
    "advisory_key",
    "dialect_name",
    "insert_ignore",
    "int_not_in",
    "lock_keys",
    "skip_locked",
    "upsert",
    "write_transaction",
]

_SUPPORTED = ("sqlite", "postgresql")


def dialect_name(bind: AsyncConnection | AsyncEngine) -> str:
    """``"sqlite"`` or ``"postgresql"``; any other database is refused here, once."""
    name = bind.dialect.name
    if name not in _SUPPORTED:
        raise NotImplementedError(f"Liaison's store supports SQLite and PostgreSQL, not {name}")
    return name


def _insert(bind: AsyncConnection, table: Table) -> sqlite.Insert | postgresql.Insert:
    if dialect_name(bind) == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def insert_ignore(bind: AsyncConnection, table: Table, conflict_columns: Sequence[str]) -> Insert:
    """``INSERT ... ON CONFLICT (conflict_columns) DO NOTHING`` for ``bind``'s dialect."""
    return _insert(bind, table).on_conflict_do_nothing(index_elements=list(conflict_columns))


def upsert(
    bind: AsyncConnection, table: Table, conflict_columns: Sequence[str], values: dict[str, Any]
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
