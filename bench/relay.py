"""Relay throughput and delivery latency, measured next to a bare WebSocket relay (the ceiling).

    .venv/bin/python bench/relay.py [--quick]

One load generator (this process, pinned to CPU 0, uvloop) drives, in the same run, two relays
each running as a separate process pinned to CPU 1:

* **ceiling**: a bare ``websockets`` relay (asyncio + uvloop, compression off) that forwards
  every binary message of a pair's sender connection to its recipient connection; no
  authentication, no crypto, no storage;
* **liaison**: ``liaison server run`` with durable SQLite storage (WAL, ``synchronous=FULL``,
  group commit). 200 cells are created and enrolled through the admin API and ``/v1/enroll``,
  paired 1:1 and linked with Noise IK; senders send SEND frames, recipients ACK each DELIVER.

Both carry the same bytes per message: one real 4096-byte Liaison envelope per pair (a 1 KiB
payload sealed by a steady-state session; 4096 bytes is the smallest envelope bucket), reused
with a fresh message id patched into bytes 18..34. The recipients never decrypt envelopes.

Delivery latency = time from the sender's ``send()`` to the recipient reading the message
(one process clock); a message sent in the measured window and still undelivered after the
drain counts as ``inf``, one refused with an ERROR frame is counted apart. Scenarios:
saturation (each of the 100 senders keeps WINDOW messages in flight, counted until delivery)
and paced at 50% of the ceiling's saturation rate, spread evenly over the pairs. When that
rate is above Liaison's own saturation rate (it is then an overload test, run last), Liaison
is also paced at 50% of its own saturation rate, for a latency reading below its capacity.

Targets (issue text): liaison throughput >= 0.5x the ceiling; liaison p99 at 50% load <= 2x
the ceiling's p99 + the group-commit window. The relay's writer does not wait on a timer, so
its "window" is the duration of one commit: here the median of an fsync'd SQLite WAL commit
of a 32 x 4 KiB batch, measured on the same disk.

This is a report, not a test: it never fails the build. ``srv cpu`` / ``gen cpu`` show which
side ran out of its core during the measured window (100% = one core); ``other`` is the CPU
used by everything else on the machine (other processes, kernel network work): when it is
high, the machine was shared and the absolute numbers, and even the ratios, are unreliable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
import uvloop
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.enrollment import EnrollmentCode, EnrollmentInitiator, build_request
from liaison.protocol.envelope import ContentType, Envelope, Precedence
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from liaison.protocol.link import LinkInitiator, LinkTransport
from liaison.protocol.session import Session, initiate, respond

PAIRS = 100
WINDOW = 32  # messages in flight per sender at saturation (until delivered)
ENVELOPE_LEN = 4096
PAYLOAD = os.urandom(1024)
MID = slice(18, 34)  # message id inside an envelope
DELIVER_MID = slice(33 + 18, 33 + 34)  # ... inside a DELIVER frame (type, seq, sender, time)
SEND_TYPE = bytes((f.FrameType.SEND,))
ACK_TYPE = bytes((f.FrameType.ACK,))
COMMIT_BATCH = 32
START_SECONDS = 30.0
CEILING_LIFETIME = 600.0  # the ceiling server exits by itself after this, whatever happens
GENERATOR_CPU, SERVER_CPU = 0, 1


@dataclass(frozen=True)
class Config:
    warmup: float
    duration: float
    drain: float  # at most this long for in-flight messages after a scenario
    quick: bool


# ------------------------------------------------------------------------ the ceiling server


async def serve_ceiling(port: int) -> None:
    """The bare relay: per pair, every message from the sender goes to the recipient.
    The first message of a connection names its role and pair: ``R17`` or ``S17``."""
    recipients: dict[int, ServerConnection] = {}

    async def handler(ws: ServerConnection) -> None:
        hello = await ws.recv()
        assert isinstance(hello, bytes)
        role, pair = str(hello[:1], "ascii"), int(hello[1:])
        if role == "R":
            recipients[pair] = ws
            await ws.send(b"ok")
            await ws.wait_closed()
            return
        peer = recipients[pair]
        await ws.send(b"ok")
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await peer.send(message)

    async with websockets.serve(
        handler, "127.0.0.1", port, compression=None, max_size=2**17, ping_interval=None
    ):
        print("ready", flush=True)
        await asyncio.sleep(CEILING_LIFETIME)


# ------------------------------------------------------------------------ delivery tracking


class Tracker:
    """Per-message send times and the phase's measuring window."""

    def __init__(self) -> None:
        self.pending: dict[bytes, float] = {}
        self.slots: list[asyncio.Semaphore] | None = None
        self.start = self.end = float("inf")
        self.latencies: list[float] = []
        self.delivered = 0  # deliveries inside the window
        self.sent = self.refused = self.stray = 0

    def reset(self, window: int | None) -> None:
        self.pending = {}
        self.slots = None if window is None else [asyncio.Semaphore(window) for _ in range(PAIRS)]
        self.latencies = []
        self.delivered = self.sent = self.refused = 0

    def on_delivery(self, pair: int, message_id: bytes) -> None:
        now = time.perf_counter()
        sent_at = self.pending.pop(message_id, None)
        if sent_at is None:
            self.stray += 1  # a previous phase's straggler or a redelivery
            return
        if self.slots is not None:
            self.slots[pair].release()
        if self.start <= sent_at < self.end:
            self.latencies.append(now - sent_at)
        if self.start <= now < self.end:
            self.delivered += 1

    def on_refused(self, pair: int, message_id: bytes) -> None:
        """The relay answered ERROR for this message: it will never be delivered."""
        if self.pending.pop(message_id, None) is not None:
            self.refused += 1
            if self.slots is not None:
                self.slots[pair].release()


# ------------------------------------------------------------------------ targets


async def connect(url: str) -> ClientConnection:
    return await websockets.connect(
        url, compression=None, max_size=2**17, ping_interval=None, open_timeout=10
    )


class Target:
    """How to connect 100 pairs, send one envelope, and recognise its delivery."""

    name = ""

    def __init__(self) -> None:
        self.senders: list[ClientConnection] = []
        self.recipients: list[ClientConnection] = []
        self.readers: list[asyncio.Task[None]] = []
        self.events: Counter[str] = Counter()  # anything but a delivery, by kind

    async def open(self, tracker: Tracker) -> None:
        raise NotImplementedError

    async def send(self, pair: int, message_id: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        sockets = self.senders + self.recipients
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        if self.readers:
            _done, stuck = await asyncio.wait(self.readers, timeout=5)
            for task in stuck:
                task.cancel()


class Ceiling(Target):
    name = "ceiling"

    def __init__(self, url: str, envelopes: Sequence[bytes]) -> None:
        super().__init__()
        self.url = url
        self.envelopes = envelopes

    async def _connect(self, hello: str) -> ClientConnection:
        ws = await connect(self.url)
        await ws.send(hello.encode())
        assert await asyncio.wait_for(ws.recv(), 10) == b"ok"
        return ws

    async def open(self, tracker: Tracker) -> None:
        for i in range(PAIRS):
            ws = await self._connect(f"R{i}")
            self.recipients.append(ws)
            self.readers.append(asyncio.create_task(self._read(ws, i, tracker)))
        for i in range(PAIRS):
            self.senders.append(await self._connect(f"S{i}"))

    async def _read(self, ws: ClientConnection, pair: int, tracker: Tracker) -> None:
        on_delivery = tracker.on_delivery
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                assert isinstance(message, bytes)
                on_delivery(pair, message[MID])

    async def send(self, pair: int, message_id: bytes) -> None:
        envelope = self.envelopes[pair]
        await self.senders[pair].send(envelope[:18] + message_id + envelope[34:])


@dataclass
class Cell:
    name: str
    identity: IdentityKeyPair = field(default_factory=IdentityKeyPair.generate)
    link_key: X25519KeyPair = field(default_factory=X25519KeyPair.generate)
    spk: X25519KeyPair = field(default_factory=X25519KeyPair.generate)
    kem: KemKeyPair = field(default_factory=KemKeyPair.generate)
    cell_id: bytes = b""


class Liaison(Target):
    name = "liaison"

    def __init__(self, base_url: str, admin_token: str) -> None:
        super().__init__()
        self.base_url = base_url
        self.ws_url = base_url.replace("http://", "ws://") + "/v1/link"
        self.recipient_ws_url = self.ws_url  # bench/cluster.py links recipients to another node
        self.admin_token = admin_token
        self.relay_public = b""
        self.cells: list[tuple[Cell, Cell]] = []
        self.envelopes: list[bytes] = []
        self.transports: list[LinkTransport] = []  # the senders'
        self.accepted = 0

    async def enroll_all(self) -> None:
        """Create, enroll and pair 100 sender/recipient cells through the real APIs."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30) as http:
            info = (await http.get("/v1/relay")).raise_for_status().json()
            self.relay_public = bytes.fromhex(info["static_key"])
            self.cells = [(Cell(f"s{i:03d}"), Cell(f"r{i:03d}")) for i in range(PAIRS)]
            gate = asyncio.Semaphore(8)

            async def enroll(cell: Cell) -> None:
                async with gate:
                    created = await http.post("/admin/cells", json={"name": cell.name})
                    code = EnrollmentCode.parse(
                        created.raise_for_status().json()["enrollment_code"]
                    )
                    assert code.matches(self.relay_public)
                    request = build_request(
                        code.secret,
                        cell.identity,
                        bytes(cell.link_key.public),
                        SignedPrekey.create(cell.identity, 1, cell.spk),
                        SignedKemPrekey.create(cell.identity, 2, cell.kem),
                        (),
                    )
                    hs = EnrollmentInitiator(cell.link_key.private_bytes(), self.relay_public)
                    answer = await http.post("/v1/enroll", content=hs.request(request))
                    response = hs.response(answer.raise_for_status().content)
                    assert response.error is None, response.error
                    assert response.cell_id is not None
                    cell.cell_id = response.cell_id

            await asyncio.gather(*(enroll(c) for pair in self.cells for c in pair))
            for sender, recipient in self.cells:
                pairing = {"a": sender.name, "b": recipient.name}
                (await http.post("/admin/channels", json=pairing)).raise_for_status()
        self.envelopes = [steady_state_envelope(s, r) for s, r in self.cells]

    async def _link(self, cell: Cell, ws_url: str) -> tuple[ClientConnection, LinkTransport]:
        ws = await connect(ws_url)
        initiator = LinkInitiator(cell.link_key.private_bytes(), self.relay_public)
        await ws.send(initiator.write_hello())
        welcome = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(welcome, bytes)
        assert initiator.read_welcome(welcome)[:16] == cell.cell_id
        transport = initiator.transport()
        await ws.send(transport.encrypt(f.encode_frame(f.PingFrame(b"liveness"))))
        return ws, transport

    async def open(self, tracker: Tracker) -> None:
        gate = asyncio.Semaphore(16)

        async def link(cell: Cell, ws_url: str) -> tuple[ClientConnection, LinkTransport]:
            async with gate:
                return await self._link(cell, ws_url)

        recipients = await asyncio.gather(*(link(r, self.recipient_ws_url) for _, r in self.cells))
        senders = await asyncio.gather(*(link(s, self.ws_url) for s, _ in self.cells))
        for i, ((rws, rtx), (sws, stx)) in enumerate(zip(recipients, senders, strict=True)):
            self.recipients.append(rws)
            self.senders.append(sws)
            self.transports.append(stx)
            self.readers.append(asyncio.create_task(self._read_recipient(rws, rtx, i, tracker)))
            self.readers.append(asyncio.create_task(self._read_sender(sws, stx, i, tracker)))

    def _other(self, plaintext: bytes, pair: int, tracker: Tracker) -> None:
        frame = f.decode_frame(plaintext)
        if isinstance(frame, f.ErrorFrame):
            self.events[f"ERROR {frame.code}"] += 1
            tracker.on_refused(pair, frame.ref)
        elif not isinstance(frame, f.PingFrame | f.PongFrame | f.PrekeysLowFrame):
            self.events[type(frame).__name__] += 1

    async def _read_recipient(
        self, ws: ClientConnection, transport: LinkTransport, pair: int, tracker: Tracker
    ) -> None:
        decrypt, encrypt, on_delivery = transport.decrypt, transport.encrypt, tracker.on_delivery
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                assert isinstance(message, bytes)
                frame = decrypt(message)
                if frame[0] == f.FrameType.DELIVER:
                    on_delivery(pair, frame[DELIVER_MID])
                    await ws.send(encrypt(ACK_TYPE + frame[1:9]))
                else:
                    self._other(frame, pair, tracker)

    async def _read_sender(
        self, ws: ClientConnection, transport: LinkTransport, pair: int, tracker: Tracker
    ) -> None:
        decrypt = transport.decrypt
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                assert isinstance(message, bytes)
                frame = decrypt(message)
                if frame[0] == f.FrameType.ACCEPTED:
                    self.accepted += 1
                else:
                    self._other(frame, pair, tracker)

    async def send(self, pair: int, message_id: bytes) -> None:
        envelope = self.envelopes[pair]
        frame = SEND_TYPE + envelope[:18] + message_id + envelope[34:]
        await self.senders[pair].send(self.transports[pair].encrypt(frame))


def steady_state_envelope(sender: Cell, recipient: Cell) -> bytes:
    """A real envelope from ``sender`` to ``recipient`` carrying a 1 KiB payload, sealed once
    both sides have replied (no session-setup block, so it fits the 4096-byte bucket)."""
    bundle = PrekeyBundle(
        recipient.cell_id,
        recipient.identity.public,
        SignedPrekey.create(recipient.identity, 1, recipient.spk),
        SignedKemPrekey.create(recipient.identity, 2, recipient.kem),
    )
    alice = initiate(sender.identity, sender.cell_id, bundle)
    expires = int(time.time()) + 3600

    def seal(session: Session, payload: bytes) -> bytes:
        return session.seal(
            ContentType.TEXT,
            payload,
            message_id=os.urandom(16),
            precedence=Precedence.ROUTINE,
            expires_at=expires,
        )

    first = Envelope.decode(seal(alice, b"hello"))
    assert first.setup is not None
    bob = respond(
        recipient.identity,
        recipient.cell_id,
        sender.cell_id,
        first.setup,
        recipient.spk,
        recipient.kem,
        None,
    )
    bob.open(first)
    alice.open(Envelope.decode(seal(bob, b"ok")))
    envelope = seal(alice, PAYLOAD)
    assert len(envelope) == ENVELOPE_LEN, len(envelope)
    return envelope


# ------------------------------------------------------------------------ the load generator


@dataclass
class Result:
    rate: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    sent: int = 0
    lost: int = 0
    offered: float | None = None
    refused: int = 0
    server_cpu: float = 0.0
    generator_cpu: float = 0.0
    other_cpu: float = 0.0


async def saturate(target: Target, tracker: Tracker, pair: int) -> None:
    assert tracker.slots is not None
    acquire, pending = tracker.slots[pair].acquire, tracker.pending
    prefix, n = os.urandom(8), 0
    while True:
        await acquire()
        if time.perf_counter() >= tracker.end:
            return
        n += 1
        message_id = prefix + n.to_bytes(8, "big")
        pending[message_id] = time.perf_counter()
        await target.send(pair, message_id)
        tracker.sent += 1


async def pace(target: Target, tracker: Tracker, pair: int, first: float, interval: float) -> None:
    pending = tracker.pending
    prefix, n = os.urandom(8), 0
    due = first
    while due < tracker.end:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n += 1
        message_id = prefix + n.to_bytes(8, "big")
        pending[message_id] = time.perf_counter()
        await target.send(pair, message_id)
        tracker.sent += 1
        due += interval


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy_seconds() -> float:
    """CPU time spent by everything on the machine (user, system, irq, softirq, steal)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_phase(
    target: Target, tracker: Tracker, config: Config, server_pid: int, rate: float | None
) -> Result:
    """Saturation (``rate`` None) or paced at ``rate`` msgs/s over all pairs."""
    tracker.reset(WINDOW if rate is None else None)
    begin = time.perf_counter()
    tracker.start = begin + config.warmup
    tracker.end = tracker.start + config.duration
    if rate is None:
        tasks = [asyncio.create_task(saturate(target, tracker, i)) for i in range(PAIRS)]
    else:
        interval = PAIRS / max(rate, 1.0)
        tasks = [
            asyncio.create_task(pace(target, tracker, i, begin + interval * i / PAIRS, interval))
            for i in range(PAIRS)
        ]
    result = await measure_window(tracker, tasks, config, server_pid, rate)
    result.refused = tracker.refused
    tracker.start = tracker.end = float("inf")
    return result


class Window(Protocol):
    """What ``measure_window`` needs from a load generator's bookkeeping."""

    start: float
    end: float
    slots: list[asyncio.Semaphore] | None
    pending: dict[Any, float]
    latencies: list[float]
    delivered: int
    sent: int


async def measure_window(
    window: Window,
    tasks: list[asyncio.Task[None]],
    config: Config,
    server_pid: int,
    rate: float | None,
) -> Result:
    """Sample CPU over the measuring window, stop the senders, drain deliveries, and turn
    the latencies into a Result (shared by bench/relay.py and bench/e2e.py)."""
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    cpu_server, cpu_generator = process_cpu_seconds(server_pid), time.process_time()
    cpu_host = host_busy_seconds()
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    result = Result(
        server_cpu=(process_cpu_seconds(server_pid) - cpu_server) / config.duration,
        generator_cpu=(time.process_time() - cpu_generator) / config.duration,
        offered=rate,
    )
    host = (host_busy_seconds() - cpu_host) / config.duration
    result.other_cpu = max(0.0, host - result.server_cpu - result.generator_cpu)
    for slot in window.slots or ():  # wake senders blocked on a full window: they stop
        slot.release()
    _done, stuck = await asyncio.wait(tasks, timeout=config.drain)
    for task in stuck:
        task.cancel()
    deadline = time.perf_counter() + config.drain
    while window.pending and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
    # A message sent in the window and still undelivered counts as infinitely late.
    late = sum(window.start <= sent_at < window.end for sent_at in window.pending.values())
    ordered = sorted(window.latencies) + [float("inf")] * late
    result.rate = window.delivered / config.duration
    result.p50, result.p99 = percentile(ordered, 0.50) * 1e3, percentile(ordered, 0.99) * 1e3
    result.sent, result.lost = window.sent, len(window.pending)
    return result


# ------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str]) -> list[str]:
    if (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
        return ["taskset", "-c", str(SERVER_CPU), *cmd]
    return cmd


ONE_SOURCE_ADMISSION = {
    "LIAISON_MAX_UNAUTHENTICATED_PER_ADDRESS": "1000000",
    "LIAISON_MAX_UNAUTHENTICATED_PER_KNOWN_ADDRESS": "1000000",
    "LIAISON_UNAUTHENTICATED_RESERVE_FRACTION": "0",
    "LIAISON_HANDSHAKES_PER_ADDRESS_PER_SECOND": "1000000",
    "LIAISON_HANDSHAKE_BURST_PER_ADDRESS": "1000000",
}
"""The load generator runs every cell from 127.0.0.1: the relay's per-address handshake
limits (SPEC.md §6.4), meant for one host, are lifted for the benchmarks (an operator's own
``LIAISON_*`` values still win)."""


class Server:
    """A child process with its stdout and stderr in files."""

    def __init__(self, name: str, cmd: list[str], tmp: Path) -> None:
        self.out_path, self.err_path = tmp / f"{name}.out", tmp / f"{name}.err"
        self._out: IO[bytes] = self.out_path.open("wb")
        self._err: IO[bytes] = self.err_path.open("wb")
        env = ONE_SOURCE_ADMISSION | dict(os.environ)
        self.proc = subprocess.Popen(pinned(cmd), stdout=self._out, stderr=self._err, env=env)

    async def wait_for_line(self, prefix: str) -> str:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            for line in self.out_path.read_text().splitlines():
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        tail = self.err_path.read_text()[-2000:]
        raise RuntimeError(f"server did not print {prefix!r}; stderr:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        self._err.close()


async def wait_http(url: str, server: Server) -> None:
    deadline = time.monotonic() + START_SECONDS
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline and server.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never answered; stderr:\n{server.err_path.read_text()[-2000:]}")


def commit_window_ms(tmp: Path, repeats: int) -> float:
    """Median time of one fsync'd SQLite WAL commit of COMMIT_BATCH 4 KiB rows on this disk."""
    db = sqlite3.connect(tmp / "commit.db", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
        rows = [(os.urandom(ENVELOPE_LEN),) for _ in range(COMMIT_BATCH)]
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO t (data) VALUES (?)", rows)
            db.execute("COMMIT")
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e3
    finally:
        db.close()


# ------------------------------------------------------------------------ the run


@dataclass
class Report:
    commit_ms: float = 0.0
    results: dict[tuple[str, str], Result] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def measure(
    target: Target, config: Config, server_pid: int, ceiling_rate: float | None, report: Report
) -> float:
    """Saturation, then paced scenarios; returns the saturation rate.

    The ceiling (``ceiling_rate`` None) is paced at half its own saturation rate. A relay whose
    saturation rate is below that is also paced at half its own rate (a latency reading below
    its capacity) before the 50%-of-ceiling scenario, which then measures overload and runs
    last so that its backlog cannot spill into another scenario."""
    tracker = Tracker()
    await target.open(tracker)
    try:
        saturated = await run_phase(target, tracker, config, server_pid, None)
        report.results[("saturation", target.name)] = saturated
        half = saturated.rate / 2 if ceiling_rate is None else ceiling_rate / 2
        if half > saturated.rate:
            own = await run_phase(target, tracker, config, server_pid, saturated.rate / 2)
            report.results[("50% of own max", target.name)] = own
        paced = await run_phase(target, tracker, config, server_pid, half)
        report.results[("50% of ceiling", target.name)] = paced
    finally:
        await target.close()
    if tracker.stray:
        report.notes.append(f"{target.name}: {tracker.stray} deliveries of unknown messages")
    if target.events:
        report.notes.append(f"{target.name}: other frames {dict(target.events)}")
    return saturated.rate


STAT_SERIES = (
    "liaison_envelopes_accepted_total", "liaison_envelopes_delivered_total",
    "liaison_writer_batches_total", "liaison_writer_rows_total", "liaison_writer_max_batch",
    "liaison_commit_seconds_sum", "liaison_commit_seconds_count",
)  # fmt: skip


async def relay_stats(base_url: str) -> list[str]:
    """The relay's own group-commit figures over the whole run, from ``/metrics``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        try:
            text = (await http.get("/metrics")).text
        except httpx.HTTPError as exc:
            return [f"relay /metrics unavailable: {type(exc).__name__}"]
    series = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in STAT_SERIES:
            series[name] = float(value)
    batches = series.get("liaison_writer_batches_total", 0.0)
    rows = series.get("liaison_writer_rows_total", 0.0)
    commits = series.get("liaison_commit_seconds_count", 0.0)
    mean_ms = 1000 * series.get("liaison_commit_seconds_sum", 0.0) / commits if commits else 0.0
    return [
        f"relay /metrics over the run: {series.get('liaison_envelopes_accepted_total', 0):.0f} "
        f"accepted, {series.get('liaison_envelopes_delivered_total', 0):.0f} delivered, "
        f"{batches:.0f} group commits of {rows / batches if batches else 0:.1f} items on average "
        f"(largest {series.get('liaison_writer_max_batch', 0):.0f}), {mean_ms:.2f} ms per commit"
    ]


async def run(config: Config, tmp: Path) -> Report:
    report = Report(commit_ms=commit_window_ms(tmp, 20 if config.quick else 60))
    venv_bin = Path(sys.executable).parent

    # The Liaison relay is prepared first (enrollment is not measured) but loaded last.
    port = free_port()
    liaison_server = Server(
        "liaison",
        [
            str(venv_bin / "liaison"),
            "server",
            "run",
            "--port",
            str(port),
            "--database",
            f"sqlite+aiosqlite:///{tmp / 'bench.db'}",
            "--key-file",
            str(tmp / "relay.key"),
        ],
        tmp,
    )
    ceiling_server: Server | None = None
    try:
        token = await liaison_server.wait_for_line("admin token:")
        base_url = f"http://127.0.0.1:{port}"
        await wait_http(base_url + "/healthz", liaison_server)
        started = time.perf_counter()
        liaison = Liaison(base_url, token)
        await liaison.enroll_all()
        report.notes.append(
            f"liaison setup (200 cells created, enrolled, paired; 100 envelopes sealed): "
            f"{time.perf_counter() - started:.1f} s"
        )

        ceiling_port = free_port()
        ceiling_server = Server(
            "ceiling", [sys.executable, __file__, "--serve-ceiling", str(ceiling_port)], tmp
        )
        await ceiling_server.wait_for_line("ready")
        ceiling = Ceiling(f"ws://127.0.0.1:{ceiling_port}", liaison.envelopes)
        ceiling_rate = await measure(ceiling, config, ceiling_server.proc.pid, None, report)
        ceiling_server.stop()
        ceiling_server = None

        await measure(liaison, config, liaison_server.proc.pid, ceiling_rate, report)
        report.notes.append(f"liaison: {liaison.accepted} ACCEPTED frames received")
        report.notes.extend(await relay_stats(base_url))
    finally:
        if ceiling_server is not None:
            ceiling_server.stop()
        liaison_server.stop()
    return report


def print_report(report: Report, config: Config) -> None:
    print(
        f"{PAIRS} pairs, {ENVELOPE_LEN}-byte envelopes (1 KiB payload) for both targets, "
        f"window {WINDOW}/sender at saturation, {config.warmup:g} s warm-up + "
        f"{config.duration:g} s measured per scenario"
    )
    print(
        f"group-commit window: {report.commit_ms:.2f} ms "
        f"(median fsync'd SQLite WAL commit of {COMMIT_BATCH} x 4 KiB rows on this disk)"
    )
    print()
    header = (
        f"{'scenario':<16}  {'target':<8}  {'msgs/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'srv cpu':>7}  {'gen cpu':>7}  {'other':>5}  vs ceiling"
    )
    print(header)
    print("-" * (len(header) + 40))
    results = report.results
    for scenario in ("saturation", "50% of ceiling", "50% of own max"):
        ceiling = results.get((scenario, "ceiling"))
        for name in ("ceiling", "liaison"):
            r = results.get((scenario, name))
            if r is None:
                continue
            verdict = ""
            if scenario == "50% of own max":
                verdict = "info: latency below its own capacity (50% of ceiling is above it)"
            elif name == "liaison" and ceiling is not None:
                if scenario == "saturation":
                    ratio = r.rate / ceiling.rate if ceiling.rate else float("nan")
                    verdict = f"{ratio:.2f}x  (target >= 0.5x: {'ok' if ratio >= 0.5 else 'MISS'})"
                else:
                    limit = 2 * ceiling.p99 + report.commit_ms
                    ok = "ok" if r.p99 <= limit else "MISS"
                    verdict = (
                        f"p99 {r.p99 / ceiling.p99:.1f}x  "
                        f"(target <= 2 x {ceiling.p99:.2f} + {report.commit_ms:.2f} "
                        f"= {limit:.2f} ms: {ok})"
                    )
            print(
                f"{scenario:<16}  {name:<8}  {r.rate:8.0f}  {r.p50:7.2f}  {r.p99:7.2f}  "
                f"{r.server_cpu:7.0%}  {r.generator_cpu:7.0%}  {r.other_cpu:5.0%}  {verdict}"
            )
    print_sends(results, config.drain, report.notes)


def print_sends(results: Mapping[tuple[str, str], Any], drain: float, notes: list[str]) -> None:
    """Per scenario: what was sent, offered, refused and lost; then the run's notes."""
    print()
    for (scenario, name), r in results.items():
        offered = f", offered {r.offered:.0f}/s" if r.offered is not None else ""
        lost = f", {r.lost} NOT DELIVERED within {drain:g} s (inf latency)" if r.lost else ""
        refused = f", {r.refused} refused with ERROR" if r.refused else ""
        print(f"{scenario} / {name}: sent {r.sent}{offered}{refused}{lost}")
    for note in notes:
        print(note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per scenario instead of 10 s")
    parser.add_argument("--serve-ceiling", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_ceiling is not None:
        uvloop.run(serve_ceiling(args.serve_ceiling))
        return
    config = Config(
        warmup=1.0 if args.quick else 2.0,
        duration=3.0 if args.quick else 10.0,
        drain=5.0 if args.quick else 10.0,
        quick=args.quick,
    )
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {GENERATOR_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="liaison-bench-"))
    try:
        report = uvloop.run(run(config, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(report, config)


if __name__ == "__main__":
    main()
