"""The cell's side of one link: the Noise IK handshake, then encrypted frames (SPEC.md §6, §10).

:func:`open_link` connects through a :class:`~liaison.client.transport.Transport`, writes the
hello to the *pinned* relay key (M-LINK-2), authenticates the welcome and checks that it names
this cell (M-LINK-3). The :class:`Link` it returns encrypts and decrypts one frame per message.
Sends are serialised by a lock, because the Noise nonce order must equal the wire order.

Every failure here is a :class:`LinkFailed`: the link is gone and the caller reconnects. A
frame that does not decrypt kills the link (M-LINK-7); a frame that decrypts but does not parse,
or travels in the wrong direction (M-FRM-2), is answered with ERROR ``malformed_frame`` and
skipped. Nothing here takes a permanent action on a close code (M-LINK-10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from liaison.protocol import frames as f
from liaison.protocol.errors import LiaisonError, MalformedData
from liaison.protocol.keys import X25519KeyPair
from liaison.protocol.link import LinkInitiator, LinkTransport

from .transport import Connection, Transport

__all__ = ["RELAY_FRAMES", "Link", "LinkFailed", "open_link"]

log = logging.getLogger("liaison.client.link")

RELAY_FRAMES: tuple[type[f.Frame], ...] = (
    f.AcceptedFrame, f.DeliverFrame, f.BundleFrame, f.PrekeysLowFrame, f.ErrorFrame,
    f.PeerRevokedFrame, f.ExpiredFrame, f.PingFrame, f.PongFrame, f.UploadedFrame, f.PeersFrame,
)  # fmt: skip
"""The frames a relay may send to a cell (SPEC.md §10 direction column)."""


class LinkFailed(Exception):
    """The link could not be opened or has broken; reconnect."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class Link:
    """An authenticated link: ``send`` and ``recv`` frames."""

    def __init__(
        self, conn: Connection, transport: LinkTransport, cell_id: bytes, relay_time_ms: int
    ) -> None:
        self._conn = conn
        self._transport = transport
        self._lock = asyncio.Lock()
        self.cell_id = cell_id
        self.relay_time_ms = relay_time_ms
        self.closed = False

    @property
    def close_code(self) -> int | None:
        return self._conn.close_code

    async def send(self, frame: f.Frame) -> None:
        data = f.encode_frame(frame)
        async with self._lock:
            if self.closed:
                raise LinkFailed("the link is closed")
            try:
                message = self._transport.encrypt(data)
                await self._conn.send(message)
            except (ConnectionError, LiaisonError) as exc:
                # Not closed here: frames already received (an ERROR explaining the close)
                # can still be read.
                raise LinkFailed(f"cannot send on the link: {exc}") from exc

    async def recv(self) -> f.Frame | None:
        """The next valid relay frame; ``None`` when the connection has closed."""
        while True:
            message = await self._conn.recv()
            if message is None:
                self.closed = True
                return None
            try:
                data = self._transport.decrypt(message)
            except LiaisonError as exc:
                await self.close()
                raise LinkFailed("a link message did not decrypt") from exc
            try:
                frame = f.decode_frame(data)
                if not isinstance(frame, RELAY_FRAMES):
                    raise MalformedData(f"{type(frame).__name__} is a cell-to-relay frame")
            except MalformedData as exc:
                log.warning("malformed frame from the relay: %s", exc)
                await self.send(f.ErrorFrame(f.ErrorCode.MALFORMED_FRAME, reason=str(exc)[:200]))
                continue
            return frame

    async def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            await self._conn.close()


async def open_link(
    transport: Transport,
    link_key: X25519KeyPair,
    relay_key: bytes,
    cell_id: bytes | None,
    *,
    timeout: float = 10.0,
) -> Link:
    """Connect and run the handshake; :class:`LinkFailed` on any failure. ``cell_id`` is the
    pinned cell id the welcome must name; ``None`` accepts any enrolled id (enrollment
    recovery reads it from ``Link.cell_id``)."""
    try:
        async with asyncio.timeout(timeout):
            conn = await transport.connect()
    except (OSError, TimeoutError) as exc:
        raise LinkFailed(f"cannot reach the relay: {exc}") from exc
    try:
        initiator = LinkInitiator(link_key.private_bytes(), relay_key)
        await conn.send(initiator.write_hello())
        async with asyncio.timeout(timeout):
            welcome = await conn.recv()
        if welcome is None:
            raise LinkFailed("the relay closed the link during the handshake", conn.close_code)
        payload = initiator.read_welcome(welcome)
        if len(payload) != 24:
            raise LinkFailed("the welcome payload has the wrong length")
        named = payload[:16]
        if not any(named) or (cell_id is not None and named != cell_id):
            # M-LINK-3. An all-zero id is the relay saying it does not know this cell key.
            reason = "not enrolled" if not any(named) else "a different cell id"
            raise LinkFailed(f"the relay answered for {reason}")
        link = Link(conn, initiator.transport(), named, int.from_bytes(payload[16:], "big"))
    except (LinkFailed, LiaisonError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await conn.close()
        if isinstance(exc, LinkFailed):
            raise
        raise LinkFailed(f"the link handshake failed: {exc}", conn.close_code) from exc
    return link
