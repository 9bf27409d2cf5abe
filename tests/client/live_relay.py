"""A real relay admin API served by uvicorn on a free port, in a background thread.

The CLI tests talk to it over real TCP, exactly as ``liaison admin`` talks to a deployed relay.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.server import schema
from liaison.server.admin import build_admin_router, create_admin_token
from liaison.server.db import create_engine
from liaison.server.problems import install_problem_handlers
from tests.server.adminkit import RecordingHooks

__all__ = ["LiveRelay", "running_relay", "unused_port_url"]


@dataclass(frozen=True)
class LiveRelay:
    url: str
    token: str
    hooks: RecordingHooks


async def _prepare(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
        return await create_admin_token(engine, "root")
    finally:
        await engine.dispose()


def _app(engine: AsyncEngine, hooks: RecordingHooks) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()  # on the server's own event loop

    app = FastAPI(lifespan=lifespan)
    install_problem_handlers(app)
    app.include_router(build_admin_router(engine, hooks), prefix="/admin")
    return app


@contextmanager
def running_relay(tmp_path: Path) -> Iterator[LiveRelay]:
    """Serve the admin API on 127.0.0.1:<free port> until the ``with`` block ends."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    token = asyncio.run(_prepare(database_url))
    hooks = RecordingHooks()
    config = uvicorn.Config(
        _app(create_engine(database_url), hooks),
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
    )
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test relay did not start")
            time.sleep(0.01)
        yield LiveRelay(f"http://127.0.0.1:{port}", token, hooks)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def unused_port_url() -> str:
    """The URL of a local port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
