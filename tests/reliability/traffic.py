"""In-process traffic for the reliability suites: open cells that send numbered messages in all
four precedences to their channel peer and hand what they receive to an idempotent
application, recorded in a :class:`~tests.reliability.ledger.Ledger`.

A :class:`Party` is one open cell and its application: the consumer iterates
``messages(confirm=True)``, records a message under its id the first time it sees it (a second
sight only counts in ``ledger.again``) and then calls ``cell.confirm`` — the exactly-once
recipe of the SDK's README. :class:`Gate` lets a test hold senders back at a point in their
streams until it has done something (e.g. killed the relay), so that the disruption is
guaranteed to land mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liaison.client import Cell

from .ledger import Ledger, body, precedence_of

__all__ = ["Gate", "Party", "open_parties", "wait_for"]


class Gate:
    """Senders may send message ``i`` once ``i < limit`` (``None``: no limit)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._changed = asyncio.Event()

    def set(self, limit: int | None) -> None:
        self.limit = limit
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, index: int) -> None:
        while self.limit is not None and index >= self.limit:
            await self._changed.wait()


@dataclass
class Party:
    name: str
    peer: str
    cell: Cell
    ledger: Ledger
    salt: int
    seen: set[str] = field(default_factory=set)
    next_index: int = 0
    slowest_send: float = 0.0
    """The longest ``send()`` took, seconds (it awaits the link's send buffer)."""
    task: asyncio.Task[None] | None = None

    def start_consumer(self) -> None:
        self.task = asyncio.create_task(self._consume(), name=f"consume-{self.name}")

    async def _consume(self) -> None:
        async for message in self.cell.messages(confirm=True):
            if message.id in self.seen:
                self.ledger.again += 1
            else:
                self.seen.add(message.id)
                self.ledger.handle(self.name, message.id, message.text, message.precedence,
                                   message.error)  # fmt: skip
            await self.cell.confirm(message)

    async def send_next(self) -> None:
        """Send the next message of this party's stream (its number picks its precedence)."""
        index = self.next_index
        self.next_index += 1
        precedence = precedence_of(index, self.salt)
        text = body(self.name, index, precedence)
        self.ledger.attempt(text, self.peer)
        began = time.monotonic()
        await self.cell.send(self.peer, text, precedence=precedence)
        self.slowest_send = max(self.slowest_send, time.monotonic() - began)
        self.ledger.done(text)

    async def send_stream(self, count: int, pace: float, rng: random.Random, gate: Gate) -> None:
        """``count`` more messages, ``pace`` seconds apart on average, in bursts of 1..8."""
        left = count
        while left > 0:
            burst = min(left, rng.randint(1, 8))
            for _ in range(burst):
                await gate.wait(self.next_index)
                await self.send_next()
            left -= burst
            await asyncio.sleep(pace * burst * rng.uniform(0.5, 1.5))

    async def undelivered(self) -> list[str]:
        """User messages this cell sent that have no delivery receipt (yet)."""
        entries = self.cell.outbox(limit=1_000_000)
        return [e.message_id for e in entries if e.status not in ("delivered", "read")]

    def check(self) -> None:
        """Raise the consumer's failure, if it failed (it runs until the party stops)."""
        if self.task is not None and self.task.done():
            self.task.result()
            raise AssertionError(f"the consumer of {self.name} ended early")

    async def stop(self) -> None:
        if self.task is None:
            return
        self.check()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@contextlib.asynccontextmanager
async def open_parties(
    homes: dict[str, Path], channels: Iterable[tuple[str, str]], ledger: Ledger, **options: Any
) -> AsyncIterator[dict[str, Party]]:
    """Open every cell (``options`` go to ``Cell.open``) and start its consumer; yields the
    parties by name. Closes them all on exit."""
    parties: dict[str, Party] = {}
    async with contextlib.AsyncExitStack() as stack:
        for salt, (a, b) in enumerate(channels):
            for name, peer in ((a, b), (b, a)):
                cell = await stack.enter_async_context(Cell.open(homes[name], **options))
                parties[name] = Party(name, peer, cell, ledger, salt * 2 + (name == b))
        for party in parties.values():
            party.start_consumer()
        try:
            yield parties
        finally:
            for party in parties.values():
                await party.stop()


async def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``condition`` until it holds (``True``) or ``timeout`` seconds pass (``False``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(step)
    return True
