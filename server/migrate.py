"""Schema migrations (Alembic, shipped in ``liaison.migrations``) and the start-up schema check.

Theory of operation:

* The Alembic environment lives in the installed package: ``script_location`` is the directory
  of :mod:`liaison.migrations` and the scripts are in its ``versions`` subpackage. No
  ``alembic.ini``: :func:`alembic_config` builds the config in code.
* Every operation opens one async connection with :func:`liaison.server.db.create_engine`'s
  engine and runs Alembic inside ``AsyncConnection.run_sync``, handing the sync connection to
  ``env.py``. The whole upgrade or downgrade is **one transaction**: PostgreSQL has
  transactional DDL; on SQLite the transaction is opened explicitly (``BEGIN IMMEDIATE``), since
  Python's sqlite3 would otherwise run DDL outside it. On SQLite, foreign-key enforcement is
  switched off for the migration (batch mode rebuilds tables, and dropping a referenced table
  with enforcement on would cascade) and ``PRAGMA foreign_key_check`` must come back empty
  before the commit. On PostgreSQL an advisory lock stops two nodes migrating at once.
* ``*_async`` functions are awaited from async code; the plain ones are for sync code (the CLI)
  and work whether or not an event loop is already running in the calling thread.
* :func:`check_schema` is what the relay runs at start-up: it refuses an empty database, one
  behind the code (run ``liaison server db upgrade``), and one migrated by a newer Liaison.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import liaison.migrations
from liaison.server import dialect
from liaison.server.db import create_engine

__all__ = [
    "MIGRATIONS_DIR",
    "SchemaMismatch",
    "alembic_config",
    "check_schema",
    "current_revision",
    "current_revision_async",
    "downgrade",
    "downgrade_async",
    "head_revision",
    "stamp",
    "stamp_async",
    "upgrade",
    "upgrade_async",
]

MIGRATIONS_DIR = Path(liaison.migrations.__file__).parent
_MIGRATION_LOCK = b"liaison-migrate"

_T = TypeVar("_T")


class SchemaMismatch(Exception):
    """The database schema is not the one this code needs; ``message`` says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the installed migrations (``url`` only matters to the ``alembic``
    CLI and offline SQL rendering; this module passes a live connection instead)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _script(config: Config | None) -> ScriptDirectory:
    return ScriptDirectory.from_config(config or alembic_config())


def head_revision(*, config: Config | None = None) -> str:
    """The newest revision this code ships (the migrations are linear: one head)."""
    head = _script(config).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a first migration
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR / 'versions'}")
    return head


async def _with_connection(
    target: str | AsyncEngine, work: Callable[[AsyncConnection], Awaitable[_T]]
) -> _T:
    engine = create_engine(target) if isinstance(target, str) else target
    try:
        async with engine.connect() as conn:
            return await work(conn)
    finally:
        if isinstance(target, str):
            await engine.dispose()


async def _alembic(
    target: str | AsyncEngine, action: Callable[[Config], None], config: Config | None
) -> None:
    """Run one Alembic command in one transaction on ``target`` (see the module docstring)."""

    def invoke(sync_conn: Connection) -> None:
        cfg = config or alembic_config()
        cfg.attributes["connection"] = sync_conn
        action(cfg)

    async def work(conn: AsyncConnection) -> None:
        sqlite = dialect.dialect_name(conn) == "sqlite"
        if sqlite:
            # Only effective outside a transaction, hence before BEGIN; restored below.
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.commit()
        try:
            async with conn.begin():
                if sqlite:
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    await dialect.lock_keys(conn, _MIGRATION_LOCK, [b"schema"])
                await conn.run_sync(invoke)
                if sqlite:
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                    if broken:
                        raise RuntimeError(f"migration left dangling foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                await conn.commit()

    await _with_connection(target, work)


async def upgrade_async(
    target: str | AsyncEngine, revision: str = "head", *, config: Config | None = None
) -> None:
    """Migrate the database at ``target`` (a URL or an engine) up to ``revision``.

    ``config`` defaults to :func:`alembic_config` (the installed migrations)."""
    await _alembic(target, lambda cfg: command.upgrade(cfg, revision), config)


async def downgrade_async(
    target: str | AsyncEngine, revision: str, *, config: Config | None = None
) -> None:
    """Migrate the database down to ``revision`` (``"base"`` drops every Liaison table)."""
    await _alembic(target, lambda cfg: command.downgrade(cfg, revision), config)


async def stamp_async(
    target: str | AsyncEngine, revision: str, *, config: Config | None = None
) -> None:
    """Record ``revision`` as current without running migrations (recovery and tests only)."""
    await _alembic(target, lambda cfg: command.stamp(cfg, revision, purge=True), config)


def _current_heads(sync_conn: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(sync_conn).get_current_heads())


async def _heads(target: str | AsyncEngine) -> tuple[str, ...]:
    async def work(conn: AsyncConnection) -> tuple[str, ...]:
        return await conn.run_sync(_current_heads)

    return await _with_connection(target, work)


async def current_revision_async(target: str | AsyncEngine) -> str | None:
    """The database's revision, or ``None`` if it was never migrated."""
    heads = await _heads(target)
    if len(heads) > 1:
        raise SchemaMismatch(f"the database records several revisions {heads}; expected one")
    return heads[0] if heads else None


async def check_schema(engine: AsyncEngine, *, config: Config | None = None) -> None:
    """Raise :class:`SchemaMismatch` unless the database is exactly at :func:`head_revision`.

    Run it at start-up, before serving: an empty or older database needs
    ``liaison server db upgrade``; a database from a newer Liaison needs a newer relay."""
    heads = await _heads(engine)
    script = _script(config)
    head = script.get_current_head()
    if heads == (head,):
        return
    if not heads:
        raise SchemaMismatch(
            "the database has no Liaison schema (it is empty or was never migrated): "
            "run `liaison server db upgrade`"
        )
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = [h for h in heads if h not in known]
    if unknown:
        raise SchemaMismatch(
            f"this database was migrated by a newer Liaison (revision {', '.join(unknown)} is "
            f"unknown to this version, which stops at {head}); upgrade the relay"
        )
    raise SchemaMismatch(
        f"the database schema is at revision {', '.join(heads)} but this relay needs {head}: "
        "run `liaison server db upgrade`"
    )


def _blocking(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, even when this thread already runs an
    event loop (then in a helper thread with its own loop, blocking the caller)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="liaison-migrate") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def upgrade(url: str, revision: str = "head") -> None:
    """Sync :func:`upgrade_async` (what ``liaison server db upgrade`` calls)."""
    _blocking(lambda: upgrade_async(url, revision))


def downgrade(url: str, revision: str) -> None:
    """Sync :func:`downgrade_async`."""
    _blocking(lambda: downgrade_async(url, revision))


def stamp(url: str, revision: str) -> None:
    """Sync :func:`stamp_async`."""
    _blocking(lambda: stamp_async(url, revision))


def current_revision(url: str) -> str | None:
    """Sync :func:`current_revision_async`."""
    return _blocking(lambda: current_revision_async(url))
