"""Alembic migrations shipped in ``liaison.migrations`` and the relay's start-up schema check."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.server import migrate
from liaison.server.db import create_engine
from liaison.server.migrate import SchemaMismatch
from liaison.server.schema import metadata

HEAD = migrate.head_revision()
UPGRADE_HINT = "run `liaison server db upgrade`"
NEWER_HINT = "this database was migrated by a newer Liaison"

NEXT_MIGRATION = '''"""A later migration, only for tests."""

revision = "9999_test_later"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


def _tables(sync_conn: Connection) -> set[str]:
    return set(inspect(sync_conn).get_table_names())


def _drift(sync_conn: Connection) -> list[Any]:
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def _run(engine: AsyncEngine, fn: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.run_sync(fn)


@pytest.fixture
def later_config(tmp_path: Path) -> Any:
    """A copy of the installed migrations plus one newer revision: "the next Liaison"."""
    root = tmp_path / "next_migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "versions" / "9999_test_later.py").write_text(NEXT_MIGRATION.format(head=HEAD))
    config = migrate.alembic_config()
    config.set_main_option("script_location", str(root))
    config.set_main_option("version_locations", str(root / "versions"))
    return config


def test_migrations_ship_in_the_installed_package() -> None:
    """env.py, the script template and the first revision are in the installed package, and
    the history is linear: one base, one head, each revision with at most one parent."""
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert (migrate.MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (migrate.MIGRATIONS_DIR / "versions" / f"{HEAD}.py").is_file()
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert script.get_heads() == [HEAD]
    assert script.get_bases() == ["0001_initial_schema"]
    for revision in script.walk_revisions():
        assert not isinstance(revision.down_revision, tuple | list)
    assert migrate.head_revision() == HEAD


async def test_upgrade_downgrade_upgrade_without_drift(db_url: str) -> None:
    """Empty -> head -> base -> head; the live schema then equals ``schema.metadata``."""
    assert await migrate.current_revision_async(db_url) is None
    await migrate.upgrade_async(db_url)
    assert await migrate.current_revision_async(db_url) == HEAD
    await migrate.downgrade_async(db_url, "base")
    assert await migrate.current_revision_async(db_url) is None
    engine = create_engine(db_url)
    try:
        assert await _run(engine, _tables) <= {"alembic_version"}
        await migrate.upgrade_async(engine)
        assert await migrate.current_revision_async(engine) == HEAD
        assert await _run(engine, _tables) == set(metadata.tables) | {"alembic_version"}
        assert await _run(engine, _drift) == []
        await migrate.check_schema(engine)
    finally:
        await engine.dispose()


async def test_a_failed_upgrade_leaves_nothing_behind(db_url: str) -> None:
    """The whole upgrade is one transaction, on SQLite too: when the last table cannot be
    created, the tables created before it are gone and no revision is recorded."""
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE audit_log (x INTEGER)"))
        with pytest.raises(Exception, match="audit_log"):
            await migrate.upgrade_async(engine)
        assert await _run(engine, _tables) <= {"audit_log", "alembic_version"}
        assert await migrate.current_revision_async(engine) is None
    finally:
        await engine.dispose()


async def test_check_schema_refuses_an_empty_database(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with pytest.raises(SchemaMismatch) as info:
            await migrate.check_schema(engine)
        assert UPGRADE_HINT in info.value.message
        assert "no Liaison schema" in info.value.message
    finally:
        await engine.dispose()


async def test_check_schema_accepts_head(engine: AsyncEngine) -> None:
    await migrate.check_schema(engine)


async def test_check_schema_refuses_a_database_behind_the_code(
    engine: AsyncEngine, later_config: Any
) -> None:
    """The database is at 0001; a relay whose migrations end at 0002 asks for an upgrade,
    and accepts the database once upgraded with its migrations."""
    with pytest.raises(SchemaMismatch) as info:
        await migrate.check_schema(engine, config=later_config)
    assert UPGRADE_HINT in info.value.message
    assert HEAD in info.value.message
    assert "9999_test_later" in info.value.message
    await migrate.upgrade_async(engine, config=later_config)
    await migrate.check_schema(engine, config=later_config)


async def test_check_schema_refuses_a_database_from_a_newer_liaison(
    engine: AsyncEngine, later_config: Any
) -> None:
    """Migrated by a newer release (0002, unknown to this code): upgrade the relay."""
    await migrate.upgrade_async(engine, config=later_config)
    with pytest.raises(SchemaMismatch) as info:
        await migrate.check_schema(engine)
    assert NEWER_HINT in info.value.message
    assert "upgrade the relay" in info.value.message
    assert "9999_test_later" in info.value.message


async def test_check_schema_refuses_an_unknown_stamped_revision(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(SchemaMismatch, match="newer Liaison") as info:
        await migrate.check_schema(engine)
    assert "9999_from_the_future" in info.value.message


async def test_stamping_base_makes_the_database_look_unmigrated(engine: AsyncEngine) -> None:
    await migrate.stamp_async(engine, "base")
    assert await migrate.current_revision_async(engine) is None
    with pytest.raises(SchemaMismatch, match="no Liaison schema"):
        await migrate.check_schema(engine)


async def test_sync_entry_points_work_with_and_without_a_running_loop(tmp_path: Path) -> None:
    """``upgrade``/``current_revision`` are for sync callers such as the CLI: they work when
    called on a thread without a loop and when called from inside a running loop."""
    url = f"sqlite+aiosqlite:///{tmp_path}/sync.db"
    assert await asyncio.to_thread(migrate.current_revision, url) is None
    migrate.upgrade(url)  # from inside this test's running loop
    assert migrate.current_revision(url) == HEAD
    await asyncio.to_thread(migrate.downgrade, url, "base")
    assert migrate.current_revision(url) is None
    migrate.stamp(url, HEAD)
    assert migrate.current_revision(url) == HEAD


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///x.db", "postgresql+asyncpg://u@h/db"])
def test_offline_mode_renders_the_migration_as_sql(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``env.py`` also serves ``alembic upgrade --sql`` (for DBAs who apply SQL by hand)."""
    command.upgrade(migrate.alembic_config(url), "head", sql=True)
    sql = capsys.readouterr().out
    for table in metadata.tables:
        assert f"CREATE TABLE {table} (" in sql
    assert "ix_envelopes_recipient_precedence_seq_size" in sql
    assert f"version_num='{HEAD}'" in sql or f"VALUES ('{HEAD}')" in sql
