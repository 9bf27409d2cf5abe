"""Integration harness: a real relay under uvicorn on a free port, and raw protocol cells.

``RunningRelay`` serves ``create_app`` with uvicorn (httptools, websockets-sansio, like
``liaison server run``) in a thread with its own event loop. ``RawCell`` speaks the protocol
directly over a real WebSocket: it enrolls with ``/v1/enroll`` and runs the Noise link, so
the tests exercise exactly what a client SDK would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.enrollment import (
    EnrollmentCode,
    EnrollmentInitiator,
    EnrollResponse,
    build_request,
)
from liaison.protocol.envelope import ContentType, Envelope, Precedence
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from liaison.protocol.link import LinkInitiator, LinkTransport
from liaison.protocol.noise import MAX_MESSAGE_LEN
from liaison.protocol.session import Session, initiate, respond
from liaison.server.admin_auth import create_admin_token
from liaison.server.app import create_app
from liaison.server.db import create_engine
from liaison.server.migrate import upgrade
from liaison.server.settings import Settings

F = TypeVar("F", bound=f.Frame)


class Endpoint(Protocol):
    """What a raw cell needs of a relay: a :class:`RunningRelay`, or one node of a cluster."""

    @property
    def url(self) -> str: ...
    @property
    def ws_url(self) -> str: ...
    @property
    def relay_key(self) -> X25519KeyPair: ...
    @property
    def links(self) -> list[Link]: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RunningRelay:
    """A relay served by uvicorn in a background thread (``port``: reuse one, e.g. to restart
    a stopped relay at the same address)."""

    def __init__(
        self, settings: Settings, relay_key: X25519KeyPair, *, port: int | None = None
    ) -> None:
        self.settings = settings
        self.relay_key = relay_key
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/link"
        self.app = create_app(settings, relay_key=relay_key)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, loop="asyncio", http="httptools",
            ws="websockets-sansio", ws_per_message_deflate=False, ws_max_size=MAX_MESSAGE_LEN,
            limit_concurrency=settings.max_connections, log_level="warning",
            lifespan="on",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.admin_token = ""
        self.links: list[Link] = []

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the relay did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def relay(self) -> Any:
        return self.app.state.relay

    def restarted(self) -> RunningRelay:
        """Stop this relay and serve a new one on the same port, database and key."""
        self.stop()
        again = RunningRelay(self.settings, self.relay_key, port=self.port)
        again.admin_token = self.admin_token
        again.start()
        return again


@contextmanager
def running_relay(tmp: Path, database_url: str | None = None, **overrides: Any
                  ) -> Iterator[RunningRelay]:  # fmt: skip
    url = database_url or f"sqlite+aiosqlite:///{tmp / 'relay.db'}"
    _in_thread(lambda: upgrade(url))  # callable from sync and async tests alike
    settings = Settings(database_url=url, key_file=tmp / "relay.key", **overrides)
    relay = RunningRelay(settings, X25519KeyPair.generate())
    relay.admin_token = _in_thread(lambda: _blocking_token(url))
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


T = TypeVar("T")


def _in_thread(fn: Callable[[], T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def _blocking_token(url: str) -> str:
    async def make() -> str:
        engine = create_engine(url)
        try:
            return await create_admin_token(engine, "tests")
        finally:
            await engine.dispose()

    return asyncio.run(make())


class Admin:
    """The admin REST API through httpx (a token created directly in the database).

    ``transport`` (e.g. ``httpx.ASGITransport(app)``) talks to an in-process app instead."""

    def __init__(
        self, base_url: str, token: str, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            transport=transport,
        )

    async def add_cell(self, name: str) -> tuple[bytes, str]:
        response = await self.client.post("/admin/cells", json={"name": name})
        response.raise_for_status()
        body = response.json()
        return bytes.fromhex(body["id"]), body["enrollment_code"]

    async def pair(self, a: str, b: str) -> None:
        (await self.client.post("/admin/channels", json={"a": a, "b": b})).raise_for_status()

    async def action(self, name: str, what: str) -> None:
        (await self.client.post(f"/admin/cells/{name}/{what}")).raise_for_status()

    async def unpair(self, a: str, b: str) -> None:
        (await self.client.delete(f"/admin/channels/{a}/{b}")).raise_for_status()

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class RawCell:
    """A cell's keys and sessions, driven by hand over a real link."""

    name: str
    identity: IdentityKeyPair = field(default_factory=IdentityKeyPair.generate)
    link_key: X25519KeyPair = field(default_factory=X25519KeyPair.generate)
    spk: X25519KeyPair = field(default_factory=X25519KeyPair.generate)
    kem: KemKeyPair = field(default_factory=KemKeyPair.generate)
    otks: dict[int, X25519KeyPair] = field(default_factory=dict)
    cell_id: bytes = b""
    sessions: dict[bytes, Session] = field(default_factory=dict)

    async def enroll(self, relay: Endpoint, code_text: str, otk_count: int = 5) -> None:
        answer = await self.try_enroll(relay, code_text, otk_count)
        assert answer.error is None, answer.error
        assert answer.cell_id is not None
        self.cell_id = answer.cell_id

    async def try_enroll(
        self, relay: Endpoint, code_text: str, otk_count: int = 5,
        expected_name: str | None = None,
    ) -> EnrollResponse:  # fmt: skip
        """The relay's authenticated answer to one enrollment request, refusals included."""
        code = EnrollmentCode.parse(code_text)
        async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
            info = (await http.get("/v1/relay")).json()
            relay_public = bytes.fromhex(info["static_key"])
            assert code.matches(relay_public)  # pin from the code, never from the network
            self.otks = {100 + i: X25519KeyPair.generate() for i in range(otk_count)}
            request = build_request(
                code.secret, self.identity, bytes(self.link_key.public),
                SignedPrekey.create(self.identity, 1, self.spk),
                SignedKemPrekey.create(self.identity, 2, self.kem),
                tuple(OneTimePrekey(i, k.public) for i, k in self.otks.items()), expected_name,
            )  # fmt: skip
            initiator = EnrollmentInitiator(self.link_key.private_bytes(), relay_public)
            response = await http.post("/v1/enroll", content=initiator.request(request))
            response.raise_for_status()
            answer: EnrollResponse = initiator.response(response.content)
        return answer

    async def connect(self, relay: Endpoint) -> Link:
        ws = await websockets.connect(relay.ws_url, compression=None, max_size=2**17)
        initiator = LinkInitiator(self.link_key.private_bytes(), bytes(relay.relay_key.public))
        await ws.send(initiator.write_hello())
        welcome = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(welcome, bytes)
        payload = initiator.read_welcome(welcome)
        assert payload[:16] == self.cell_id
        link = Link(ws, initiator.transport())
        relay.links.append(link)
        # The first frame proves the link is live. A refused cell may already be closed: the
        # ERROR frame the relay sent first is still buffered for ``expect``.
        with contextlib.suppress(websockets.ConnectionClosed):
            await link.send(f.PingFrame(b"liveness"))
        return link

    def seal(self, peer: RawCell, text: str, *, precedence: Precedence = Precedence.ROUTINE,
             ttl: int = 3600, message_id: bytes | None = None, bundle: bytes | None = None
             ) -> tuple[bytes, bytes]:  # fmt: skip
        """Envelope bytes for ``peer`` (starting a session from ``bundle`` if needed)."""
        session = self.sessions.get(peer.cell_id)
        if session is None:
            assert bundle is not None, "first message needs the peer's bundle"
            session = initiate(self.identity, self.cell_id, PrekeyBundle.decode(bundle))
            self.sessions[peer.cell_id] = session
        message_id = message_id or os.urandom(16)
        data = session.seal(ContentType.TEXT, text.encode(), message_id=message_id,
                            precedence=precedence, expires_at=int(time.time()) + ttl)  # fmt: skip
        return message_id, data

    def open(self, sender: RawCell, data: bytes) -> str:
        envelope = Envelope.decode(data)
        session = self.sessions.get(sender.cell_id)
        if session is None or (
            envelope.setup is not None and session.setup_ephemeral != envelope.setup.ephemeral
        ):
            assert envelope.setup is not None
            otk_id = envelope.setup.one_time_prekey_id
            otk = None if otk_id is None else self.otks[otk_id]
            session = respond(self.identity, self.cell_id, sender.cell_id, envelope.setup,
                              self.spk, self.kem, otk)  # fmt: skip
            self.sessions[sender.cell_id] = session
        return session.open(envelope).payload.decode()


class Link:
    """An authenticated link: frames in and out."""

    def __init__(self, ws: ClientConnection, transport: LinkTransport) -> None:
        self.ws = ws
        self.transport = transport
        self._request = 0

    def request_id(self) -> int:
        self._request += 1
        return self._request

    async def send(self, frame: f.Frame) -> None:
        await self.ws.send(self.transport.encrypt(f.encode_frame(frame)))

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 5.0) -> f.Frame:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(message, bytes)
        return f.decode_frame(self.transport.decrypt(message))

    async def expect(self, kind: type[F], timeout: float = 5.0) -> F:
        """The next frame of type ``kind``, skipping PING, PONG and PREKEYS_LOW; any other
        frame fails the test."""
        while True:
            frame = await self.recv(timeout)
            if isinstance(frame, kind):
                return frame
            if not isinstance(frame, f.PingFrame | f.PongFrame | f.PrekeysLowFrame):
                raise AssertionError(f"expected {kind.__name__}, got {frame!r}")

    async def closed_code(self, timeout: float = 5.0) -> int:
        """Read until the relay closes the link; its close code."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                await asyncio.wait_for(self.ws.recv(), timeout)
            except websockets.ConnectionClosed:
                break
        await self.ws.wait_closed()
        code = self.ws.close_code
        assert code is not None, "the relay did not close the link with a close frame"
        return code

    async def fetch_bundle(self, peer: RawCell) -> bytes:
        request_id = self.request_id()
        await self.send(f.FetchBundleFrame(request_id, peer.cell_id))
        frame = await self.expect(f.BundleFrame)
        assert frame.request_id == request_id
        return frame.bundle

    async def close(self) -> None:
        await self.ws.close()
