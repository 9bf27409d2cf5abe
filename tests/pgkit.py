"""Private PostgreSQL databases for tests, on the server at ``LIAISON_TEST_POSTGRES_URL``
(default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``).

:func:`postgres_database` creates a uniquely named database and drops it afterwards. When the
server cannot be reached the test is skipped with the reason, or fails when
``LIAISON_TEST_REQUIRE_POSTGRES=1`` (``make reliability`` sets it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["POSTGRES_URL", "postgres_database", "postgres_unreachable"]

POSTGRES_URL = os.environ.get(
    "LIAISON_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
_probe: dict[str, str | None] = {}


async def postgres_unreachable() -> str | None:
    """``None`` if the PostgreSQL server answers, else why not (probed once per process)."""
    if "reason" not in _probe:
        admin = create_async_engine(POSTGRES_URL, connect_args={"timeout": 3})
        try:
            async with admin.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
            _probe["reason"] = None
        except Exception as exc:
            _probe["reason"] = f"PostgreSQL unreachable at {POSTGRES_URL}: {exc!r}"[:300]
        finally:
            await admin.dispose()
    return _probe["reason"]


@asynccontextmanager
async def postgres_database(prefix: str = "liaison_test") -> AsyncIterator[str]:
    """The URL of a new, empty database private to the caller, dropped afterwards."""
    reason = await postgres_unreachable()
    if reason is not None:
        if os.environ.get("LIAISON_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()
