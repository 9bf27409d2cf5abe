"""A TCP proxy that breaks the network between cells and a real relay, for the network-fault
suite: cuts connections mid-frame, stalls them, delays them. No SDK or relay code is touched:
the cells connect to the proxy's port as they would to the relay, over real sockets.

Each accepted connection gets a :class:`Plan` drawn from the proxy's seeded RNG while
``faults`` is on (a clean plan otherwise):

* **cut** (every connection, sooner or later): after a random number of bytes in one
  direction (client -> relay "up", or relay -> client "down") the proxy forwards only the part
  of the chunk before that offset and then aborts both TCP connections (RST). A
  :class:`FrameTracker` follows the WebSocket framing of each direction, so a cut is counted
  as *mid-frame* when it does not fall on a frame boundary (almost always: frames carry 4 KiB+
  envelopes);
* **stall**: at a random offset in one direction the proxy stops forwarding that direction for
  a while (short, or longer than the ping interval, or longer than the relay's idle timeout),
  then goes on with what it has buffered;
* **delay**: every chunk, both ways, waits a random latency before it is forwarded (in order).

:class:`Counters` counts what was actually injected (a planned cut the connection never
reached is not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

__all__ = ["Counters", "FaultProxy", "FrameTracker", "Plan"]

CHUNK = 65536


class FrameTracker:
    """Follows one direction of a WebSocket connection: the HTTP upgrade, then frames."""

    def __init__(self) -> None:
        self.offset = 0  # bytes consumed so far (absolute)
        self.http_end: int | None = None
        self._buf = bytearray()
        self._payload_left = 0
        self.boundaries: set[int] = set()

    def feed(self, data: bytes) -> None:
        self._buf += data
        while self._buf:
            if self.http_end is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._consume(end + 4)
                self.http_end = self.offset
                self.boundaries.add(self.offset)
            elif self._payload_left:
                n = min(self._payload_left, len(self._buf))
                self._consume(n)
                self._payload_left -= n
                if not self._payload_left:
                    self.boundaries.add(self.offset)
            else:
                header = self._header()
                if header is None:
                    return
                size, length = header
                self._consume(size)
                self._payload_left = length
                if not length:
                    self.boundaries.add(self.offset)

    def _header(self) -> tuple[int, int] | None:
        """``(header size, payload length)`` of the frame at the start of the buffer."""
        buf = self._buf
        if len(buf) < 2:
            return None
        length, masked = buf[1] & 0x7F, buf[1] & 0x80
        size = 2 + (4 if masked else 0)
        if length == 126:
            size += 2
            if len(buf) < size:
                return None
            length = int.from_bytes(buf[2:4], "big")
        elif length == 127:
            size += 8
            if len(buf) < size:
                return None
            length = int.from_bytes(buf[2:10], "big")
        if len(buf) < size:
            return None
        return size, length

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self.offset += n

    def mid_frame(self, offset: int) -> bool:
        """Whether ``offset`` (absolute, already fed) falls inside a WebSocket frame."""
        return (
            self.http_end is not None and offset > self.http_end and offset not in self.boundaries
        )


@dataclass(frozen=True)
class Plan:
    cut: tuple[str, int] | None = None
    """(direction, byte offset) after which the connection is aborted."""
    stall: tuple[str, int, float] | None = None
    """(direction, byte offset, seconds) at which that direction stops forwarding a while."""
    delay: float = 0.0
    """Mean added latency per chunk, seconds."""


@dataclass
class Counters:
    connections: int = 0
    cuts: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    cuts_mid_frame: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    cuts_after_traffic: int = 0
    """Cuts after more than 16 KiB had passed in that direction: mid-stream, not handshake."""
    stalls: int = 0
    stalls_over_ping: int = 0
    stalls_over_idle: int = 0
    delayed_connections: int = 0
    delayed_chunks: int = 0

    def total(self) -> int:
        return sum(self.cuts.values()) + self.stalls + self.delayed_connections

    def as_dict(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "cuts_up": self.cuts["up"],
            "cuts_down": self.cuts["down"],
            "cuts_mid_frame": sum(self.cuts_mid_frame.values()),
            "cuts_after_traffic": self.cuts_after_traffic,
            "stalls": self.stalls,
            "stalls_over_ping_interval": self.stalls_over_ping,
            "stalls_over_idle_timeout": self.stalls_over_idle,
            "delayed_connections": self.delayed_connections,
            "delayed_chunks": self.delayed_chunks,
        }


class FaultProxy:
    """127.0.0.1:``port`` -> 127.0.0.1:``upstream``, with faults while ``faults`` is on."""

    def __init__(
        self,
        upstream: int,
        rng: random.Random,
        *,
        cut_bytes: int,
        stall_seconds: tuple[tuple[float, float], ...],
        ping_interval: float,
        idle_timeout: float,
        delay: float,
    ) -> None:
        self.upstream = upstream
        self.rng = rng
        self.cut_bytes = cut_bytes
        self.stall_seconds = stall_seconds
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.delay = delay
        self.faults = True
        self.counters = Counters()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def plan(self) -> Plan:
        rng = self.rng
        if not self.faults:
            return Plan()
        # Every connection is cut sooner or later (mostly soon), so faults go on for as long
        # as the traffic does: no cell settles on a connection that is never cut.
        reach = self.cut_bytes if rng.random() < 0.8 else 8 * self.cut_bytes
        cut = (rng.choice(("up", "down")), rng.randrange(1, reach))
        stall = None
        if rng.random() < 0.4:
            low, high = rng.choice(self.stall_seconds)
            stall = (rng.choice(("up", "down")), rng.randrange(1, self.cut_bytes // 2),
                     rng.uniform(low, high))  # fmt: skip
        delay = self.delay * rng.random() if rng.random() < 0.4 else 0.0
        return Plan(cut, stall, delay)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)
            return
        self._writers.add(up_writer)
        self.counters.connections += 1
        plan = self.plan()
        if plan.delay:
            self.counters.delayed_connections += 1
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, writer, "up", plan)),
            asyncio.create_task(self._pump(up_reader, writer, up_writer, "down", plan)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    other: asyncio.StreamWriter, direction: str, plan: Plan) -> None:  # fmt: skip
        tracker = FrameTracker()
        passed = 0
        stall = plan.stall if plan.stall is not None and plan.stall[0] == direction else None
        cut = plan.cut[1] if plan.cut is not None and plan.cut[0] == direction else None
        with contextlib.suppress(OSError):
            while data := await src.read(CHUNK):
                if plan.delay:
                    self.counters.delayed_chunks += 1
                    await asyncio.sleep(plan.delay * self.rng.uniform(0.5, 1.5))
                if stall is not None and passed + len(data) > stall[1]:
                    _, _, seconds = stall
                    stall = None
                    self.counters.stalls += 1
                    self.counters.stalls_over_ping += seconds > self.ping_interval
                    self.counters.stalls_over_idle += seconds > self.idle_timeout
                    await asyncio.sleep(seconds)
                if cut is not None and passed + len(data) > cut:
                    part = data[: cut - passed]
                    tracker.feed(part)
                    dst.write(part)
                    with contextlib.suppress(ConnectionError):
                        await dst.drain()
                    self.counters.cuts[direction] += 1
                    self.counters.cuts_mid_frame[direction] += tracker.mid_frame(cut)
                    self.counters.cuts_after_traffic += cut > 16384
                    dst.transport.abort()
                    other.transport.abort()
                    return
                tracker.feed(data)
                dst.write(data)
                await dst.drain()
                passed += len(data)
