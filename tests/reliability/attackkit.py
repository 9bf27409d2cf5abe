"""Shared kit of the hostile-input suites (issue #5): fuzzing, access control, exhaustion.

* :class:`Target` is what a cell needs to reach a relay: its HTTP and WebSocket URLs and its
  static link key. It comes from an in-process :class:`~tests.server.harness.RunningRelay` or
  from a ``liaison server run`` process (:func:`relay_process`, whose key is read from
  ``/v1/relay`` and checked against the fingerprint in each enrollment code).
* :func:`enroll` and :func:`connect` do what a cell does, over real HTTP and a real Noise link,
  for a :class:`~tests.server.harness.RawCell`; :func:`provision` creates, pairs and enrolls
  a set of cells through the real admin API.
* :func:`exchange` makes one paired cell send a sealed message to another and waits for its
  delivery: the "other cells keep being served" check run while a relay is under attack.
* :class:`HealthWatch` polls ``GET /healthz`` from a separate process (its own interpreter, so
  an attack run by the test process cannot delay the probe) on a fresh TCP connection each
  time, and reports every answer's status and latency.
* :class:`RawWebSocket` speaks the WebSocket protocol by hand over a TCP stream, so a test
  can trickle a frame byte by byte (slowloris) or send one larger than any client library
  would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets

from liaison.protocol import frames as f
from liaison.protocol.enrollment import (
    EnrollmentCode,
    EnrollmentInitiator,
    EnrollResponse,
    build_request,
)
from liaison.protocol.keys import OneTimePrekey, SignedKemPrekey, SignedPrekey, X25519KeyPair
from liaison.protocol.link import LinkInitiator
from tests.client.clikit import RelayProcess
from tests.client.clikit import relay_process as _relay_process
from tests.server.harness import Admin, Link, RawCell, RunningRelay

__all__ = [
    "HealthReport",
    "HealthWatch",
    "RawWebSocket",
    "Target",
    "close_links",
    "connect",
    "enroll",
    "enroll_answer",
    "exchange",
    "expect_close",
    "ping",
    "provision",
    "relay_process",
]


@dataclass(frozen=True)
class Target:
    """How to reach one relay."""

    url: str
    ws_url: str
    relay_public: bytes

    @classmethod
    def of(cls, relay: RunningRelay) -> Target:
        return cls(relay.url, relay.ws_url, bytes(relay.relay_key.public))

    @classmethod
    def fetch(cls, url: str) -> Target:
        """The relay at ``url``; its key from ``/v1/relay`` (every code's fingerprint is
        checked against it in :func:`enroll`)."""
        info = httpx.get(f"{url}/v1/relay", timeout=10).json()
        ws_url = url.replace("http://", "ws://", 1) + "/v1/link"
        return cls(url, ws_url, bytes.fromhex(info["static_key"]))

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)


@contextmanager
def relay_process(directory: Path, **settings: str) -> Iterator[tuple[RelayProcess, Target]]:
    """``liaison server run`` in its own process (its own interpreter: an attack from the
    test process competes with it for CPU, not for one GIL)."""
    with _relay_process(directory, **settings) as proc:
        yield proc, Target.fetch(proc.url)


async def enroll(cell: RawCell, target: Target, code_text: str, otk_count: int = 5) -> None:
    """What a cell does with its enrollment code: one Noise round trip over ``/v1/enroll``."""
    answer = await enroll_answer(cell, target, code_text, otk_count)
    assert answer.error is None, answer.error
    assert answer.cell_id is not None
    cell.cell_id = answer.cell_id


async def enroll_answer(
    cell: RawCell, target: Target, code_text: str, otk_count: int = 5
) -> EnrollResponse:
    """Enroll ``cell`` with ``code_text``; the relay's authenticated answer, refusal or not."""
    code = EnrollmentCode.parse(code_text)
    assert code.matches(target.relay_public)  # pinned from the code, never from the network
    cell.otks = {100 + i: X25519KeyPair.generate() for i in range(otk_count)}
    request = build_request(
        code.secret, cell.identity, bytes(cell.link_key.public),
        SignedPrekey.create(cell.identity, 1, cell.spk),
        SignedKemPrekey.create(cell.identity, 2, cell.kem),
        tuple(OneTimePrekey(i, k.public) for i, k in cell.otks.items()),
    )  # fmt: skip
    initiator = EnrollmentInitiator(cell.link_key.private_bytes(), target.relay_public)
    async with httpx.AsyncClient(base_url=target.url, timeout=30) as http:
        response = await http.post("/v1/enroll", content=initiator.request(request))
    response.raise_for_status()
    answer: EnrollResponse = initiator.response(response.content)
    return answer


_open_links: list[Link] = []


async def close_links() -> None:
    """Close every link :func:`connect` opened (a failing test leaves some open)."""
    while _open_links:
        with contextlib.suppress(Exception):
            await _open_links.pop().close()


async def connect(
    cell: RawCell, target: Target, *, timeout: float = 30, source: str | None = None
) -> Link:
    """Open a Noise link as ``cell`` and send the first frame (a PING) that makes it live;
    from the loopback address ``source`` (e.g. ``127.0.0.7``) if given."""
    extra: dict[str, Any] = {} if source is None else {"local_addr": (source, 0)}
    ws = await websockets.connect(
        target.ws_url, compression=None, max_size=2**17, open_timeout=timeout, **extra
    )
    initiator = LinkInitiator(cell.link_key.private_bytes(), target.relay_public)
    await ws.send(initiator.write_hello())
    welcome = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(welcome, bytes)
    payload = initiator.read_welcome(welcome)
    assert payload[:16] == cell.cell_id, "the relay answered for another cell id"
    link = Link(ws, initiator.transport())
    _open_links.append(link)
    # A refused cell may already be closed: its ERROR frame is still buffered for ``expect``.
    with contextlib.suppress(websockets.ConnectionClosed):
        await link.send(f.PingFrame(b"liveness"))
    return link


async def provision(
    target: Target,
    admin_token: str,
    names: Iterable[str],
    pairs: Iterable[tuple[str, str]] = (),
    *,
    otk_count: int = 5,
) -> dict[str, RawCell]:
    """Create, enroll and pair cells through the relay's real admin API."""
    admin = Admin(target.url, admin_token)
    cells: dict[str, RawCell] = {}
    try:
        for name in names:
            cell = RawCell(name)
            _cell_id, code = await admin.add_cell(name)
            await enroll(cell, target, code, otk_count)
            cells[name] = cell
        for a, b in pairs:
            await admin.pair(a, b)
    finally:
        await admin.aclose()
    return cells


async def exchange(
    sender: RawCell, sender_link: Link, recipient: RawCell, recipient_link: Link, text: str
) -> float:
    """``sender`` seals ``text`` for ``recipient``, the relay accepts it and delivers it, the
    recipient opens and acknowledges it. Returns the seconds from SEND to DELIVER."""
    bundle = None
    if recipient.cell_id not in sender.sessions:
        bundle = await sender_link.fetch_bundle(recipient)
    message_id, data = sender.seal(recipient, text, bundle=bundle)
    started = time.monotonic()
    await sender_link.send(f.SendFrame(data))
    accepted = await sender_link.expect(f.AcceptedFrame, timeout=30)
    assert accepted.message_id == message_id
    deliver = await recipient_link.expect(f.DeliverFrame, timeout=30)
    took = time.monotonic() - started
    assert deliver.sender_cell_id == sender.cell_id
    assert recipient.open(sender, deliver.envelope) == text
    await recipient_link.send(f.AckFrame(deliver.relay_seq))
    return took


async def ping(link: Link, opaque: bytes, timeout: float = 30) -> None:
    """PING with ``opaque`` and wait for its PONG (earlier PONGs are skipped)."""
    await link.send(f.PingFrame(opaque))
    while (await link.expect(f.PongFrame, timeout)).opaque != opaque:
        pass


async def expect_close(ws: websockets.ClientConnection, timeout: float) -> int | None:
    """Read (and drop) messages until the peer closes; its close code, or ``None`` when the
    connection was lost without a close frame or did not close within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    except TimeoutError:
        return None


# -- /healthz from another process ------------------------------------------------------------

_POLLER = r"""
import socket, sys, time
host, port, interval, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
request = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
with open(out, "w", buffering=1) as sink:
    while True:
        started = time.perf_counter()
        status = 0
        try:
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            status = int(data.split(b" ", 2)[1])
        except (OSError, ValueError, IndexError):
            pass
        sink.write(f"{time.time():.6f} {time.perf_counter() - started:.6f} {status}\n")
        time.sleep(interval)
"""


@dataclass(frozen=True)
class HealthReport:
    """The answers ``/healthz`` gave during a scenario."""

    samples: list[tuple[float, float, int]]  # (unix time, latency seconds, HTTP status)

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def slowest_ms(self) -> int:
        return round(max((s[1] for s in self.samples), default=0.0) * 1000)

    def slow(self, budget: float) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if s[1] > budget]

    def failed(self) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if s[2] != 200]

    def check(self, budget: float = 0.1, minimum: int = 3) -> None:
        """Every answer was 200 within ``budget`` seconds, and there were enough of them."""
        assert self.count >= minimum, f"only {self.count} /healthz answers during the scenario"
        assert not self.failed(), f"/healthz failed: {self.failed()[:5]}"
        assert not self.slow(budget), (
            f"{len(self.slow(budget))} of {self.count} /healthz answers took more than "
            f"{budget * 1000:.0f} ms (slowest {self.slowest_ms} ms): {self.slow(budget)[:5]}"
        )


class HealthWatch:
    """Poll ``/healthz`` every ``interval`` seconds from a separate process while the block
    runs; ``report`` holds the answers afterwards."""

    def __init__(self, target: Target, directory: Path, interval: float = 0.05) -> None:
        self.target = target
        self.path = directory / f"healthz-{time.monotonic_ns()}.log"
        self.interval = interval
        self.report = HealthReport([])

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[HealthWatch]:
        host, port = self.target.host_port
        proc = subprocess.Popen(
            [sys.executable, "-c", _POLLER, host, str(port), str(self.interval), str(self.path)]
        )
        try:
            # The first answer shows the poller runs before the scenario starts.
            deadline = time.monotonic() + 20
            while not self.path.exists() or not self.path.read_text().strip():
                assert proc.poll() is None, "the /healthz poller died"
                assert time.monotonic() < deadline, "the /healthz poller never answered"
                await asyncio.sleep(0.02)
            yield self
            await asyncio.sleep(2 * self.interval)  # one more answer after the attack
        finally:
            proc.terminate()
            proc.wait(10)
        samples = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line cut by terminate() is dropped
                samples.append((float(parts[0]), float(parts[1]), int(parts[2])))
        self.report = HealthReport(samples)


# -- a hand-made WebSocket client --------------------------------------------------------------


@dataclass
class RawWebSocket:
    """A client WebSocket over a plain TCP stream (RFC 6455), for byte-level misbehaviour."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0  # of the HTTP answer to the upgrade request (101: switching protocols)

    @classmethod
    async def open(
        cls, target: Target, *, headers: Mapping[str, str] | None = None, timeout: float = 30
    ) -> RawWebSocket:
        host, port = target.host_port
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        sock = cls(reader, writer)
        await sock.writer_drain(sock.upgrade_request(target, headers))
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        sock.status = int(status.split(b" ", 2)[1])
        return sock

    @staticmethod
    def upgrade_request(target: Target, headers: Mapping[str, str] | None = None) -> bytes:
        host, port = target.host_port
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /v1/link HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def writer_drain(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    @staticmethod
    def frame(payload: bytes, opcode: int = 0x2, fin: bool = True) -> bytes:
        """One masked client frame."""
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    async def send(self, payload: bytes, opcode: int = 0x2) -> None:
        await self.writer_drain(self.frame(payload, opcode))

    async def recv_frame(self, timeout: float) -> tuple[int, bytes]:
        """The next server frame as ``(opcode, payload)``; EOF raises ``IncompleteReadError``."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readexactly(2)
            n = head[1] & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
            return head[0] & 0x0F, await self.reader.readexactly(n)

    async def close_code(self, timeout: float) -> int | None:
        """Read until the server's close frame; its code (``None``: EOF or timeout first)."""
        try:
            while True:
                opcode, payload = await self.recv_frame(timeout)
                if opcode == 0x8:
                    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return None

    def abort(self) -> None:
        self.writer.transport.abort()
