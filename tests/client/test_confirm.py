"""``messages(confirm=True)`` and ``Cell.confirm``: exactly-once handover for an idempotent
application (the SDK crash scenario of ``tests/reliability/test_crash.py`` kills real processes;
these pin the semantics one step at a time, against the real relay logic in memory).

* one iteration yields each message once; an unconfirmed one is yielded again by the next
  ``messages(confirm=True)`` (a new iteration, or the same cell reopened, as after a crash);
* ``confirm`` and ``mark_read`` make the handover final, durably, for every later iteration;
* the default ``messages()`` keeps its at-most-once behaviour, and a message it already
  handed over is not yielded again by ``messages(confirm=True)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from liaison.client import Cell, Message

from .relaykit import MemoryRelay, memory_relay


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[MemoryRelay]:
    async with memory_relay(tmp_path) as relay:
        await relay.new_cell("paris")
        await relay.new_cell("berlin", pair_with=("paris",))
        yield relay


async def take(cell: Cell, count: int, *, confirm: bool, wait: float = 10.0) -> list[Message]:
    """The next ``count`` messages of a new iteration (fewer if none comes for ``wait`` s)."""
    out: list[Message] = []
    with contextlib.suppress(TimeoutError):
        async with contextlib.aclosing(cell.messages(confirm=confirm)) as stream:
            while len(out) < count:
                async with asyncio.timeout(wait):
                    out.append(await anext(stream))
    return out


async def send(relay: MemoryRelay, *bodies: str) -> None:
    async with relay.open(relay.home_root / "paris") as paris:
        for body in bodies:
            await paris.send("berlin", body)


async def test_unconfirmed_messages_are_yielded_again_until_confirmed(
    relay: MemoryRelay,
) -> None:
    await send(relay, "m0", "m1", "m2")
    berlin = relay.home_root / "berlin"
    async with relay.open(berlin) as cell:
        first = await take(cell, 3, confirm=True)
        assert [m.text for m in first] == ["m0", "m1", "m2"]
        # Nothing confirmed yet: a new iteration yields them all again, in the same order.
        assert [m.id for m in await take(cell, 3, confirm=True)] == [m.id for m in first]
        await cell.confirm(first[0])
        await cell.confirm(first[0])  # idempotent
    # Reopened (as after a crash): only the unconfirmed ones come back.
    async with relay.open(berlin) as cell:
        again = await take(cell, 3, confirm=True, wait=0.5)
        assert [m.text for m in again] == ["m1", "m2"]
        await again[0].mark_read()  # reading a message confirms it too
    async with relay.open(berlin) as cell:
        last = await take(cell, 3, confirm=True, wait=0.5)
        assert [m.text for m in last] == ["m2"]
        await cell.confirm(*last)
        assert await take(cell, 1, confirm=True, wait=0.3) == []
        assert await take(cell, 1, confirm=False, wait=0.3) == []
        assert [m.text for m in cell.inbox()] == ["m0", "m1", "m2"]  # all still stored


async def test_one_iteration_yields_each_message_once_and_then_new_ones(
    relay: MemoryRelay,
) -> None:
    await send(relay, "m0")
    async with relay.open(relay.home_root / "berlin") as cell:
        async with contextlib.aclosing(cell.messages(confirm=True)) as stream:
            async with asyncio.timeout(10):
                first = await anext(stream)
            await send(relay, "m1")  # unconfirmed m0 is not yielded again meanwhile
            async with asyncio.timeout(10):
                second = await anext(stream)
        assert [first.text, second.text] == ["m0", "m1"]


async def test_default_iteration_is_unchanged_and_final(relay: MemoryRelay) -> None:
    await send(relay, "m0", "m1")
    berlin = relay.home_root / "berlin"
    async with relay.open(berlin) as cell:
        assert [m.text for m in await take(cell, 1, confirm=False)] == ["m0"]
    async with relay.open(berlin) as cell:
        # m0 was handed over (at most once): neither iteration yields it again.
        assert [m.text for m in await take(cell, 2, confirm=True, wait=0.5)] == ["m1"]
        assert [m.text for m in await take(cell, 2, confirm=False, wait=0.5)] == ["m1"]
        assert await take(cell, 1, confirm=True, wait=0.3) == []
