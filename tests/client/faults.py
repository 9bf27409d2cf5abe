"""Network faults for SDK tests, as transports (the SDK's own seam): no SDK code is replaced.

* :class:`CutBeforeAck` passes everything through, except that after a long message from the
  relay (a DELIVER) the next short message from the cell (its ACK) is not sent: the
  connection is closed instead, as if the cell crashed or the network failed between storing
  a message and acknowledging it. The relay then delivers the envelope again on the next link.
* :func:`impersonate` opens a raw link with a cell's own keys (read from its state file) using
  the SDK's link layer, to inject frames the SDK would never send.
"""

from __future__ import annotations

from pathlib import Path

from liaison.client.link import Link, open_link
from liaison.client.state import Keys, Store
from liaison.client.transport import Connection, Transport
from liaison.protocol import frames as f


class CutBeforeAck:
    """A transport whose first ``cuts`` ACKs never leave: the connection drops instead."""

    def __init__(self, inner: Transport, cuts: int = 1) -> None:
        self.inner = inner
        self.cuts = cuts
        self.connects = 0

    async def connect(self) -> Connection:
        self.connects += 1
        return _Cutting(self, await self.inner.connect())


class _Cutting:
    def __init__(self, owner: CutBeforeAck, inner: Connection) -> None:
        self._owner = owner
        self._inner = inner
        self._after_deliver = False

    @property
    def close_code(self) -> int | None:
        return self._inner.close_code

    async def send(self, data: bytes) -> None:
        if self._after_deliver and len(data) <= 64 and self._owner.cuts > 0:
            self._owner.cuts -= 1
            await self._inner.close()
            raise ConnectionError("cut before the ACK")
        self._after_deliver = False
        await self._inner.send(data)

    async def recv(self) -> bytes | None:
        message = await self._inner.recv()
        if message is not None and len(message) > 1000:
            self._after_deliver = True
        return message

    async def close(self) -> None:
        await self._inner.close()


def cell_keys(home: Path, passphrase: str | None = None) -> tuple[Keys, bytes, bytes]:
    """``(keys, cell_id, relay_key)`` from a cell's state file."""
    store = Store.open(home, passphrase)
    try:
        assert store.keys is not None
        assert store.cell_id is not None
        return store.keys, store.cell_id, store.relay_key
    finally:
        store.close()


async def impersonate(transport: Transport, home: Path) -> Link:
    """A live raw link as the cell of ``home`` (its SDK must not be connected)."""
    keys, cell_id, relay_key = cell_keys(home)
    link = await open_link(transport, keys.link, relay_key, cell_id)
    await link.send(f.PingFrame(b"liveness"))
    return link


async def expect(link: Link, kind: type[f.Frame], timeout: float = 5.0) -> f.Frame:
    """The next frame of ``kind`` on a raw link, skipping PING (answered), PONG, PREKEYS_LOW,
    PEERS and DELIVER (not acknowledged, so the relay keeps it)."""
    import asyncio

    while True:
        async with asyncio.timeout(timeout):
            frame = await link.recv()
        assert frame is not None, "the link closed"
        if isinstance(frame, kind):
            return frame
        if isinstance(frame, f.PingFrame):
            await link.send(f.PongFrame(frame.opaque))
            continue
        skipped = f.PongFrame | f.PrekeysLowFrame | f.PeersFrame | f.DeliverFrame
        assert isinstance(frame, skipped), type(frame).__name__
