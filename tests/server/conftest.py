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

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.server import migrate
from liaison.server.db import create_engine
from tests.pgkit import postgres_database


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database of the parametrized kind, private to this test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/t.db"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``db_url`` after ``upgrade head``."""
    await migrate.upgrade_async(db_url)
    eng = create_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()
