"""Resource exhaustion (issue #5): a relay under attack stays up, answers ``/healthz`` within
100 ms and keeps serving everyone else.

Every scenario runs against a real ``liaison server run`` process while a separate process
polls ``GET /healthz`` (:class:`~tests.reliability.attackkit.HealthWatch`) and an unrelated
pair of cells exchanges a sealed message in the middle of the attack:

* oversized messages before and after the handshake, oversized frames and envelopes;
* slow handshakes: silent WebSockets, a hello trickled byte by byte or cut in fragments, and a
  hello whose sender never sends its first transport frame -- the handshake timeout closes
  each with ``handshake_timeout`` (4301);
* crowds of idle unauthenticated connections: one address holds at most
  ``max_unauthenticated_per_address`` handshake slots and many fresh addresses together at
  most ``max_unauthenticated`` minus the share kept for addresses cells authenticated from;
  everything above is refused with ``rate_limited`` (4201), and cells from other (or known)
  addresses link meanwhile;
* handshakes in a loop from one address: refused with ``rate_limited`` beyond the per-address
  rate; a replayed hello is closed as a failed handshake without a welcome;
* a sender flooding one recipient: exactly the quota is accepted, the rest is refused with
  ``queue_full``, and the recipient receives exactly what was accepted;
* prekey-draining peers: each one-time prekey is served at most once, then bundles come
  flagged ``no_one_time_prekey``; the owner is warned (PREKEYS_LOW), replenishes, and the stock
  never exceeds ``max_one_time_prekeys`` (``prekey_limit``).

Sizes: ``make test`` runs a few hundred connections and messages; ``make reliability`` runs
5,000 idle connections and the default 1,000-envelope quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import websockets

from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.envelope import BUCKETS, EnvelopeKind, Precedence, Routing
from liaison.protocol.keys import X25519KeyPair
from liaison.protocol.link import LinkInitiator
from tests.client.clikit import RelayProcess
from tests.reliability.attackkit import (
    HealthWatch,
    RawWebSocket,
    Target,
    close_links,
    connect,
    exchange,
    expect_close,
    ping,
    provision,
    relay_process,
)
from tests.reliability.report import record, scaled
from tests.server.harness import Link, RawCell

SUITE = "exhaustion"
HEALTH_BUDGET = 0.1  # seconds: every /healthz answer during an attack
HANDSHAKE_TIMEOUT = 1.0  # the main relay's handshake_timeout_seconds
CLOSE_SLACK = 3.0  # seconds a timed-out link may take to be closed after its deadline
QUOTA = scaled(50, 1000)  # queue_max_messages of the main relay
MAX_ENVELOPE = 16384  # max_envelope_bytes of the main relay (a bucket below the largest)
LOW_THRESHOLD = 5
MAX_PREKEYS = scaled(40, 1000)
STOCK = scaled(20, 200)  # one-time prekeys the drained cell enrolls with

CROWD = scaled(300, 5000)  # idle unauthenticated connections opened
CROWD_LIMIT = scaled(200, 4000)  # max_unauthenticated of the crowd relay
CROWD_TIMEOUT = float(scaled(5, 60))  # its hello deadline: longer than opening the crowd
PER_ADDRESS = scaled(20, 200)  # max_unauthenticated_per_address of the crowd relay
RESERVE = 0.25  # unauthenticated_reserve_fraction of the crowd relay (the default)
FLOODER = "127.0.0.2"  # the loopback address one flooding host uses
STRICT_RATE = 2.0  # handshakes_per_address_per_second of the strict relay
STRICT_BURST = 15  # handshake_burst_per_address of the strict relay
ATTACK_CONCURRENCY = 20  # connection attempts in flight at once

T = TypeVar("T")


def _in_thread(fn: Callable[[], T]) -> T:
    """Run blocking set-up (a subprocess, its own event loop) off any running loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@pytest.fixture(scope="module", autouse=True)
def _enough_file_descriptors() -> None:
    """The crowd needs a descriptor per connection in this process and in the relay (which
    inherits the limit): raise the soft limit as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = CROWD + 1024
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"ulimit -n is {hard}; the crowd needs {needed} descriptors")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.fixture(autouse=True)
async def _close_links() -> AsyncIterator[None]:
    yield
    await close_links()


@dataclass
class Relay:
    proc: RelayProcess
    target: Target
    cells: dict[str, RawCell]
    directory: Path


def _start(directory: Path, names: list[str], pairs: list[tuple[str, str]],
           otks: dict[str, int], **settings: str) -> Iterator[Relay]:  # fmt: skip
    with relay_process(directory, **settings) as (proc, target):

        async def setup() -> dict[str, RawCell]:
            cells = await provision(target, proc.admin_token, [n for n in names if n not in otks])
            for name, count in otks.items():
                cells |= await provision(target, proc.admin_token, [name], otk_count=count)
            await provision(target, proc.admin_token, [], pairs)
            return cells

        cells = _in_thread(lambda: asyncio.run(setup()))
        yield Relay(proc, target, cells, directory)


@pytest.fixture(scope="module")
def main_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """One relay for the scenarios that need no crowd: short handshake timeout, small quota."""
    names = ["ops-a", "ops-b", "flooder", "sink", "drainer-1", "drainer-2", "stock", "big",
             "replayed"]  # fmt: skip
    pairs = [("ops-a", "ops-b"), ("flooder", "sink"), ("drainer-1", "stock"),
             ("drainer-2", "stock")]  # fmt: skip
    yield from _start(
        tmp_path_factory.mktemp("exhaustion-main"), names, pairs, {"stock": STOCK},
        handshake_timeout_seconds=str(HANDSHAKE_TIMEOUT), queue_max_messages=str(QUOTA),
        max_envelope_bytes=str(MAX_ENVELOPE), prekeys_low_threshold=str(LOW_THRESHOLD),
        max_one_time_prekeys=str(MAX_PREKEYS), max_unauthenticated="1024",
    )  # fmt: skip


@pytest.fixture(scope="module")
def crowd_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    yield from _start(
        tmp_path_factory.mktemp("exhaustion-crowd"), ["ops-a", "ops-b", "late"],
        [("ops-a", "ops-b")], {},
        hello_timeout_seconds=str(CROWD_TIMEOUT), handshake_timeout_seconds=str(CROWD_TIMEOUT * 2),
        max_unauthenticated=str(CROWD_LIMIT), max_unauthenticated_per_address=str(PER_ADDRESS),
        unauthenticated_reserve_fraction=str(RESERVE),
        # caps, not the rate, decide in these scenarios
        handshakes_per_address_per_second="10000", handshake_burst_per_address=str(CROWD * 2),
    )  # fmt: skip


@pytest.fixture(scope="module")
def strict_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """A relay with a low handshake rate per address (a burst of ``STRICT_BURST``)."""
    yield from _start(
        tmp_path_factory.mktemp("exhaustion-strict"), ["ops-a", "ops-b"], [("ops-a", "ops-b")],
        {}, handshakes_per_address_per_second=str(STRICT_RATE),
        handshake_burst_per_address=str(STRICT_BURST),
    )  # fmt: skip


@dataclass
class Pair:
    """The unrelated pair that must keep being served during an attack."""

    a: RawCell
    b: RawCell
    link_a: Link
    link_b: Link
    exchanged: int = 0
    slowest: float = 0.0

    async def exchange(self, label: str) -> None:
        took = await exchange(self.a, self.link_a, self.b, self.link_b, f"during {label}")
        self.exchanged += 1
        self.slowest = max(self.slowest, took)


async def _pair(relay: Relay) -> AsyncIterator[Pair]:
    a, b = relay.cells["ops-a"], relay.cells["ops-b"]
    pair = Pair(a, b, await connect(a, relay.target), await connect(b, relay.target))
    try:
        await pair.exchange("warm-up")  # the session exists before the attack
        yield pair
    finally:
        await pair.link_a.close()
        await pair.link_b.close()


@pytest.fixture
async def main_pair(main_relay: Relay) -> AsyncIterator[Pair]:
    async for pair in _pair(main_relay):
        yield pair


@pytest.fixture
async def crowd_pair(crowd_relay: Relay) -> AsyncIterator[Pair]:
    async for pair in _pair(crowd_relay):
        yield pair


async def _under_attack(
    relay: Relay,
    pair: Pair,
    label: str,
    attack: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> HealthWatch:
    """Run ``attack`` while /healthz is polled; once the attack sets its event ("under way"),
    the pair exchanges a message. Checks health and the exchange; returns the watch."""
    watch = HealthWatch(relay.target, relay.directory)
    under_way = asyncio.Event()
    async with watch.watching():
        task = asyncio.create_task(attack(under_way))
        waiter = asyncio.create_task(under_way.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not under_way.is_set():
            waiter.cancel()
            await task  # it failed before it got going: show why
            raise AssertionError(f"{label}: the attack ended without getting under way")
        await pair.exchange(label)
        await task
    assert pair.exchanged >= 2
    watch.report.check(HEALTH_BUDGET)
    async with httpx.AsyncClient(base_url=relay.target.url, timeout=30) as http:
        assert (await http.get("/healthz")).status_code == 200
    assert relay.proc.proc.poll() is None, "the relay process died"
    return watch


def _envelope(recipient: bytes, bucket: int) -> tuple[bytes, bytes]:
    """An envelope of ``bucket`` bytes with a valid routing header (the relay reads nothing
    else); its body is random."""
    message_id = os.urandom(16)
    routing = Routing(EnvelopeKind.MESSAGE, recipient, message_id, Precedence.ROUTINE,
                      int(time.time()) + 3600)  # fmt: skip
    head = routing.encode()
    return message_id, head + os.urandom(bucket - len(head))


async def _frames_until(link: Link, done: Callable[[list[f.Frame]], bool],
                        timeout: float = 30) -> list[f.Frame]:  # fmt: skip
    """Frames (PING, PONG and PREKEYS_LOW dropped) until ``done(frames)``."""
    frames: list[f.Frame] = []
    async with asyncio.timeout(timeout):
        while not done(frames):
            frame = await link.recv(timeout)
            if not isinstance(frame, f.PingFrame | f.PongFrame | f.PrekeysLowFrame):
                frames.append(frame)
    return frames


# -- oversized input ---------------------------------------------------------------------------


CUT_MID_MESSAGE = -1  # a close code stand-in: reset by the relay mid-message


async def test_oversized_messages_frames_and_envelopes(main_relay: Relay, main_pair: Pair) -> None:
    """Oversized WebSocket messages are fatal (1009) before and after the handshake; an
    oversized frame or envelope inside a valid transport message is refused with an ERROR frame
    and the link stays open."""
    target = main_relay.target
    sizes = [65536, 65536 * 4, 2**20] + ([4 * 2**20, 8 * 2**20] if scaled(0, 1) else [])
    big, peer = main_relay.cells["big"], main_relay.cells["ops-b"]
    closes: list[tuple[str, int, int | None]] = []  # (when, size, close code)
    sent_bytes = 0
    refused_in_link = 0

    async def attack(under_way: asyncio.Event) -> None:
        nonlocal sent_bytes, refused_in_link
        # Before the handshake: an oversized "hello".
        for size in sizes:
            raw = await RawWebSocket.open(target)
            assert raw.status == 101
            try:
                await raw.send(os.urandom(size))
                code = await raw.close_code(30)
            except (ConnectionResetError, BrokenPipeError):
                code = CUT_MID_MESSAGE  # closed while the message was still arriving
            sent_bytes += size
            closes.append(("before the handshake", size, code))
            raw.abort()
            under_way.set()
        # After the handshake: a transport message above the Noise limit kills the link.
        for size in sizes:
            link = await connect(big, target)
            try:
                await link.send_raw(os.urandom(size))
                code = await expect_close(link.ws, 30)
            except (ConnectionResetError, BrokenPipeError, websockets.ConnectionClosed):
                code = await expect_close(link.ws, 30) if link.ws.close_code else CUT_MID_MESSAGE
            sent_bytes += size
            closes.append(("after the handshake", size, code))
        # A frame at the size limit but invalid, and envelopes above the relay's maximum (or
        # above any bucket): ERROR frames with documented codes, the link survives.
        link = await connect(big, target)
        oversized: list[tuple[bytes, str]] = [
            (f.encode_frame(f.SendFrame(b"\x01")) + os.urandom(f.MAX_FRAME - 2), "malformed"),
        ]
        for bucket in (b for b in BUCKETS if b > MAX_ENVELOPE):
            _mid, envelope = _envelope(peer.cell_id, bucket)
            oversized.append((f.encode_frame(f.SendFrame(envelope)), "too large"))
        for frame, _why in oversized:
            await link.ws.send(link.transport.encrypt(frame))
            sent_bytes += len(frame)
        errors = await _frames_until(link, lambda got: len(got) == len(oversized))
        assert [e.code for e in errors if isinstance(e, f.ErrorFrame)] == [
            f.ErrorCode.MALFORMED_FRAME
        ] + [f.ErrorCode.ENVELOPE_TOO_LARGE] * (len(oversized) - 1), errors
        refused_in_link = len(errors)
        await ping(link, b"survived")
        await link.close()

    watch = await _under_attack(main_relay, main_pair, "oversized", attack)
    assert len(closes) == 2 * len(sizes)
    # A WebSocket message over the Noise maximum (65535 bytes) is refused by the WebSocket
    # layer as it arrives, with 1009 "message too big" (SPEC.md M-LINK-6), before the relay
    # buffers it; a hello still arriving when the handshake timeout ends is closed by the
    # timeout instead.
    # A multi-megabyte message may still be on its way when the relay closes, and the peer's
    # TCP stack then resets the connection before the close frame can be read.
    too_big = 1009
    before = {f.CLOSE_CODES[f.ErrorCode.HANDSHAKE_TIMEOUT], too_big, CUT_MID_MESSAGE}
    assert all(code in before for when, _s, code in closes if when.startswith("before")), closes
    after = {too_big, CUT_MID_MESSAGE}
    assert all(code in after for when, _s, code in closes if when.startswith("after")), closes
    # Messages just over the limit are always refused with the close code itself.
    assert all(code != CUT_MID_MESSAGE for _w, size, code in closes if size <= 2**20), closes
    record(
        SUITE,
        "oversized messages, frames and envelopes",
        {
            "oversized_messages": 2 * len(sizes),
            "largest_message_bytes": max(sizes),
            "bytes_sent": sent_bytes,
            "oversized_frames_and_envelopes": refused_in_link,
            "healthz_polls": watch.report.count,
            "healthz_slowest_ms": watch.report.slowest_ms,
        },
        {"undocumented_close": 0, "link_lost_after_error_frame": 0, "healthz_slow_or_failed": 0},
    )


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _huge_body(target: Target, path: str, chunked: bool) -> tuple[int, int]:
    """POST a body declared as 1 GiB (or sent chunked, without end) to ``path``; return the
    status the relay answered with and the bytes sent before that answer came."""
    host, port = target.host_port
    reader, writer = await asyncio.open_connection(host, port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {2**30}"
    writer.write(f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                 f"{framing}\r\n\r\n".encode())  # fmt: skip
    answer = asyncio.create_task(reader.readline())
    sent = 0
    try:
        while not answer.done() and sent < 64 * 2**20:
            piece = b"[" * 65536
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0)
        status_line = await asyncio.wait_for(answer, 30)
    finally:
        writer.transport.abort()
    return int(status_line.split(b" ", 2)[1]), sent


async def test_oversized_http_bodies_are_refused_unread(main_relay: Relay, main_pair: Pair) -> None:
    """A body declared or streamed far above what the endpoint accepts (admin JSON, the
    enrollment message) is refused with 413 after at most a few chunks -- also without a
    token, since the body would otherwise be read before authentication -- and the relay's
    memory does not grow with what the clients claim to send."""
    target = main_relay.target
    requests = scaled(20, 200)
    pid = main_relay.proc.proc.pid
    before = _rss_bytes(pid)
    answers: Counter[int] = Counter()
    sent_total = 0
    in_flight = asyncio.Semaphore(10)

    async def one(index: int) -> None:
        nonlocal sent_total
        path = ["/admin/cells", "/admin/channels", "/admin/tokens", "/v1/enroll"][index % 4]
        async with in_flight:
            status, sent = await _huge_body(target, path, chunked=index % 2 == 1)
        answers[status] += 1
        sent_total += sent

    async def attack(under_way: asyncio.Event) -> None:
        tasks = [asyncio.create_task(one(i)) for i in range(requests)]
        under_way.set()
        await asyncio.gather(*tasks)

    watch = await _under_attack(main_relay, main_pair, "oversized bodies", attack)
    grown = _rss_bytes(pid) - before
    assert answers == {413: requests}, answers
    assert grown < 64 * 2**20, f"the relay grew by {grown / 2**20:.0f} MiB"
    record(
        SUITE,
        "oversized HTTP bodies",
        {
            "requests": requests,
            "declared_or_streamed_bytes_each": 2**30,
            "bytes_written_before_the_answer": sent_total,  # mostly into socket buffers
            "relay_rss_growth_kib": max(grown, 0) // 1024,
            "healthz_polls": watch.report.count,
            "healthz_slowest_ms": watch.report.slowest_ms,
        },
        {"read_whole": 0, "undocumented_status": 0, "healthz_slow_or_failed": 0},
    )


# -- slow handshakes (slowloris) ---------------------------------------------------------------


async def test_slow_handshakes_are_closed_by_the_handshake_timeout(
    main_relay: Relay, main_pair: Pair
) -> None:
    """Silent sockets, trickled or fragmented hellos and a hello without its first transport
    frame are all closed with handshake_timeout (4301) about ``handshake_timeout`` after they
    opened; the cell's real link is not disturbed."""
    target = main_relay.target
    silent, trickled, cut, mute = scaled(20, 200), scaled(4, 40), scaled(4, 40), scaled(4, 40)
    sleepy = main_relay.cells["big"]
    outcomes: list[tuple[str, int | None, float]] = []

    opening = asyncio.Semaphore(ATTACK_CONCURRENCY)

    async def silent_socket() -> None:
        async with opening:
            ws = await websockets.connect(target.ws_url, compression=None)
        started = time.monotonic()
        async with ws:
            code = await expect_close(ws, HANDSHAKE_TIMEOUT + 30)
        outcomes.append(("silent", code, time.monotonic() - started))

    async def trickled_hello(fragmented: bool) -> None:
        hello = LinkInitiator(X25519KeyPair.generate().private_bytes(),
                              target.relay_public).write_hello()  # fmt: skip
        async with opening:
            raw = await RawWebSocket.open(target)
        started = time.monotonic()
        if fragmented:  # the first half as a non-final fragment, the rest never
            await raw.writer_drain(RawWebSocket.frame(hello[:48], fin=False))
            code = await raw.close_code(HANDSHAKE_TIMEOUT + 30)
        else:  # one byte every 100 ms: 10 s for the whole frame
            data = RawWebSocket.frame(hello)
            closing = asyncio.create_task(raw.close_code(HANDSHAKE_TIMEOUT + 30))
            for byte in data:
                if closing.done():
                    break
                raw.writer.write(bytes([byte]))
                await asyncio.sleep(0.1)
            code = await closing
        raw.abort()
        outcomes.append(("fragmented" if fragmented else "trickled", code,
                         time.monotonic() - started))  # fmt: skip

    async def hello_then_nothing() -> None:
        async with opening:
            ws = await websockets.connect(target.ws_url, compression=None)
        started = time.monotonic()
        async with ws:
            initiator = LinkInitiator(sleepy.link_key.private_bytes(), target.relay_public)
            await ws.send(initiator.write_hello())
            code = await expect_close(ws, HANDSHAKE_TIMEOUT + 30)  # welcome, PING, then close
        outcomes.append(("no first frame", code, time.monotonic() - started))

    async def attack(under_way: asyncio.Event) -> None:
        tasks = [silent_socket() for _ in range(silent)]
        tasks += [trickled_hello(False) for _ in range(trickled)]
        tasks += [trickled_hello(True) for _ in range(cut)]
        tasks += [hello_then_nothing() for _ in range(mute)]
        async with asyncio.TaskGroup() as group:  # a failure cancels (and closes) the rest
            for task in tasks:
                group.create_task(task)
            await asyncio.sleep(0.2)
            under_way.set()

    live = await connect(sleepy, target)  # the real cell: its link must stay up
    try:
        watch = await _under_attack(main_relay, main_pair, "slow handshakes", attack)
        await ping(live, b"stillme!")
    finally:
        await live.close()

    timeout_code = f.CLOSE_CODES[f.ErrorCode.HANDSHAKE_TIMEOUT]
    assert len(outcomes) == silent + trickled + cut + mute
    wrong = [o for o in outcomes if o[1] != timeout_code]
    assert not wrong, wrong
    late = [o for o in outcomes if o[2] > HANDSHAKE_TIMEOUT + CLOSE_SLACK]
    early = [o for o in outcomes if o[2] < HANDSHAKE_TIMEOUT * 0.5]
    assert not late, late
    assert not early, early
    record(
        SUITE,
        "slow handshakes (slowloris)",
        {
            "silent_sockets": silent,
            "trickled_hellos": trickled,
            "fragmented_hellos": cut,
            "hellos_without_first_frame": mute,
            "handshake_timeout_ms": round(HANDSHAKE_TIMEOUT * 1000),
            "slowest_close_ms": round(max(o[2] for o in outcomes) * 1000),
            "healthz_polls": watch.report.count,
            "healthz_slowest_ms": watch.report.slowest_ms,
        },
        {"left_open": 0, "closed_late": 0, "undocumented_close": 0, "healthz_slow_or_failed": 0},
    )


# -- crowds of idle unauthenticated connections ----------------------------------------------


async def _idle_crowd(
    target: Target, sources: list[str], per_source: int, under_way: asyncio.Event,
    checks: Callable[[dict[str, list[int | None]]], Coroutine[Any, Any, None]],
    *, spoof: bool = False,
) -> dict[str, list[tuple[int | None, float]]]:  # fmt: skip
    """``per_source`` idle WebSockets from each loopback address of ``sources`` (no hello):
    once all are open, ``checks`` runs with the close codes received so far (the refusals
    come right after the upgrade) while the held ones still hold their slots; then every
    socket is waited out (``spoof``: each claims another address in ``X-Forwarded-For``,
    which the relay must not believe). Returns, per source, each socket's (close code,
    seconds open)."""
    closes: dict[str, list[tuple[int | None, float]]] = {src: [] for src in sources}
    opened = 0
    in_flight = asyncio.Semaphore(ATTACK_CONCURRENCY)
    all_open = asyncio.Event()
    total = len(sources) * per_source

    async def one(source: str) -> None:
        nonlocal opened
        claim = {"X-Forwarded-For": f"10.{opened // 250}.{opened % 250}.1"} if spoof else {}
        async with in_flight:
            ws = await websockets.connect(target.ws_url, compression=None, open_timeout=60,
                                          ping_interval=None, local_addr=(source, 0),
                                          additional_headers=claim)  # fmt: skip
        started = time.monotonic()
        opened += 1
        if opened == total:
            all_open.set()
        try:
            code = await expect_close(ws, CROWD_TIMEOUT + 60)
            closes[source].append((code, time.monotonic() - started))
        finally:
            await ws.close()

    async with asyncio.TaskGroup() as group:  # a failure cancels (and closes) the rest
        for source in sources:
            for _ in range(per_source):
                group.create_task(one(source))
        await all_open.wait()
        await asyncio.sleep(0.5)  # the refusals arrive right after the upgrade
        under_way.set()
        await checks({src: [code for code, _t in got] for src, got in closes.items()})
    return closes


async def test_one_address_cannot_lock_everyone_out(crowd_relay: Relay, crowd_pair: Pair) -> None:
    """One host opens ``CROWD`` idle connections: it holds at most
    ``max_unauthenticated_per_address`` handshake slots (closed by the hello deadline), every
    other one is refused with rate_limited (4201) — also when each connection claims another
    address in ``X-Forwarded-For`` — and meanwhile a cell from another address, one never
    seen before, links, and the pair exchanges. (Before per-address caps, the host held all
    ``max_unauthenticated`` slots and every cell was refused.)"""
    target = crowd_relay.target
    rate_limited = f.CLOSE_CODES[f.ErrorCode.RATE_LIMITED]
    timed_out = f.CLOSE_CODES[f.ErrorCode.HANDSHAKE_TIMEOUT]
    linked_during: list[float] = []

    async def checks(codes: dict[str, list[int | None]]) -> None:
        assert codes[FLOODER].count(rate_limited) == CROWD - PER_ADDRESS, Counter(codes[FLOODER])
        started = time.monotonic()
        link = await connect(crowd_relay.cells["late"], target, source="127.0.0.3")
        await ping(link, b"anyway!!")
        linked_during.append(time.monotonic() - started)
        await link.close()

    async def attack(under_way: asyncio.Event) -> None:
        closes.update(await _idle_crowd(target, [FLOODER], CROWD, under_way, checks, spoof=True))

    closes: dict[str, list[tuple[int | None, float]]] = {}
    watch = await _under_attack(crowd_relay, crowd_pair, "one address floods", attack)
    outcome = Counter(code for code, _t in closes[FLOODER])
    assert outcome == {rate_limited: CROWD - PER_ADDRESS, timed_out: PER_ADDRESS}, outcome
    held = [t for code, t in closes[FLOODER] if code == timed_out]
    assert min(held) >= CROWD_TIMEOUT * 0.8
    assert max(held) <= CROWD_TIMEOUT + CLOSE_SLACK + 5
    assert len(linked_during) == 1
    record(
        SUITE,
        "one address floods the handshake",
        {
            "connections": CROWD,
            "max_unauthenticated": CROWD_LIMIT,
            "per_address_cap": PER_ADDRESS,
            "held_until_hello_deadline": outcome[timed_out],
            "refused_rate_limited": outcome[rate_limited],
            "other_address_link_ms": round(linked_during[0] * 1000),
            "healthz_polls": watch.report.count,
            "healthz_slowest_ms": watch.report.slowest_ms,
        },
        {
            "over_cap_accepted": 0,
            "other_address_refused": 0,
            "undocumented_close": 0,
            "healthz_slow_or_failed": 0,
        },
    )


async def test_many_addresses_leave_room_for_known_ones(
    crowd_relay: Relay, crowd_pair: Pair
) -> None:
    """Hosts on many fresh addresses fill their share of the handshake slots: together they
    hold ``max_unauthenticated`` minus the reserve, a further fresh address is refused with
    rate_limited (4201), and a cell from an address that authenticated before (the pair's)
    still links while the crowd holds its slots."""
    target = crowd_relay.target
    rate_limited = f.CLOSE_CODES[f.ErrorCode.RATE_LIMITED]
    timed_out = f.CLOSE_CODES[f.ErrorCode.HANDSHAKE_TIMEOUT]
    sources = [f"127.0.1.{i}" for i in range(1, CROWD_LIMIT // PER_ADDRESS + 3)]
    unknown_pool = CROWD_LIMIT - int(CROWD_LIMIT * RESERVE)
    results: dict[str, object] = {}

    async def checks(codes: dict[str, list[int | None]]) -> None:
        refused = sum(c.count(rate_limited) for c in codes.values())
        assert refused == len(sources) * PER_ADDRESS - unknown_pool, refused
        fresh = await websockets.connect(target.ws_url, compression=None,
                                         local_addr=("127.0.2.1", 0))  # fmt: skip
        async with fresh:
            results["fresh"] = await expect_close(fresh, 10)
        link = await connect(crowd_relay.cells["late"], target)  # from 127.0.0.1: known
        await ping(link, b"reserved")
        await link.close()
        results["known_linked"] = True

    async def attack(under_way: asyncio.Event) -> None:
        closes.update(await _idle_crowd(target, sources, PER_ADDRESS, under_way, checks))

    closes: dict[str, list[tuple[int | None, float]]] = {}
    watch = await _under_attack(crowd_relay, crowd_pair, "many addresses flood", attack)
    outcome = Counter(code for got in closes.values() for code, _t in got)
    refused = len(sources) * PER_ADDRESS - unknown_pool
    assert outcome == {timed_out: unknown_pool, rate_limited: refused}, outcome
    assert results == {"fresh": rate_limited, "known_linked": True}
    record(
        SUITE,
        "many addresses flood the handshake",
        {
            "addresses": len(sources),
            "connections": len(sources) * PER_ADDRESS,
            "max_unauthenticated": CROWD_LIMIT,
            "reserved_for_known": CROWD_LIMIT - unknown_pool,
            "held_by_the_crowd": outcome[timed_out],
            "refused_rate_limited": outcome[rate_limited],
            "healthz_polls": watch.report.count,
            "healthz_slowest_ms": watch.report.slowest_ms,
        },
        {"reserve_taken": 0, "known_address_refused": 0, "healthz_slow_or_failed": 0},
    )


async def test_handshake_rate_per_address(strict_relay: Relay) -> None:
    """A host that opens handshakes in a loop (each with a hello that fails) gets its burst,
    then rate_limited (4201) for everything beyond the per-address rate; a cell from another
    address links meanwhile."""
    target = strict_relay.target
    rate_limited = f.CLOSE_CODES[f.ErrorCode.RATE_LIMITED]
    codes: list[int | None] = []
    in_flight = asyncio.Semaphore(ATTACK_CONCURRENCY)
    attempts = STRICT_BURST * 4
    hello_size = len(LinkInitiator(X25519KeyPair.generate().private_bytes(),
                                   target.relay_public).write_hello())  # fmt: skip

    async def one(index: int) -> None:
        async with in_flight:
            ws = await websockets.connect(target.ws_url, compression=None,
                                          local_addr=("127.0.0.4", 0))  # fmt: skip
            async with ws:
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(os.urandom(hello_size))  # a hello that fails: 4000
                codes.append(await expect_close(ws, 30))

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for i in range(attempts):
            group.create_task(one(i))
    elapsed = time.monotonic() - started
    limited = codes.count(rate_limited)
    allowed_at_most = STRICT_BURST + int(elapsed * STRICT_RATE) + 1
    assert attempts - limited <= allowed_at_most, (Counter(codes), elapsed)
    assert limited >= attempts - allowed_at_most > 0
    assert set(codes) <= {rate_limited, f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]}, Counter(codes)
    link = await connect(strict_relay.cells["ops-a"], target, source="127.0.0.5")
    await ping(link, b"not me!!")
    await link.close()
    record(
        SUITE,
        "handshake rate per address",
        {
            "attempts": attempts,
            "rate_per_s": int(STRICT_RATE),
            "burst": STRICT_BURST,
            "refused_rate_limited": limited,
            "milliseconds": round(elapsed * 1000),
        },
        {"over_rate_admitted": 0, "other_address_refused": 0},
    )


async def test_replayed_hello_is_refused_before_any_work(main_relay: Relay) -> None:
    """A recorded hello of an enrolled cell, sent again: the first use is answered with a
    welcome, every replay is closed as a failed handshake (4001) without a welcome — no
    Diffie-Hellman, no database look-up is spent on it — and the cell itself still links."""
    target = main_relay.target
    cell = main_relay.cells["replayed"]
    hello = LinkInitiator(cell.link_key.private_bytes(), target.relay_public).write_hello()
    replays = scaled(30, 500)
    answers: list[tuple[bool, int | None]] = []
    for _ in range(1 + replays):
        async with websockets.connect(target.ws_url, compression=None) as ws:
            await ws.send(hello)
            welcomed = False
            with contextlib.suppress(websockets.ConnectionClosed):
                async with asyncio.timeout(30):
                    welcomed = isinstance(await ws.recv(), bytes)
            if welcomed:
                await ws.close()
                answers.append((True, None))
            else:
                answers.append((False, await expect_close(ws, 30)))
    malformed = f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]
    assert answers[0] == (True, None)
    assert answers[1:] == [(False, malformed)] * replays
    link = await connect(cell, target)
    await ping(link, b"real one")
    await link.close()
    record(
        SUITE,
        "replayed hellos",
        {"replays": replays, "refused_without_welcome": replays},
        {"replay_answered": 0},
    )


# -- flooding one recipient --------------------------------------------------------------------


async def test_flooding_one_recipient_fills_its_quota_exactly(
    main_relay: Relay, main_pair: Pair
) -> None:
    """A sender pipelines envelopes to an offline recipient: the first ``QUOTA`` are accepted,
    every further one gets ERROR queue_full (ref = its message id); the recipient then receives
    exactly the accepted ones, and once it has acknowledged them the sender may send again."""
    target = main_relay.target
    flooder, sink = main_relay.cells["flooder"], main_relay.cells["sink"]
    extra = scaled(20, 200)
    envelopes = [_envelope(sink.cell_id, 4096) for _ in range(QUOTA + extra)]
    answers: dict[bytes, str] = {}
    link = await connect(flooder, target)
    try:
        await _flood(main_relay, main_pair, link, sink, envelopes, answers, extra)
    finally:
        await link.close()


async def _flood(relay: Relay, pair: Pair, link: Link, sink: RawCell,
                 envelopes: list[tuple[bytes, bytes]], answers: dict[bytes, str],
                 extra: int) -> None:  # fmt: skip
    target = relay.target

    async def attack(under_way: asyncio.Event) -> None:
        for index, (_mid, data) in enumerate(envelopes):
            await link.send(f.SendFrame(data))
            if index == QUOTA // 2:
                under_way.set()
        frames = await _frames_until(link, lambda got: len(got) == len(envelopes), 60)
        for frame in frames:
            if isinstance(frame, f.AcceptedFrame):
                answers[frame.message_id] = "accepted"
            else:
                assert isinstance(frame, f.ErrorFrame), frame
                answers[frame.ref] = frame.code

    watch = await _under_attack(relay, pair, "flood", attack)
    ids = [mid for mid, _data in envelopes]
    assert [answers[mid] for mid in ids] == ["accepted"] * QUOTA + [f.ErrorCode.QUEUE_FULL] * extra
    # The recipient gets exactly the accepted envelopes, bytes unchanged, each once.
    inbox = await connect(sink, target)
    delivered: dict[bytes, bytes] = {}
    for _ in range(QUOTA):
        deliver = await inbox.expect(f.DeliverFrame, timeout=30)
        delivered[deliver.envelope[18:34]] = deliver.envelope
        await inbox.send(f.AckFrame(deliver.relay_seq))
    with pytest.raises(TimeoutError):
        await inbox.expect(f.DeliverFrame, timeout=0.5)
    assert delivered == dict(envelopes[:QUOTA])
    await ping(inbox, b"acks-in!")  # the ACKs were read before the PONG
    # The queue drained: the sender is accepted again.
    message_id, data = _envelope(sink.cell_id, 4096)
    answer: f.Frame | None = None
    for _attempt in range(50):  # the deletions commit in the writer's next batch
        await link.send(f.SendFrame(data))
        answer = (await _frames_until(link, lambda got: len(got) == 1))[0]
        if isinstance(answer, f.AcceptedFrame):
            break
        assert isinstance(answer, f.ErrorFrame)
        assert answer.code == f.ErrorCode.QUEUE_FULL
        await asyncio.sleep(0.1)
    assert isinstance(answer, f.AcceptedFrame)
    assert answer.message_id == message_id
    deliver = await inbox.expect(f.DeliverFrame, timeout=30)
    await inbox.send(f.AckFrame(deliver.relay_seq))
    await inbox.close()
    record(
        SUITE,
        "flooding one recipient",
        {
            "envelopes_sent": len(envelopes),
            "quota": QUOTA,
            "accepted": QUOTA,
            "refused_queue_full": extra,
            "delivered": len(delivered),
            "healthz_polls": watch.report.count,
            "healthz_slowest_ms": watch.report.slowest_ms,
        },
        {
            "accepted_over_quota": 0,
            "lost": 0,
            "duplicated": 0,
            "undocumented_error": 0,
            "healthz_slow_or_failed": 0,
        },
    )


# -- draining one-time prekeys -----------------------------------------------------------------


async def test_prekey_draining_peers(main_relay: Relay, main_pair: Pair) -> None:
    """Two paired peers fetch the owner's bundle concurrently until its one-time prekeys are
    gone: each prekey is served once, later bundles are flagged and still usable, the owner is
    told PREKEYS_LOW, replenishes, and the stock stops at ``max_one_time_prekeys``."""
    target = main_relay.target
    stock = main_relay.cells["stock"]
    drainers = [main_relay.cells["drainer-1"], main_relay.cells["drainer-2"]]
    fetches = STOCK + scaled(10, 100)  # in all, over both drainers
    owner = await connect(stock, target)
    bundles: list[tuple[bool, PrekeyBundle]] = []

    async def drain(cell: RawCell, count: int) -> None:
        link = await connect(cell, target)
        for _ in range(count):
            request_id = link.request_id()
            await link.send(f.FetchBundleFrame(request_id, stock.cell_id))
            frame = await link.expect(f.BundleFrame, timeout=30)
            assert frame.request_id == request_id
            bundle = PrekeyBundle.decode(frame.bundle)
            bundle.verify()
            assert bundle.cell_id == stock.cell_id
            assert frame.no_one_time_prekey == (bundle.one_time_prekey is None)  # M-FRM-5
            bundles.append((frame.no_one_time_prekey, bundle))
        await link.close()

    async def attack(under_way: asyncio.Event) -> None:
        work = asyncio.gather(drain(drainers[0], fetches // 2),
                              drain(drainers[1], fetches - fetches // 2))  # fmt: skip
        under_way.set()
        await work

    watch = await _under_attack(main_relay, main_pair, "prekey drain", attack)
    served = [b.one_time_prekey.prekey_id for _flag, b in bundles if b.one_time_prekey]
    assert len(served) == STOCK
    assert sorted(served) == sorted(stock.otks)  # every one, each exactly once
    for prekey in (b.one_time_prekey for _flag, b in bundles if b.one_time_prekey):
        assert bytes(prekey.public) == bytes(stock.otks[prekey.prekey_id].public)
    assert sum(flag for flag, _b in bundles) == fetches - STOCK
    # The owner was warned, down to zero.
    lows = await _frames_of(owner, f.PrekeysLowFrame)
    assert lows
    assert lows[-1].remaining == 0
    assert all(x.remaining < LOW_THRESHOLD for x in lows)
    # Replenishing works, up to the per-cell limit and not one prekey more.
    uploaded, refused, next_id = 0, 0, 10_000
    while True:
        batch = tuple(
            f.OneTimePrekey(next_id + i, bytes(X25519KeyPair.generate().public))
            for i in range(min(200, MAX_PREKEYS))
        )
        next_id += len(batch)
        request_id = owner.request_id()
        await owner.send(f.UploadPrekeysFrame(request_id, batch))
        frame = (await _frames_until(owner, lambda got: len(got) == 1))[0]
        if isinstance(frame, f.ErrorFrame):
            assert frame.code == f.ErrorCode.PREKEY_LIMIT
            assert frame.ref == request_id.to_bytes(4, "big")
            refused += 1
            break
        assert isinstance(frame, f.UploadedFrame)
        assert frame.request_id == request_id
        uploaded += frame.stored
        assert uploaded <= MAX_PREKEYS
    assert uploaded == MAX_PREKEYS
    link = await connect(drainers[0], target)
    fresh = PrekeyBundle.decode(await link.fetch_bundle(stock))
    assert fresh.one_time_prekey is not None
    assert fresh.one_time_prekey.prekey_id >= 10_000
    await link.close()
    await owner.close()
    record(
        SUITE,
        "prekey-draining peers",
        {
            "fetches": fetches,
            "drainers": len(drainers),
            "one_time_prekeys_served": len(served),
            "flagged_bundles": fetches - STOCK,
            "prekeys_low_warnings": len(lows),
            "prekeys_uploaded_to_limit": uploaded,
            "healthz_polls": watch.report.count,
            "healthz_slowest_ms": watch.report.slowest_ms,
        },
        {
            "prekey_served_twice": 0,
            "stock_over_limit": 0,
            "fetch_refused": 0,
            "healthz_slow_or_failed": 0,
        },
    )


async def _frames_of(link: Link, kind: type[f.PrekeysLowFrame]) -> list[f.PrekeysLowFrame]:
    """Every ``kind`` frame already sent on ``link`` (read up to a PONG we ask for)."""
    await link.send(f.PingFrame(b"collect!"))
    found: list[f.PrekeysLowFrame] = []
    while True:
        frame = await link.recv(30)
        if isinstance(frame, kind):
            found.append(frame)
        elif isinstance(frame, f.PongFrame) and frame.opaque == b"collect!":
            return found
