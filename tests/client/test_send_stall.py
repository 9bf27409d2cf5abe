"""``Cell.send`` returns once the message is in the outbox, whatever the link is doing: a
stalled connection (the network stops taking bytes) delays the sending, not the caller, and
what was queued goes out, in order, on the next link."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from liaison.client import Message
from liaison.client.transport import Connection, Transport

from .relaykit import MemoryRelay, memory_relay


class StallingTransport:
    """Passes everything through until ``stall`` is set; from then on every send on the
    current connection blocks (as a full TCP window does) until the connection is dropped."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.stall = asyncio.Event()
        self.current: _Stalling | None = None

    async def connect(self) -> Connection:
        self.current = _Stalling(self, await self.inner.connect())
        return self.current


class _Stalling:
    def __init__(self, owner: StallingTransport, inner: Connection) -> None:
        self._owner = owner
        self._inner = inner
        self._dropped = asyncio.Event()

    @property
    def close_code(self) -> int | None:
        return self._inner.close_code

    async def send(self, data: bytes) -> None:
        if self._owner.stall.is_set():
            await self._dropped.wait()
            raise ConnectionError("dropped while stalled")
        await self._inner.send(data)

    async def recv(self) -> bytes | None:
        return await self._inner.recv()

    async def close(self) -> None:
        self._dropped.set()
        await self._inner.close()

    async def drop(self) -> None:
        await self.close()


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[MemoryRelay]:
    async with memory_relay(tmp_path) as running:
        yield running


async def test_send_returns_while_the_link_is_stalled(relay: MemoryRelay) -> None:
    paris_home = await relay.new_cell("paris")
    berlin_home = await relay.new_cell("berlin", pair_with=("paris",))
    stalling = StallingTransport(relay.transport)
    async with relay.open(paris_home, transport=stalling, backoff=(0.01, 0.05)) as paris, \
            relay.open(berlin_home) as berlin:  # fmt: skip
        first = await paris.send("berlin", "before the stall")
        assert await paris.wait_status(first, "accepted", timeout=5) == "accepted"
        stalling.stall.set()
        sent = []
        async with asyncio.timeout(2):  # before: the second send() blocked in the link
            for i in range(5):
                sent.append(await paris.send("berlin", f"stalled {i}"))
        assert [await paris.status(m) for m in sent] == ["queued"] * 5
        stalling.stall.clear()
        assert stalling.current is not None
        await stalling.current.drop()  # the network gives up; the cell reconnects
        for message_id in sent:
            assert await paris.wait_status(message_id, "accepted", timeout=10) == "accepted"
        got: list[Message] = []
        async with asyncio.timeout(10), contextlib.aclosing(berlin.messages()) as stream:
            async for message in stream:
                got.append(message)
                if len(got) == 6:
                    break
        assert [m.body for m in got] == ["before the stall"] + [f"stalled {i}" for i in range(5)]
