"""Shared test kit for the admin API: a real app on a real SQLite file, and small real fakes.

Nothing here is a mock: :class:`RecordingHooks` is a tiny implementation of
:class:`~liaison.server.admin.AdminHooks` that remembers what it was told, and
:class:`ManualClock` is a clock the test moves by hand.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.server import schema
from liaison.server.admin import build_admin_router, create_admin_token
from liaison.server.admin_auth import FailureLimiter
from liaison.server.db import create_engine
from liaison.server.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers

__all__ = [
    "CODE_TTL",
    "WALL_START",
    "AdminEnv",
    "ManualClock",
    "RecordingHooks",
    "add_rows",
    "admin_env",
    "assert_problem",
    "audit_rows",
    "cell_id",
    "set_cell",
]

WALL_START = 1_700_000_000.0
CODE_TTL = 3600


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingHooks:
    """Issues recognisable enrollment codes and records every notification."""

    codes: list[str] = field(default_factory=list)
    calls: list[tuple[bytes, str, list[bytes]]] = field(default_factory=list)
    channel_changes: int = 0
    notified: list[list[bytes]] = field(default_factory=list)
    fail: bool = False

    def new_enrollment_code(self) -> tuple[str, bytes]:
        code = f"ENR-{secrets.token_hex(10)}"
        self.codes.append(code)
        return code, hashlib.sha256(code.encode()).digest()

    async def on_cell_status(self, cell_id: bytes, status: str, peers: list[bytes]) -> None:
        self.calls.append((cell_id, status, peers))
        if self.fail:
            raise RuntimeError("the relay is having a bad day")

    async def on_channels_changed(self) -> None:
        self.channel_changes += 1
        if self.fail:
            raise RuntimeError("the relay is having a bad day")

    async def on_sender_notices(self, senders: list[bytes]) -> None:
        self.notified.append(senders)
        if self.fail:
            raise RuntimeError("the relay is having a bad day")


@dataclass
class AdminEnv:
    app: FastAPI
    client: httpx.AsyncClient
    engine: AsyncEngine
    hooks: RecordingHooks
    token: str
    wall: ManualClock
    monotonic: ManualClock

    def other_client(self, address: str, token: str | None = None) -> httpx.AsyncClient:
        """A client from another address (close it), with ``token`` or none."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=self.app, client=(address, 4321))
        return httpx.AsyncClient(transport=transport, base_url="http://relay", headers=headers)


@asynccontextmanager
async def admin_env(tmp_path: Path) -> AsyncIterator[AdminEnv]:
    """The admin router mounted under ``/admin`` on a fresh app and SQLite file."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
        wall, monotonic = ManualClock(WALL_START), ManualClock(100.0)
        token = await create_admin_token(engine, "root", clock=wall)
        hooks = RecordingHooks()
        app = FastAPI()
        install_problem_handlers(app)
        router = build_admin_router(
            engine,
            hooks,
            code_ttl_seconds=CODE_TTL,
            limiter=FailureLimiter(10, 60.0, clock=monotonic),
            clock=wall,
        )
        app.include_router(router, prefix="/admin")
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://relay", headers=headers
        ) as client:
            yield AdminEnv(app, client, engine, hooks, token, wall, monotonic)
    finally:
        await engine.dispose()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status`` and ``code``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:liaison:problem:{code}"
    assert body["title"]
    assert isinstance(body["detail"], str)
    return body


async def cell_id(engine: AsyncEngine, name: str) -> bytes:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(schema.cells.c.id).where(schema.cells.c.name == name))
        ).one()
    return bytes(row.id)


async def set_cell(engine: AsyncEngine, name: str, **values: Any) -> None:
    """Change a cell's row directly (standing in for enrollment, which is not the admin API)."""
    async with engine.begin() as conn:
        await conn.execute(update(schema.cells).where(schema.cells.c.name == name).values(**values))


async def audit_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(schema.audit_log).order_by(schema.audit_log.c.id))
        return [dict(row._mapping) for row in rows]


async def add_rows(engine: AsyncEngine, table: Any, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(table), rows)
