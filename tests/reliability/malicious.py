"""A malicious relay: the real relay, whose frames to the cells it rewrites at will.

A malicious relay *is* the relay, so it holds the link keys: it sees every frame it sends a
cell in plaintext and can send any frame it likes. :class:`MaliciousRelay` gets that power
without changing the server: each link is served by the relay's own code (the Noise
handshake ``server.link._handshake`` and ``server.relay.Connection``, as in ``relaykit``), but
its socket is a :class:`Tap`. After the handshake the tap takes the link's transport and gives
the connection a stand-in whose ``encrypt`` returns the plaintext frame; the tap's
``send_bytes`` then sees each frame the relay produces (DELIVER, BUNDLE, PEERS, ...) and sends
whatever :meth:`MaliciousRelay.rewrite` returns for it — nothing, the same frame, several,
altered ones — encrypting each with the real transport. Tests also :meth:`Tap.emit` frames
of their own at any time (replays, forgeries, held frames released in another order), and
wait for the cell's ACK of a relay seq (:meth:`Tap.wait_ack`): the cell acknowledges only
after it has committed what the envelope did, so that is when its state can be inspected.

Dropping an envelope for good is :meth:`MaliciousRelay.discard`: the relay deletes it from its
own queue as if the cell had acknowledged it, so it is never delivered again and the sender
is not told (no EXPIRED).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

from liaison.client import Cell
from liaison.client.transport import MemorySocket, MemoryTransport
from liaison.protocol import frames as f
from liaison.protocol.link import LinkTransport
from liaison.server.link import StarletteSocket, _handshake
from liaison.server.relay import Connection, SocketLike
from tests.client.relaykit import MemoryRelay

__all__ = ["FAKE_SEQ_BASE", "MaliciousRelay", "Tap"]

FAKE_SEQ_BASE = 1 << 60
"""Relay seqs the malicious relay makes up start here (far above any real one)."""

Rewrite = Callable[["Tap", f.Frame], Awaitable[Sequence[f.Frame]]]


class _Plain:
    """Stands in for the connection's ``LinkTransport``: ``encrypt`` hands the plaintext frame
    to the tap, which encrypts what it decides to send; ``decrypt`` is the real one, and the
    tap sees each frame the cell sent."""

    def __init__(self, real: LinkTransport, tap: Tap) -> None:
        self._real = real
        self._tap = tap

    def encrypt(self, frame: bytes) -> bytes:
        return frame

    def decrypt(self, message: bytes) -> bytes:
        plain = self._real.decrypt(message)
        self._tap.heard(plain)
        return plain

    @property
    def is_failed(self) -> bool:
        return self._real.is_failed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Tap(SocketLike):
    """The relay's end of one cell link, seen in plaintext (see the module docstring)."""

    def __init__(self, owner: MaliciousRelay, inner: MemorySocket) -> None:
        self.owner = owner
        self.inner = inner
        self.cell_id = b""
        self.acks: set[int] = set()
        self._real: LinkTransport | None = None
        self._lock = asyncio.Lock()
        self._heard = asyncio.Event()

    def attach(self, conn: Connection) -> None:
        """Take over the transport of ``conn`` (after the handshake, before ``run``)."""
        self._real = conn.transport
        self.cell_id = conn.cell_id
        conn.transport = cast(LinkTransport, _Plain(conn.transport, self))
        self.owner.taps[conn.cell_id] = self

    # -- SocketLike ------------------------------------------------------------------------------

    async def send_bytes(self, data: bytes) -> None:
        if self._real is None:  # the handshake: welcome and first frames pass untouched
            await self.inner.send_bytes(data)
            return
        frame = f.decode_frame(data)
        await self.emit(*await self.owner.rewrite(self, frame))

    async def receive_message(self) -> bytes | None:
        return await self.inner.receive_message()

    async def close(self, code: int, reason: str) -> None:
        await self.inner.close(code, reason)

    # -- the malicious relay's hands -------------------------------------------------------------

    async def emit(self, *frames: f.Frame) -> None:
        """Send frames to the cell, in this order, encrypted with the link's real keys."""
        assert self._real is not None, "the link is not up yet"
        async with self._lock:  # one order of Noise nonces and of messages on the wire
            for frame in frames:
                await self.inner.send_bytes(self._real.encrypt(f.encode_frame(frame)))

    def heard(self, plain: bytes) -> None:
        if plain and plain[0] == f.FrameType.ACK:
            frame = f.decode_frame(plain)
            assert isinstance(frame, f.AckFrame)
            self.acks.add(frame.relay_seq)
            self._heard.set()

    async def wait_ack(self, relay_seq: int, timeout: float = 10.0) -> None:
        """Wait until the cell has acknowledged ``relay_seq`` (it has committed the envelope)."""
        async with asyncio.timeout(timeout):
            while relay_seq not in self.acks:
                self._heard.clear()
                await self._heard.wait()


async def _passthrough(_tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
    return [frame]


class MaliciousRelay:
    """A :class:`~tests.client.relaykit.MemoryRelay` whose links go through taps.

    ``on_frame`` decides what each relay frame to a cell becomes (default: itself). Every
    DELIVER the real relay produced is kept in ``delivered`` (recipient, frame) and every
    BUNDLE in ``bundles``, before ``on_frame`` sees it, for later replays and forgeries.
    """

    def __init__(self, relay: MemoryRelay) -> None:
        self.relay = relay
        self.transport = MemoryTransport(self._serve)
        self.taps: dict[bytes, Tap] = {}
        self.on_frame: Rewrite = _passthrough
        self.delivered: list[tuple[bytes, f.DeliverFrame]] = []
        self.bundles: list[f.BundleFrame] = []
        self._fake = itertools.count(FAKE_SEQ_BASE)

    async def _serve(self, socket: MemorySocket) -> None:
        tap = Tap(self, socket)
        relay = self.relay.relay
        conn = await _handshake(relay, self.relay.relay_key, cast(StarletteSocket, tap))
        if conn is None:
            return
        tap.attach(conn)
        relay.hub.register(conn)
        await conn.run()

    async def rewrite(self, tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
        if isinstance(frame, f.DeliverFrame):
            self.delivered.append((tap.cell_id, frame))
        elif isinstance(frame, f.BundleFrame):
            self.bundles.append(frame)
        return await self.on_frame(tap, frame)

    def open(self, home: Path, **options: Any) -> Cell:
        """A cell of ``home`` connected through this relay."""
        options["transport"] = self.transport
        return self.relay.open(home, **options)

    def tap(self, cell_id: bytes) -> Tap:
        """The current link of a cell."""
        return self.taps[cell_id]

    def fake_seq(self) -> int:
        """A relay seq the real relay never used (its ACK is ignored, M-REL-10)."""
        return next(self._fake)

    async def discard(self, recipient: bytes, relay_seq: int) -> None:
        """Delete a queued envelope as if its recipient had acknowledged it: it is never
        delivered again and its sender hears nothing."""
        await self.relay.relay.writer.submit_ack(recipient, relay_seq)

    async def aclose(self) -> None:
        await self.transport.aclose()
