"""Real databases for the server tests — no mocks.

``db_url`` is parametrized over ``sqlite`` (a fresh file in the test's temp directory) and
``postgresql`` (a uniquely named database created for the one test on the server at
``LIAISON_TEST_POSTGRES_URL``, default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``,
and dropped afterwards). PostgreSQL tests are skipped, with the reason, when the server cannot
be reached; set ``LIAISON_TEST_REQUIRE_POSTGRES=1`` to make that a failure instead.
``engine`` is an engine on that database migrated to head through Alembic (the schema the
relay really runs on). Engines are disposed so no connection outlives its test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from liaison.server import migrate
from liaison.server.db import create_engine

POSTGRES_URL = os.environ.get(
    "LIAISON_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
_REQUIRE_POSTGRES = os.environ.get("LIAISON_TEST_REQUIRE_POSTGRES") == "1"
_probe: dict[str, str | None] = {}


async def _postgres_unreachable() -> str | None:
    """``None`` if the PostgreSQL server answers, else why not (probed once per session)."""
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


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database of the parametrized kind, private to this test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/t.db"
        return
    reason = await _postgres_unreachable()
    if reason is not None:
        if _REQUIRE_POSTGRES:
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"liaison_test_{uuid.uuid4().hex[:16]}"
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


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``db_url`` after ``upgrade head``."""
    await migrate.upgrade_async(db_url)
    eng = create_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()
