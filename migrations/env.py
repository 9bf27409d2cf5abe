"""Alembic environment for the relay's schema, shipped inside ``liaison.migrations``.

Theory of operation: there is no ``alembic.ini``. :mod:`liaison.server.migrate` builds the
:class:`alembic.config.Config` in code, opens an async connection with
:func:`liaison.server.db.create_engine` (the relay's own engine, with its SQLite pragmas), and
hands the synchronous side of that connection to this script in
``config.attributes["connection"]`` from inside ``AsyncConnection.run_sync``. The caller owns
the transaction, so a whole upgrade commits or rolls back as one unit (on SQLite too).

Without a connection attribute (someone ran the ``alembic`` CLI against a config that names
``sqlalchemy.url``) this script opens its own async engine, or renders SQL in offline mode.
SQLite cannot ``ALTER`` most things, so migrations render in batch mode there
(``render_as_batch``: copy-and-move tables); ``target_metadata`` is
:data:`liaison.server.schema.metadata`, the single source of truth for autogenerate.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from liaison.server.db import create_engine, is_sqlite
from liaison.server.schema import metadata

config = context.config
target_metadata = metadata


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online_async(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run_with)
            await conn.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """Render the migration as SQL text (``alembic upgrade --sql``)."""
    url = config.get_main_option("sqlalchemy.url") or ""
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=is_sqlite(url) if url else False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against the caller's connection if given, else against ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run_with(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass a connection or set sqlalchemy.url")
    asyncio.run(_run_online_async(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
