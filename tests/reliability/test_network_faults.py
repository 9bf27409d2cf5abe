"""Network faults (issue #5): a hostile network between the cells and the relay loses,
duplicates and reorders nothing.

A real ``liaison server run`` process (SQLite) with short keep-alive settings (relay ping
interval ``PING_INTERVAL``, idle timeout ``IDLE_TIMEOUT``), and ``CHANNELS`` channels of two
cells each, all open in this process, whose links go through a
:class:`~tests.reliability.faultproxy.FaultProxy`: it cuts connections mid-frame after a random
number of bytes in either direction, stalls one direction for a while (shorter than the ping
interval, longer than it, or longer than the relay's idle timeout) and delays chunks. The cells
(ping interval ``PING_INTERVAL`` too) exchange ``MESSAGES`` messages in all four precedences,
both ways, and reconnect by themselves; faults are injected while they send (and until every
kind of fault has happened at least a few times), then the network heals.

What must hold: every message whose ``send()`` returned was handed to the recipient's
application exactly once, in order per channel within each precedence, nothing else was
handed over, every delivery receipt came back, and one more message each way goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path

from liaison.client.transport import WebSocketTransport

from .faultproxy import Counters, FaultProxy, FrameTracker
from .ledger import Ledger
from .relaykit import KillableRelay, migrate, provision
from .report import record, scaled
from .traffic import Gate, open_parties, wait_for

SEED = int(os.environ.get("LIAISON_RELIABILITY_SEED", "20250605"))

CHANNELS = scaled(4, 10)
MESSAGES = scaled(200, 4_000)
"""Messages in total over all channels and both directions, at least: the cells send on until
every kind of fault has happened often enough (``MIN_FAULTS``)."""
SEND_SECONDS = scaled(4, 90)
PING_INTERVAL = 1.0
IDLE_TIMEOUT = 3.0
STALLS = ((0.2, 0.8), (1.5, 2.8), (3.5, 5.0))
"""Stall lengths: under the ping interval, over it, over the relay's idle timeout."""
CUT_BYTES = 48 * 1024
"""Cuts and stalls fall within the first this many bytes of a direction."""
DELAY = 0.03
MIN_FAULTS = {"cuts_up": 3, "cuts_down": 3, "cuts_mid_frame": 4, "cuts_after_traffic": 2,
              "stalls_over_ping_interval": 2, "stalls_over_idle_timeout": 1,
              "delayed_connections": 2}  # fmt: skip
"""Faults go on until at least these many of each kind were injected."""
DRAIN_TIMEOUT = scaled(90, 300)
TEST_TIMEOUT = scaled(180, 1200)


def _short(counters: Counters) -> list[str]:
    have = counters.as_dict()
    return [kind for kind, least in MIN_FAULTS.items() if have[kind] < least]


async def test_cut_stalled_and_delayed_links_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-network")
    ledger = Ledger()
    started = time.monotonic()
    phases: list[str] = []

    def phase(name: str) -> None:
        phases.append(f"{name} {time.monotonic() - started:.1f}s")

    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    await migrate(url)
    relay = KillableRelay(tmp_path / "relay", url, {
        "ping_interval_seconds": str(PING_INTERVAL), "idle_timeout_seconds": str(IDLE_TIMEOUT),
    })  # fmt: skip
    proxy = FaultProxy(relay.port, random.Random(rng.random()), cut_bytes=CUT_BYTES,
                       stall_seconds=STALLS, ping_interval=PING_INTERVAL,
                       idle_timeout=IDLE_TIMEOUT, delay=DELAY)  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(relay.stop)
        await relay.start()
        await proxy.start()
        stack.push_async_callback(proxy.aclose)
        channels = [(f"nf{i}a", f"nf{i}b") for i in range(CHANNELS)]
        homes = await provision(relay, tmp_path / "cells", channels)
        link = WebSocketTransport(f"ws://127.0.0.1:{proxy.port}/v1/link")
        options = {"transport": link, "backoff": (0.05, 0.5), "ping_interval": PING_INTERVAL,
                   "wait_connected": 60.0, "request_timeout": 30.0}  # fmt: skip
        parties = await stack.enter_async_context(open_parties(homes, channels, ledger, **options))
        phase("provisioned")
        per_party = MESSAGES // len(parties)
        total = per_party * len(parties)

        def progress() -> str:
            return f"{len(ledger.sent)}/{total} sent, {ledger.count_handled()} handled, " \
                f"results {ledger.results()}, faults {proxy.counters.as_dict()}\n" \
                f"{ledger.explain()}"  # fmt: skip

        def all_handled(expected: int) -> bool:
            for party in parties.values():
                party.check()
            return ledger.count_handled() >= expected

        async with asyncio.timeout(TEST_TIMEOUT):
            gate = Gate()
            await asyncio.gather(*(
                party.send_stream(per_party, SEND_SECONDS / per_party,
                                  random.Random(rng.random()), gate)
                for party in parties.values()
            ))  # fmt: skip
            phase("sent")
            # Faults go on until every kind happened often enough (the cells keep sending, a
            # message per cell at a time; bounded), then the network heals: new connections
            # are clean, the faulty ones end or get cut.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DRAIN_TIMEOUT
            while _short(proxy.counters) and loop.time() < deadline:
                await asyncio.gather(*(party.send_next() for party in parties.values()))
                await asyncio.sleep(0.1)
            proxy.faults = False
            assert not _short(proxy.counters), f"faults missing: {_short(proxy.counters)}\n" \
                f"{progress()}"  # fmt: skip
            total = len(ledger.sent)
            phase("faults done")
            assert await wait_for(lambda: all_handled(total), DRAIN_TIMEOUT), progress()
            phase("handled")

            # The sessions still work: one more message each way on every channel.
            await asyncio.gather(*(party.send_next() for party in parties.values()))
            final = total + len(parties)
            assert await wait_for(lambda: all_handled(final), DRAIN_TIMEOUT), progress()
            phase("final handled")

            def missing() -> int:
                return sum(1 for party in parties.values()
                           for e in party.cell.outbox(limit=1_000_000)
                           if e.status not in ("delivered", "read"))  # fmt: skip

            await wait_for(lambda: missing() == 0, DRAIN_TIMEOUT, step=0.2)
            receipts_missing = missing()
            phase("receipts")
        await asyncio.sleep(0.5)  # late duplicates, if any, would show up now
        results = ledger.results()
        logs = relay.output()
        slowest_send = max(party.slowest_send for party in parties.values())

    faults = proxy.counters.as_dict()
    assert results == {"lost": 0, "duplicated": 0, "out_of_order": 0, "unexpected": 0}, (
        f"{results}\n{faults}\n{ledger.explain()}"
    )
    assert ledger.count_handled() == final
    assert receipts_missing == 0, faults
    assert "Traceback" not in logs, logs[-5000:]
    # The faults really happened, and the cells came back after each cut on their own.
    assert not _short(proxy.counters), faults
    assert faults["connections"] > faults["cuts_up"] + faults["cuts_down"], faults
    elapsed = time.monotonic() - started
    print(f"{final} messages, faults {faults}, {ledger.again} re-yields, slowest send() "
          f"{slowest_send:.2f} s, {elapsed:.1f} s "
          f"({', '.join(phases)})")  # fmt: skip
    record(
        "network",
        "proxy cuts, stalls and delays links (sqlite)",
        {"channels": CHANNELS, "messages": final, "faults": proxy.counters.total()} | faults,
        results | {"receipts_missing": receipts_missing},
    )


def _ws_frame(payload: bytes, *, masked: bool) -> bytes:
    size = len(payload)
    if size < 126:
        header = bytes([0x82, size | (0x80 if masked else 0)])
    elif size < 65536:
        header = bytes([0x82, 126 | (0x80 if masked else 0)]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x82, 127 | (0x80 if masked else 0)]) + size.to_bytes(8, "big")
    return header + (b"MASK" if masked else b"") + payload


def test_frame_tracker_tells_frame_boundaries_from_mid_frame() -> None:
    """The proxy's mid-frame count rests on this: boundaries found whatever the chunking."""
    http = b"GET /v1/link HTTP/1.1\r\nHost: x\r\n\r\n"
    for masked in (True, False):
        frames = [_ws_frame(bytes(n), masked=masked) for n in (0, 5, 125, 126, 300, 70_000, 9)]
        stream = http + b"".join(frames)
        bounds, at = {len(http)}, len(http)
        for frame in frames:
            at += len(frame)
            bounds.add(at)
        rng = random.Random(masked)
        for _ in range(20):
            tracker, fed = FrameTracker(), 0
            while fed < len(stream):
                step = rng.randint(1, 5000)
                tracker.feed(stream[fed : fed + step])
                fed += step
            assert tracker.boundaries == bounds
            assert tracker.offset == len(stream)
            assert not tracker.mid_frame(10)  # in the HTTP upgrade
            assert all(not tracker.mid_frame(b) for b in bounds)
            assert tracker.mid_frame(len(http) + len(frames[0]) + 3)
