"""The real relay, in-process and without sockets, for SDK tests.

``memory_relay`` builds the relay app (``create_app``) on a migrated SQLite file, runs its
lifespan, and exposes:

* ``http``: an ``httpx.AsyncClient`` on ``httpx.ASGITransport(app)`` (enrollment, admin);
* ``transport``: a :class:`MemoryTransport` whose server side is the relay's own link code —
  ``liaison.server.link._handshake`` (Noise IK, status checks, first-frame rule) and
  ``Connection.run`` (store-and-forward) — over an in-memory socket pair;
* ``admin``: the admin API (``tests.server.harness.Admin`` over the same ASGI transport).

Nothing of the relay or the SDK is replaced: only the byte pipe between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
from fastapi import FastAPI

from liaison.client import Cell
from liaison.client.transport import MemorySocket, MemoryTransport
from liaison.protocol.keys import X25519KeyPair
from liaison.server.admin_auth import create_admin_token
from liaison.server.app import create_app
from liaison.server.link import StarletteSocket, _handshake
from liaison.server.migrate import upgrade_async
from liaison.server.relay import Relay, SocketLike
from liaison.server.settings import Settings
from tests.server.harness import Admin

BASE_URL = "http://relay.test"


class _RelaySocket(SocketLike):
    """The relay's ``SocketLike`` over the server end of a memory connection."""

    def __init__(self, inner: MemorySocket) -> None:
        self.inner = inner

    async def send_bytes(self, data: bytes) -> None:
        await self.inner.send_bytes(data)

    async def receive_message(self) -> bytes | None:
        return await self.inner.receive_message()

    async def close(self, code: int, reason: str) -> None:
        await self.inner.close(code, reason)


@dataclass
class MemoryRelay:
    app: FastAPI
    relay_key: X25519KeyPair
    http: httpx.AsyncClient
    admin: Admin
    transport: MemoryTransport
    home_root: Path

    @property
    def relay(self) -> Relay:
        relay: Relay = self.app.state.relay
        return relay

    async def new_cell(self, name: str, *, pair_with: tuple[str, ...] = (), **options: Any
                       ) -> Path:  # fmt: skip
        """Create, pair and enroll a cell; returns its home directory."""
        _cell_id, code = await self.admin.add_cell(name)
        for other in pair_with:
            await self.admin.pair(name, other)
        home = self.home_root / name
        cell = await Cell.enroll(home, server=BASE_URL, code=code, http=self.http, **options)
        assert cell.home == home
        return home

    def open(self, home: Path, **options: Any) -> Cell:
        options.setdefault("transport", self.transport)
        options.setdefault("backoff", (0.01, 0.05))
        return Cell.open(home, **options)


async def _serve(relay: Relay, relay_key: X25519KeyPair, socket: MemorySocket) -> None:
    wrapped = _RelaySocket(socket)
    conn = await _handshake(relay, relay_key, cast(StarletteSocket, wrapped))
    if conn is None:
        return
    relay.hub.register(conn)
    await conn.run()


@asynccontextmanager
async def memory_relay(tmp: Path, **overrides: Any) -> AsyncIterator[MemoryRelay]:
    url = f"sqlite+aiosqlite:///{tmp / 'relay.db'}"
    await upgrade_async(url)
    settings = Settings(database_url=url, key_file=tmp / "relay.key", **overrides)
    relay_key = X25519KeyPair.generate()
    app = create_app(settings, relay_key=relay_key)
    async with app.router.lifespan_context(app):
        relay: Relay = app.state.relay
        token = await create_admin_token(relay.engine, "tests")
        asgi = httpx.ASGITransport(app=app)
        transport = MemoryTransport(lambda socket: _serve(relay, relay_key, socket))
        http = httpx.AsyncClient(transport=asgi, base_url=BASE_URL, timeout=10)
        admin = Admin(BASE_URL, token, transport=asgi)
        try:
            yield MemoryRelay(app, relay_key, http, admin, transport, tmp / "homes")
        finally:
            await transport.aclose()
            await admin.aclose()
            await http.aclose()
