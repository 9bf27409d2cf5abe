"""Engine creation and the dialect-specific bits of the store, kept in one place.

* :func:`create_engine` is the relay's async engine (aiosqlite or asyncpg).
* :func:`create_sqlite_writer_engine` is a *sync* pysqlite engine on the same SQLite file with
  the same pragmas, for the group-commit writer's dedicated thread: a whole batch then runs as
  one synchronous function, one thread hop per batch instead of one per statement.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, LargeBinary, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "create_engine",
    "create_sqlite_writer_engine",
    "is_file_sqlite",
    "is_sqlite",
    "sync_url",
]

_BUSY_TIMEOUT_S = 30
# Envelopes are at least 4096 bytes (the smallest padding bucket): with SQLite's default 4 KiB
# pages every one of them spills into an overflow page, so each stored or deleted envelope
# writes two pages or more to the WAL. 16 KiB pages hold three such envelopes each: about
# 1.5x the rows per second for the group-commit writer on the same disk (bench/writer.py).
_PAGE_SIZE = 16384


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_file_sqlite(url: str | URL) -> bool:
    """A SQLite database in a file, which a second connection (another thread's) can open;
    not ``:memory:`` or a shared-cache memory database."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return False
    return u.query.get("mode") != "memory" and not u.database.startswith("file::memory:")


def sync_url(url: str) -> str:
    """The same database through the async driver Alembic's async env uses (unchanged)."""
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Only a new, empty database takes it (before WAL mode writes the header); a no-op after.
    cursor.execute(f"PRAGMA page_size={_PAGE_SIZE}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    """An async engine. SQLite gets WAL, ``synchronous=FULL`` (every commit is fsync'd: the
    relay acknowledges a send only after its batch commits), foreign keys, and 16 KiB pages
    when the database file is created through it (``liaison server db upgrade`` on a new
    file; an existing database keeps its page size)."""
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_S})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


class _Blob(LargeBinary):
    """``LargeBinary`` handed to the stdlib driver as the ``bytes`` it is (``sqlite3`` stores
    ``bytes`` as a BLOB). SQLAlchemy's default wraps every value in ``sqlite3.Binary``, a
    ``memoryview``, which the driver then binds more slowly: ≈1.5 µs per 4 KiB envelope row."""

    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None


class SQLiteWriterDialect(SQLiteDialect_pysqlite):
    """The stdlib ``sqlite3`` dialect, binding ``LargeBinary`` values as plain ``bytes``
    (``sqlite+liaison_writer://``; the dialect's name is still ``sqlite``)."""

    supports_statement_cache = True
    colspecs = {**SQLiteDialect_pysqlite.colspecs, LargeBinary: _Blob}  # noqa: RUF012


registry.register("sqlite.liaison_writer", __name__, "SQLiteWriterDialect")


def create_sqlite_writer_engine(url: str | URL) -> Engine:
    """A sync engine (the stdlib ``sqlite3`` driver, :class:`SQLiteWriterDialect`) on the file
    of the SQLite ``url`` (any driver), with :func:`create_engine`'s pragmas. No pool: its one
    user (the group-commit writer's thread) holds one connection for its lifetime and
    reconnects after an error."""
    target = make_url(url)
    if not is_file_sqlite(target):
        raise ValueError("the writer's own SQLite connection needs a database file")
    engine = create_sync_engine(
        target.set(drivername="sqlite+liaison_writer"),
        connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False},
        poolclass=NullPool,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine
