"""A cell process for the SDK-crash scenario, meant to be SIGKILLed at any moment.

Extends ``tests/client/crash_worker.py`` (which stays as it is for its own test) with a duplex
mode: one process per cell that sends its next numbered messages, in all four precedences, to
its channel peer *and* hands what it receives to an idempotent application, the
exactly-once recipe of the SDK's README (``messages(confirm=True)``, record, then
``confirm``).

``python crash_worker.py HOME NAME PEER JOURNAL START COUNT PACE IDLE SALT``

Everything it does is journaled, one line at a time, flushed and fsynced *before* it goes on,
so the journal is true whenever the process dies:

``start``
    the cell is open and linked (also printed as ``ready`` on stdout);
``about I`` / ``sent I ID``
    before / after ``cell.send(PEER, "NAME I PRECEDENCE")`` for I in START..START+COUNT-1,
    ``PACE`` seconds apart on average;
``got ID``
    ``messages(confirm=True)`` yielded a message; the application then takes up to 10 ms to
    handle it, records it, takes up to 10 ms more and confirms it — crash windows a SIGKILL
    can hit;
``msg ID PRECEDENCE BODY`` / ``bad ID ERROR``
    the application recorded a message (the first time it saw its id; the ids of earlier
    runs are read back from the journal);
``again ID``
    the id was recorded already (by a run that died before confirming it): only confirmed;
``conf ID``
    ``cell.confirm`` returned for it;
``flushed`` / ``done``
    the relay accepted every outbox entry / nothing arrived for IDLE seconds: a clean exit.

The SDK's outbox is the only resend mechanism: this script never sends a number twice.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from liaison.client import Cell, MessageExpired, SendFailed, StatusTimeout

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.client.crash_worker import Journal
from tests.reliability.ledger import body, precedence_of

ACCEPT_TIMEOUT = 60.0


def handled_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    lines = [line.split(" ") for line in path.read_text(encoding="utf-8").splitlines()]
    return {parts[1] for parts in lines if parts[0] in ("msg", "bad") and len(parts) > 1}


async def duplex(
    home: Path, name: str, peer: str, path: Path, start: int, count: int, pace: float,
    idle: float, salt: int,
) -> None:  # fmt: skip
    seen = handled_ids(path)
    journal = Journal(path)
    loop = asyncio.get_running_loop()
    last = loop.time()

    async def consume(cell: Cell) -> None:
        nonlocal last
        work = random.Random(f"{name}-{start}-work")
        async for message in cell.messages(confirm=True):
            last = loop.time()
            journal.write(f"got {message.id}")
            await asyncio.sleep(work.uniform(0.0, 0.01))  # the application's handling
            if message.id in seen:
                journal.write(f"again {message.id}")
            elif message.error is not None:
                journal.write(f"bad {message.id} {message.error}")
            else:
                journal.write(f"msg {message.id} {message.precedence} {message.text}")
            seen.add(message.id)
            await asyncio.sleep(work.uniform(0.0, 0.01))  # ... and whatever it does next
            await cell.confirm(message)
            journal.write(f"conf {message.id}")

    try:
        async with Cell.open(home, backoff=(0.05, 0.5), wait_connected=60.0,
                             request_timeout=30.0) as cell:  # fmt: skip
            journal.write("start")
            print("ready", flush=True)
            consumer = asyncio.create_task(consume(cell))
            rng = random.Random(f"{name}-{start}")
            for index in range(start, start + count):
                precedence = precedence_of(index, salt)
                journal.write(f"about {index}")
                message_id = await cell.send(peer, body(name, index, precedence),
                                             precedence=precedence)  # fmt: skip
                journal.write(f"sent {index} {message_id}")
                await asyncio.sleep(pace * rng.uniform(0.0, 2.0))
            for entry in cell.outbox(limit=1_000_000, include_receipts=True):
                status: str
                try:
                    status = await cell.wait_status(entry.message_id, "accepted",
                                                    ACCEPT_TIMEOUT)  # fmt: skip
                except (StatusTimeout, SendFailed, MessageExpired) as exc:
                    status = exc.status
                if status not in ("accepted", "delivered", "read"):
                    raise SystemExit(f"{entry.message_id} is {status} after {ACCEPT_TIMEOUT} s")
            journal.write("flushed")
            while loop.time() - last < idle:
                if consumer.done():
                    consumer.result()
                    raise SystemExit("the consumer ended early")
                await asyncio.sleep(0.05)
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        journal.write("done")
    finally:
        journal.close()


def main(argv: list[str]) -> None:
    home, name, peer, path, start, count, pace, idle, salt = argv
    asyncio.run(duplex(Path(home), name, peer, Path(path), int(start), int(count), float(pace),
                       float(idle), int(salt)))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
