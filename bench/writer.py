"""The group-commit writer alone: rows/s, wall µs/row and CPU µs/row on a temporary SQLite file.

    .venv/bin/python bench/writer.py [--rows 20000] [--size 4096] [--recipients 100] [--runs 3]

Every scenario runs on a fresh database migrated to head (WAL, ``synchronous=FULL``: every
batch is fsync'd), with the relay's default quota on every send (1000 messages per queue;
``--rows`` spread over ``--recipients`` queues stay under it):

* ``burst send``: ``--rows`` concurrent ``enqueue_send`` of ``--size``-byte rows, awaited
  together (batches of up to 512, as in the relay);
* ``burst ack``: the same rows acknowledged the same way (``enqueue_ack``, as a reader loop
  does): deletes plus tombstones;
* ``relay mix``: ``--rows`` sends arriving 512 at a time, each acknowledged as soon as it is
  stored (as a connected recipient does): batches mix new rows with deletes, and the queues
  stay short; the figures are per message (send + ack);
* ``serial send``: one ``submit_send`` at a time, each a batch of one: the cost of one batch at
  low load;
* ``sqlite3 floor``: the same rows inserted in batches of 512 with the bare ``sqlite3`` module
  (one multi-row ``INSERT ... RETURNING`` per batch, same schema, same pragmas): what SQLite and
  the disk cost without any Python above them.

CPU is the process's (every thread: the event loop and the writer's thread); it is the figure
that matters when the relay shares one core with everything else, and it drifts less than wall
time on a shared machine. Medians of ``--runs`` runs. This is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from liaison.server import migrate
from liaison.server.db import create_engine
from liaison.server.store import EnvelopeRow
from liaison.server.writer import GroupCommitWriter

FAR = 4_000_000_000
QUOTA = (1000, 256 * 1024 * 1024)
BATCH = 512


def make_rows(count: int, size: int, recipients: int) -> list[EnvelopeRow]:
    cells = [os.urandom(16) for _ in range(recipients)]
    sender = os.urandom(16)
    data = os.urandom(size)
    now = int(time.time() * 1000)
    return [
        EnvelopeRow(cells[i % recipients], sender, os.urandom(16), 3, FAR, now, data)
        for i in range(count)
    ]


Sample = tuple[float, float]  # wall seconds, CPU seconds


async def timed(work: Callable[[], Awaitable[object]]) -> Sample:
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return time.perf_counter() - wall, time.process_time() - cpu


async def writer_run(args: argparse.Namespace) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'w.db'}"
        await migrate.upgrade_async(url)
        engine = create_engine(url)
        rows = make_rows(args.rows, args.size, args.recipients)
        try:
            async with GroupCommitWriter(engine, BATCH, max_pending=10 * args.rows) as writer:
                await writer.submit_send(make_rows(1, args.size, 1)[0], QUOTA)  # warm up
                results: list[tuple[int, bool]] = []

                async def sends() -> None:
                    results.extend(
                        await asyncio.gather(*(writer.enqueue_send(r, QUOTA) for r in rows))
                    )

                out["burst send"] = await timed(sends)
                assert not any(duplicate for _, duplicate in results)

                async def acks() -> None:
                    acked = [
                        writer.enqueue_ack(r.recipient, s)
                        for r, (s, _) in zip(rows, results, strict=True)
                    ]
                    assert all(await asyncio.gather(*acked))

                out["burst ack"] = await timed(acks)

                mixed = make_rows(args.rows, args.size, args.recipients)
                acked: list[asyncio.Future[bool]] = []

                def ack_when_stored(
                    row: EnvelopeRow, stored: asyncio.Future[tuple[int, bool]]
                ) -> None:
                    acked.append(writer.enqueue_ack(row.recipient, stored.result()[0]))

                async def relay_mix() -> None:
                    for start in range(0, len(mixed), BATCH):
                        chunk = mixed[start : start + BATCH]
                        stored = [writer.enqueue_send(r, QUOTA) for r in chunk]
                        for r, future in zip(chunk, stored, strict=True):
                            future.add_done_callback(functools.partial(ack_when_stored, r))
                        await asyncio.sleep(0)  # new sends arrive while earlier ones commit
                    await writer.flush()
                    await writer.flush()  # the acks enqueued by the last sends' callbacks
                    assert all(await asyncio.gather(*acked))

                out["relay mix"] = await timed(relay_mix)

                serial = make_rows(args.serial, args.size, args.recipients)

                async def one_by_one() -> None:
                    for r in serial:
                        await writer.submit_send(r, QUOTA)

                wall, cpu = await timed(one_by_one)
                out["serial send"] = (wall * args.rows / len(serial), cpu * args.rows / len(serial))
        finally:
            await engine.dispose()
    return out


async def sqlite_floor(args: argparse.Namespace) -> Sample:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.db"
        await migrate.upgrade_async(f"sqlite+aiosqlite:///{path}")
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
                conn.execute(f"PRAGMA {pragma}")
            rows = make_rows(args.rows, args.size, args.recipients)
            columns = "recipient, sender, message_id, precedence, expires_at, received_at_ms"
            wall, cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                params: list[object] = []
                for r in chunk:
                    params += [r.recipient, r.sender, r.message_id, r.precedence, r.expires_at]
                    params += [r.received_at_ms, len(r.data), r.data]
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    f"INSERT INTO envelopes ({columns}, size, data) VALUES {values} "
                    "ON CONFLICT (sender, message_id) DO NOTHING RETURNING seq, sender, message_id",
                    params,
                ).fetchall()
                conn.execute("COMMIT")
            return time.perf_counter() - wall, time.process_time() - cpu
        finally:
            conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--recipients", type=int, default=100)
    parser.add_argument("--serial", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    samples: dict[str, list[Sample]] = {}
    for _ in range(args.runs):
        for name, sample in (await writer_run(args)).items():
            samples.setdefault(name, []).append(sample)
        samples.setdefault("sqlite3 floor", []).append(await sqlite_floor(args))
    n = args.rows
    print(f"{n} x {args.size} B rows, {args.recipients} recipients, median of {args.runs} runs")
    print(f"{'scenario':<14}{'rows/s':>9}{'wall µs/row':>13}{'CPU µs/row':>12}")
    for name, runs in samples.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:<14}{n / wall:>9.0f}{wall / n * 1e6:>13.1f}{cpu / n * 1e6:>12.1f}")


if __name__ == "__main__":
    uvloop.run(main())
