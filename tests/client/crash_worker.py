"""A cell process for the crash-safety test, meant to be SIGKILLed at any moment.

Run as a script (``python crash_worker.py MODE ...``); it prints ``ready`` once the cell is
open and connected, and writes what it did to a journal file, flushed and fsynced line by line
*before* it goes on, so the journal is true whenever the process dies:

``send HOME PEER JOURNAL START COUNT PACE LINGER [PREFIX]``
    For i in START..START+COUNT-1: journal ``about i``, ``await cell.send(PEER, f"m{i}")``
    (``PREFIX`` instead of ``m`` if given), journal ``sent i <message id>``, sleep PACE
    seconds. Then wait until the relay accepted every outbox entry, and up to LINGER seconds
    more for this batch's delivery receipts (the link stays up, receiving), and exit. The
    SDK's outbox is the only resend mechanism: this script never sends a number twice, and
    never resends anything itself.
``flush HOME JOURNAL``
    Open, wait until every outbox entry is at least accepted, exit.
``die HOME``
    Take one message from ``cell.messages()`` and SIGKILL this process at once, before doing
    anything with it (an application crashing right after the hand-over).
``recv HOME JOURNAL IDLE``
    Iterate ``cell.messages()``; for each, journal ``msg <id> <sender> <body>`` (or
    ``bad <id> <sender> <error>`` for one that did not open), then ``mark_read`` it. Exit
    after IDLE seconds without a message.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import IO

from liaison.client import Cell, Message, MessageExpired, SendFailed, StatusTimeout

ACCEPT_TIMEOUT = 20.0


class Journal:
    """Append-only lines, each durable before ``write`` returns."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def ready() -> None:
    print("ready", flush=True)


async def wait_all_accepted(cell: Cell, journal: Journal) -> None:
    pending = [e.message_id for e in cell.outbox(limit=10_000, include_receipts=True)]
    for message_id in pending:
        status: str
        try:
            status = await cell.wait_status(message_id, "accepted", ACCEPT_TIMEOUT)
        except (StatusTimeout, SendFailed, MessageExpired) as exc:
            status = exc.status
        if status not in ("accepted", "delivered", "read"):
            journal.write(f"stuck {message_id} {status}")
            raise SystemExit(f"{message_id} is {status} after {ACCEPT_TIMEOUT} s")
    journal.write("flushed")


async def send(
    home: Path, peer: str, journal: Journal, start: int, count: int, pace: float,
    linger: float, prefix: str,
) -> None:  # fmt: skip
    async with Cell.open(home) as cell:
        ready()
        sent = []
        for i in range(start, start + count):
            journal.write(f"about {i}")
            message_id = await cell.send(peer, f"{prefix}{i}")
            journal.write(f"sent {i} {message_id}")
            sent.append(message_id)
            await asyncio.sleep(pace)
        await wait_all_accepted(cell, journal)
        deadline = asyncio.get_running_loop().time() + linger
        for message_id in sent:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                if remaining <= 0:
                    break
                await cell.wait_status(message_id, "delivered", remaining)
            except (StatusTimeout, SendFailed, MessageExpired):
                break


async def flush(home: Path, journal: Journal) -> None:
    async with Cell.open(home) as cell:
        ready()
        await wait_all_accepted(cell, journal)


async def receive(home: Path, journal: Journal, idle: float) -> None:
    async with Cell.open(home) as cell:
        ready()
        messages = cell.messages()
        while True:
            try:
                message: Message = await asyncio.wait_for(anext(messages), idle)
            except TimeoutError:
                break
            if message.error is None:
                journal.write(f"msg {message.id} {message.sender} {message.text}")
                await message.mark_read()
            else:
                journal.write(f"bad {message.id} {message.sender} {message.error}")
        await messages.aclose()


async def die_after_hand_over(home: Path) -> None:
    async with Cell.open(home) as cell:
        ready()
        async for _message in cell.messages():
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    if argv[0] == "die":
        asyncio.run(die_after_hand_over(Path(argv[1])))
        return
    mode, home, rest = argv[0], Path(argv[1]), argv[2:]
    if mode == "send":
        journal = Journal(Path(rest[1]))
        start, count, pace, linger = int(rest[2]), int(rest[3]), float(rest[4]), float(rest[5])
        prefix = rest[6] if len(rest) > 6 else "m"
        run = send(home, rest[0], journal, start, count, pace, linger, prefix)
    elif mode == "flush":
        journal = Journal(Path(rest[0]))
        run = flush(home, journal)
    elif mode == "recv":
        journal = Journal(Path(rest[0]))
        run = receive(home, journal, float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    try:
        asyncio.run(run)
    finally:
        journal.close()


if __name__ == "__main__":
    main(sys.argv[1:])
