"""The relay's logic: authenticated cell connections, store-and-forward, delivery order.

Theory of operation
-------------------
Layering is routes -> relay -> store. ``link.py`` turns a WebSocket into a
:class:`Connection` once the Noise handshake has authenticated an active cell; from then on
everything here works on plaintext frames (``liaison.protocol.frames``) and never on
end-to-end content: envelopes are opaque bytes whose routing header alone is read.

Per connection there are three coroutines and no task per message:

* the **reader** decrypts and dispatches frames. A SEND is validated (paired recipient, bucket
  size, sane expiry) and handed to the group-commit writer with a callback; the ACCEPTED frame
  is queued only when the batch holding the envelope has committed (durable before ack);
* the **writer** drains the outgoing queue, encrypting each frame with the link transport in
  order (the Noise nonce sequence requires a single writer);
* the **pump** delivers queued envelopes: first the backlog from the store, page by page in
  precedence order (FLASH, IMMEDIATE, PRIORITY, ROUTINE; FIFO by relay sequence within one),
  then whatever arrives live. Envelopes accepted while the recipient is online are pushed to it
  straight from memory; a page boundary lets a newly arrived FLASH pre-empt a ROUTINE backlog.
  An envelope is deleted only when the recipient ACKs it; unacknowledged ones are delivered
  again on the next connection.

The :class:`Hub` holds at most one live connection per cell: a newer authenticated connection
replaces the old one, which is told ``replaced`` and closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.envelope import MAX_ENVELOPE, Routing
from liaison.protocol.errors import LiaisonError, MalformedData
from liaison.protocol.keys import (
    IdentityKey,
    KemPublicKey,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519PublicKey,
)
from liaison.protocol.link import LinkTransport

from . import dialect, directory, store
from .bus import RAW_TAG, Bus, MemoryBus
from .directory import CellStatus
from .handshake_guard import HandshakeGuard
from .metrics import BATCH_BUCKETS, COMMIT_BUCKETS, WAIT_BUCKETS, Histogram
from .presence import Presence
from .settings import Settings
from .writer import GroupCommitWriter, QueueFull, WriterOverloaded

__all__ = ["Connection", "Hub", "Relay", "SocketLike"]

log = logging.getLogger("liaison.relay")

PAGE = 256  # envelopes per backlog query
OUTGOING_MAX = 4096  # frames queued to one connection before it counts as a slow consumer
ACKED_MEMORY = 2 * OUTGOING_MAX  # acknowledged sequence numbers a link remembers


class SocketLike:
    """What a connection needs from a WebSocket (Starlette's, or a test double)."""

    async def send_bytes(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def receive_message(self) -> bytes | None:  # pragma: no cover - interface
        """The next binary message, or None when the peer closed."""
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(slots=True)
class _Delivery:
    seq: int
    precedence: int
    frame: bytes


@dataclass(slots=True)
class Metrics:
    connections: int = 0
    accepted: int = 0
    duplicates: int = 0
    delivered: int = 0
    acked: int = 0
    expired: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    delivery_wait: Histogram = field(default_factory=lambda: Histogram(WAIT_BUCKETS))
    batch_items: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS))

    def on_batch(self, items: int, seconds: float) -> None:
        """The group-commit writer's callback after each committed batch."""
        self.batch_items.observe(items)
        self.commit_seconds.observe(seconds)

    def refuse(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1


class Connection:
    """One authenticated cell link."""

    def __init__(
        self,
        relay: Relay,
        socket: SocketLike,
        transport: LinkTransport,
        cell: directory.CellRecord,
        *,
        first_frame: f.Frame | None = None,
    ) -> None:
        self._first_frame = first_frame
        self.relay = relay
        self.socket = socket
        self.transport = transport
        self.cell = cell
        self.cell_id = cell.id
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue(OUTGOING_MAX)
        self._live: list[tuple[int, int, bytes]] = []  # heap of (precedence, seq, frame)
        self._reread = False  # the store holds envelopes not (or no longer) in _live
        self._sent: set[int] = set()  # delivered, not yet acknowledged
        self._acking: set[int] = set()  # acknowledged, deletion not yet committed
        # Recently acknowledged (bounded): an envelope both pushed from memory and read from
        # the store must not go out again after its ACK.
        self._acked: set[int] = set()
        self._acked_order: collections.deque[int] = collections.deque()
        self.linked_at_ns = time.time_ns()  # orders links of one cell across nodes
        self._wake = asyncio.Event()
        self._closing: tuple[int, str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_heard = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the link until either side closes it."""
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"writer-{self.cell.name}"),
            asyncio.create_task(self._pump(), name=f"pump-{self.cell.name}"),
            asyncio.create_task(self._watchdog(), name=f"watchdog-{self.cell.name}"),
        ]
        presence, linked_ms = self.relay.presence, self.linked_at_ns // 1_000_000
        presence.up(self.cell_id, linked_ms)
        try:
            await self._greet()
            if self._first_frame is not None:
                self._dispatch(self._first_frame)
            await self._reader()
        finally:
            self.relay.hub.unregister(self)
            presence.down(self.cell_id, linked_ms)
            writer = self._tasks[0]
            if self._closing is not None and not writer.done():
                # Let the writer flush the ERROR frame that explains the close.
                with contextlib.suppress(TimeoutError, asyncio.QueueFull):
                    self._out.put_nowait(None)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(writer), 2.0)
            for task in self._tasks:
                task.cancel()
            # Acks from this link are durable before the link counts as closed, so a quick
            # reconnect is never handed an envelope it already acknowledged.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.writer.flush(), 5.0)
            await asyncio.gather(*self._tasks, return_exceptions=True)
            code, reason = self._closing or (1000, "bye")
            with contextlib.suppress(Exception):
                await self.socket.close(code, reason)

    def close(self, code: f.ErrorCode, reason: str) -> None:
        """Send an ERROR frame with ``code``, then close with its WebSocket close code."""
        if self._closing is not None:
            return
        self.send(f.ErrorFrame(code, reason=reason))
        self._closing = (f.CLOSE_CODES[code], reason[:120])
        with contextlib.suppress(asyncio.QueueFull):
            self._out.put_nowait(None)
        self._wake.set()

    def send(self, frame: f.Frame) -> None:
        self.send_encoded(f.encode_frame(frame))

    def send_encoded(self, data: bytes) -> None:
        if self._closing is not None:
            return
        try:
            self._out.put_nowait(data)
        except asyncio.QueueFull:
            self._closing = (f.CLOSE_CODES[f.ErrorCode.RATE_LIMITED], "slow consumer")
            self._wake.set()

    async def _writer(self) -> None:
        encrypt = self.transport.encrypt
        send = self.socket.send_bytes
        out = self._out
        while True:
            data = await out.get()
            if data is None:
                break
            await send(encrypt(data))
            while not out.empty():  # drain what is ready without a wakeup per frame
                data = out.get_nowait()
                if data is None:
                    break
                await send(encrypt(data))
            if data is None:
                break
        # Closing: make the reader return so run() can finish.
        await self.socket.close(*(self._closing or (1000, "bye")))

    async def send_expiry_notices(self) -> None:
        """Take this cell's stored notices (final) and send them: EXPIRED for an expiry, an
        ERROR with the notice's code and ref = message id for a drop (M-REL-20)."""
        notices = await store.take_expiry_notices(self.relay.engine, self.cell_id)
        for notice in notices:
            self.send(notice_frame(notice))

    async def _greet(self) -> None:
        await self.send_expiry_notices()
        # Peers revoked while this cell was away (M-REL-16): derived from the directory, so
        # nothing needs storing per peer and a cell hears it on every connect until unpaired.
        for peer in self.relay._peers.get(self.cell_id, frozenset()):
            record = await directory.cell_by_id(self.relay.engine, peer)
            if record is not None and record.status == CellStatus.REVOKED:
                self.send(f.PeerRevokedFrame(peer))
        remaining = await store.one_time_prekey_count(self.relay.engine, self.cell_id)
        if remaining < self.relay.settings.prekeys_low_threshold:
            self.send(f.PrekeysLowFrame(remaining))

    # -- reading -----------------------------------------------------------------------------

    async def _reader(self) -> None:
        # No timeout per frame (asyncio.wait_for costs a task and a timer each time): the
        # watchdog below pings quiet links and closes silent ones.
        decrypt = self.transport.decrypt
        receive = self.socket.receive_message
        dispatch = self._dispatch
        writer = self.relay.writer
        while self._closing is None:
            if writer.saturated:
                # Backpressure: stop reading this link (TCP pushes back on the cell) rather
                # than accept sends only to refuse them as busy.
                await writer.wait_for_room()
            message = await receive()
            self._last_heard = time.monotonic()
            if message is None:
                return
            try:
                frame = f.decode_frame(decrypt(message))
            except MalformedData as exc:
                if self.transport.is_failed:
                    self._closing = (f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME], "bad transport")
                    return
                self.relay.metrics.refuse(f.ErrorCode.MALFORMED_FRAME)
                self.send(f.ErrorFrame(f.ErrorCode.MALFORMED_FRAME, reason=str(exc)[:200]))
                continue
            except LiaisonError:
                # A transport message that does not decrypt: the link cannot resynchronise.
                self._closing = (f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME], "bad transport")
                return
            dispatch(frame)

    async def _watchdog(self) -> None:
        """Ping a link that has been quiet for a ping interval; close one silent for the idle
        timeout (SPEC.md §6.3)."""
        settings = self.relay.settings
        idle, interval = settings.idle_timeout_seconds, settings.ping_interval_seconds
        while self._closing is None:
            quiet = time.monotonic() - self._last_heard
            if quiet >= idle:
                self.close(f.ErrorCode.IDLE_TIMEOUT, "no frame within the idle timeout")
                return
            if quiet >= interval:
                self.send(f.PingFrame(os.urandom(8)))  # a live cell answers with PONG
            await asyncio.sleep(min(interval, idle - quiet))

    def _dispatch(self, frame: f.Frame) -> None:
        if isinstance(frame, f.SendFrame):
            self._on_send(frame.envelope)
        elif isinstance(frame, f.AckFrame):
            seq = frame.relay_seq
            self._sent.discard(seq)
            # Until the deletion commits, a re-read of the store must not hand it out again.
            self._acking.add(seq)
            self._remember_ack(seq)
            done = self.relay.writer.enqueue_ack(self.cell_id, seq)
            done.add_done_callback(lambda _fut: self._acking.discard(seq))
            self.relay.metrics.acked += 1
        elif isinstance(frame, f.FetchBundleFrame):
            self.relay.spawn(self._on_fetch_bundle(frame))
        elif isinstance(frame, f.UploadPrekeysFrame):
            self.relay.spawn(self._on_upload(frame))
        elif isinstance(frame, f.ListPeersFrame):
            self.relay.spawn(self._on_list_peers(frame.request_id))
        elif isinstance(frame, f.PingFrame):
            self.send(f.PongFrame(frame.opaque))
        elif isinstance(frame, f.PongFrame | f.ErrorFrame):
            # ERROR travels both ways (SPEC.md §10): a cell may report a frame it could not
            # use; nothing to answer (answering an ERROR with an ERROR could loop).
            pass
        else:
            self.send(
                f.ErrorFrame(
                    f.ErrorCode.MALFORMED_FRAME,
                    reason=f"{type(frame).__name__} is a relay-to-cell frame",
                )
            )

    def _refuse(self, code: f.ErrorCode, ref: bytes, reason: str) -> None:
        self.relay.metrics.refuse(code)
        self.send(f.ErrorFrame(code, ref=ref, reason=reason))

    def _on_send(self, envelope: bytes) -> None:
        relay = self.relay
        try:
            routing = Routing.decode(envelope)
        except LiaisonError as exc:
            code = (
                f.ErrorCode.ENVELOPE_TOO_LARGE
                if len(envelope) > MAX_ENVELOPE
                else f.ErrorCode.MALFORMED_FRAME
            )
            self._refuse(code, b"", str(exc)[:200])
            return
        ref = routing.message_id
        if len(envelope) > relay.settings.max_envelope_bytes:
            self._refuse(f.ErrorCode.ENVELOPE_TOO_LARGE, ref, "envelope exceeds the relay limit")
            return
        now = int(time.time())
        if not now < routing.expires_at <= now + relay.settings.max_ttl_seconds:
            self._refuse(
                f.ErrorCode.BAD_EXPIRY,
                ref,
                f"expiry must be in the future and at most "
                f"{relay.settings.max_ttl_seconds} s ahead",
            )
            return
        check = relay.may_send(self.cell_id, routing.recipient)
        if check is not None:
            self._refuse(check, ref, "the recipient is not reachable from this cell")
            return
        row = store.EnvelopeRow(
            recipient=routing.recipient,
            sender=self.cell_id,
            message_id=routing.message_id,
            precedence=int(routing.precedence),
            expires_at=routing.expires_at,
            received_at_ms=int(time.time() * 1000),
            data=envelope,
        )
        future = relay.writer.enqueue_send(row, relay.quota)
        future.add_done_callback(lambda fut: self._on_committed(fut, row))

    def _on_committed(
        self, future: asyncio.Future[tuple[int, bool]], row: store.EnvelopeRow
    ) -> None:
        exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if isinstance(exc, QueueFull):
            self._refuse(f.ErrorCode.QUEUE_FULL, row.message_id, "the recipient's queue is full")
            return
        if isinstance(exc, WriterOverloaded):
            # Retryable: the cell resends it later (its outbox keeps it until ACCEPTED).
            self._refuse(f.ErrorCode.RATE_LIMITED, row.message_id, "the relay is busy; resend")
            return
        if exc is not None:
            self.relay.log_store_failure(exc)
            self._refuse(f.ErrorCode.INTERNAL_ERROR, row.message_id, "the relay could not store it")
            return
        seq, duplicate = future.result()
        self.send(f.AcceptedFrame(row.message_id, seq))
        if duplicate:
            self.relay.metrics.duplicates += 1
            return
        self.relay.metrics.accepted += 1
        self.relay.deliver_live(row, seq)

    async def _on_fetch_bundle(self, frame: f.FetchBundleFrame) -> None:
        ref = frame.request_id.to_bytes(4, "big")
        check = self.relay.may_send(self.cell_id, frame.cell_id)
        if check is not None:
            self._refuse(check, ref, "no channel with that cell")
            return
        bundle, remaining = await self.relay.take_bundle(frame.cell_id)
        if bundle is None:
            self._refuse(f.ErrorCode.NO_BUNDLE, ref, "that cell has not published prekeys")
            return
        self.send(f.BundleFrame(frame.request_id, bundle.one_time_prekey is None, bundle.encode()))
        if remaining < self.relay.settings.prekeys_low_threshold:
            self.relay.prekeys_low(frame.cell_id, remaining)

    async def _on_list_peers(self, request_id: int) -> None:
        """M-REL-19: every cell sharing a channel with this one, with status and identity."""
        entries = []
        for peer in await directory.peers_of(self.relay.engine, self.cell_id):
            record = await directory.cell_by_id(self.relay.engine, peer)
            if record is not None:
                identity = record.identity_key or bytes(32)
                entries.append(f.PeerEntry(record.id, record.status.value, identity, record.name))
        self.send(f.PeersFrame(request_id, tuple(entries[: f.MAX_PEERS])))

    async def _on_upload(self, frame: f.UploadPrekeysFrame) -> None:
        keys = [(k.prekey_id, k.public_key) for k in frame.prekeys]
        stored = await store.add_one_time_prekeys(
            self.relay.engine, self.cell_id, keys, self.relay.settings.max_one_time_prekeys
        )
        if stored == 0 and keys:
            self._refuse(
                f.ErrorCode.PREKEY_LIMIT,
                frame.request_id.to_bytes(4, "big"),
                "the one-time prekey stock is full",
            )
            return
        self.send(f.UploadedFrame(frame.request_id, stored))

    # -- delivery ----------------------------------------------------------------------------

    def push(self, delivery: _Delivery) -> None:
        """An envelope accepted for this cell while it is connected (from memory)."""
        if len(self._live) >= OUTGOING_MAX:
            self._reread = True  # it is in the store: the pump will re-read it
        else:
            heapq.heappush(self._live, (delivery.precedence, delivery.seq, delivery.frame))
        self._wake.set()

    def reread(self) -> None:
        """The store may hold envelopes for this cell that this link has not seen (committed
        by another node, or a bus hint was lost): read the queue again."""
        self._reread = True
        self._wake.set()

    @property
    def outstanding(self) -> int:
        """Envelopes of this cell's queue that this link knows about (sent or being acked)."""
        return len(self._sent) + len(self._acking)

    async def _pump(self) -> None:
        # ACKs this cell sent on its previous link may still be waiting for their commit: let
        # them land first, so the backlog read below never hands out an acknowledged envelope.
        with contextlib.suppress(Exception):
            await self.relay.writer.flush()
        await self._drain_store()
        while self._closing is None:
            await self._wake.wait()
            self._wake.clear()
            if self._reread:
                self._reread = False
                self._live.clear()
                await self._drain_store()
                continue
            while self._live and self._closing is None:
                _precedence, seq, frame = heapq.heappop(self._live)
                self._deliver(seq, frame)

    def _remember_ack(self, seq: int) -> None:
        self._acked.add(seq)
        self._acked_order.append(seq)
        if len(self._acked_order) > ACKED_MEMORY:
            self._acked.discard(self._acked_order.popleft())

    def _deliver(self, seq: int, frame: bytes) -> None:
        if seq in self._sent or seq in self._acked:
            return
        self._sent.add(seq)
        metrics = self.relay.metrics
        metrics.delivered += 1
        received_at_ms = int.from_bytes(frame[25:33], "big")  # see deliver_frame
        metrics.delivery_wait.observe(max(0.0, time.time() - received_at_ms / 1000))
        self.send_encoded(frame)

    async def _drain_store(self) -> None:
        """Deliver the stored backlog in precedence order, a page at a time; live arrivals of
        higher precedence go out between pages."""
        while self._closing is None:
            page = await store.pending_for(
                self.relay.engine, self.cell_id, PAGE, exclude=self._sent | self._acking
            )
            if not page:
                return
            for env in page:
                if self._live and self._live[0][0] < env.precedence:
                    while self._live and self._live[0][0] < env.precedence:
                        _p, seq, frame = heapq.heappop(self._live)
                        self._deliver(seq, frame)
                self._deliver(
                    env.seq, deliver_frame(env.seq, env.sender, env.received_at_ms, env.data)
                )
            await asyncio.sleep(0)  # let the writer run and acks arrive


DROP_REASONS = {
    f.ErrorCode.REVOKED.value: "the recipient was revoked: the relay deleted this accepted "
    "message undelivered",
}


def notice_frame(notice: store.ExpiryNotice) -> f.Frame:
    """The frame that tells a sender about an envelope deleted undelivered."""
    if notice.code is None:
        return f.ExpiredFrame(notice.message_id, notice.recipient)
    reason = DROP_REASONS.get(notice.code, "the relay deleted this accepted message undelivered")
    return f.ErrorFrame(notice.code, ref=notice.message_id, reason=reason)


_DELIVER = struct.Struct(">BQ16sQ")
# One envelope of a delivery batch on the bus: recipient, relay seq, sender, received_at_ms,
# precedence, envelope length; the envelope bytes follow.
_REMOTE = struct.Struct(">16sQ16sQBI")
BUS_BATCH = 256 * 1024  # bytes per bus message at most (NATS refuses payloads over 1 MiB)


def deliver_frame(seq: int, sender: bytes, received_at_ms: int, envelope: bytes) -> bytes:
    """DELIVER frame bytes, packed directly: every field comes from the relay's own store (a
    test checks this equals ``encode_frame(DeliverFrame(...))``)."""
    return _DELIVER.pack(f.FrameType.DELIVER, seq, sender, received_at_ms) + envelope


class Hub:
    """At most one live connection per cell, on this node (and, through the bus, in the
    cluster: ``on_register`` announces each new link)."""

    def __init__(self, on_register: Callable[[Connection], None] | None = None) -> None:
        self._connections: dict[bytes, Connection] = {}
        self._on_register = on_register

    def register(self, conn: Connection) -> None:
        old = self._connections.get(conn.cell_id)
        self._connections[conn.cell_id] = conn
        if old is not None:
            old.close(f.ErrorCode.REPLACED, "a newer connection for this cell replaced this one")
        if self._on_register is not None:
            self._on_register(conn)

    def replaced_elsewhere(self, cell_id: bytes, linked_at_ns: int, node: str, me: str) -> None:
        """Another node linked ``cell_id``: close ours if it is the older link (ties broken by
        node id, so two simultaneous links never close each other)."""
        conn = self._connections.get(cell_id)
        if conn is not None and (conn.linked_at_ns, me) < (linked_at_ns, node):
            conn.close(f.ErrorCode.REPLACED, "a newer connection for this cell replaced this one")

    def cells(self) -> list[bytes]:
        return list(self._connections)

    def unregister(self, conn: Connection) -> None:
        if self._connections.get(conn.cell_id) is conn:
            del self._connections[conn.cell_id]

    def get(self, cell_id: bytes) -> Connection | None:
        return self._connections.get(cell_id)

    def __len__(self) -> int:
        return len(self._connections)


class Relay:
    """Shared state of one relay node: store, writer, hub, directory cache, metrics."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        writer: GroupCommitWriter,
        bus: Bus | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.writer = writer
        self.bus = bus or MemoryBus()
        self.node = os.urandom(8).hex()
        self.hub = Hub(None if self.bus.local_only else self._announce_link)
        self._node_id = bytes.fromhex(self.node)
        self._outbound: list[bytes] = []  # deliveries for other nodes, sent after this tick
        self._outbound_size = 0
        self.metrics = Metrics()
        self.presence = Presence(engine, settings.presence_refresh_seconds)
        self.quota = (settings.queue_max_messages, settings.queue_max_bytes)
        self.handshakes = HandshakeGuard(
            limit=settings.max_unauthenticated,
            per_source=settings.max_unauthenticated_per_address,
            per_known_source=settings.max_unauthenticated_per_known_address,
            reserve=int(settings.max_unauthenticated * settings.unauthenticated_reserve_fraction),
            rate=settings.handshakes_per_address_per_second,
            burst=settings.handshake_burst_per_address,
            known_ttl=settings.known_address_ttl_seconds,
        )
        self._status: dict[bytes, CellStatus] = {}
        self._peers: dict[bytes, frozenset[bytes]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._store_failures = 0
        self._store_failure_logged = 0.0
        self.sweeper = False  # this node runs the expiry sweep
        self._loading: set[bytes] = set()  # statuses being loaded for may_send
        self.polls = 0

    def log_store_failure(self, exc: BaseException) -> None:
        """Log store failures at most once a second (a failing database fails every send)."""
        now = time.monotonic()
        self._store_failures += 1
        if now - self._store_failure_logged >= 1.0:
            log.error("store failures: %d (latest: %s)", self._store_failures, type(exc).__name__)
            self._store_failure_logged = now
            self._store_failures = 0

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a non-hot-path request (bundle fetch, prekey upload) in the background."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- directory cache (invalidated by admin hooks) -----------------------------------------

    async def load_cell(self, cell_id: bytes) -> None:
        """Load a cell's peers, its status and its peers' statuses into the cache (on
        connect): two queries, and sends to its peers then need no lookup."""
        peers = (await directory.peer_sets(self.engine, [cell_id]))[cell_id]
        self._status.update(await directory.statuses(self.engine, [cell_id, *peers]))
        self._peers[cell_id] = peers

    async def _load_status(self, cell_id: bytes) -> None:
        try:
            self._status.update(await directory.statuses(self.engine, [cell_id]))
        finally:
            self._loading.discard(cell_id)

    def may_send(self, sender: bytes, recipient: bytes) -> f.ErrorCode | None:
        """None if ``sender`` may send to (or fetch the bundle of) ``recipient``."""
        if recipient not in self._peers.get(sender, frozenset()):
            return f.ErrorCode.NOT_PAIRED
        status = self._status.get(recipient)
        if status is None:
            # A peer we never loaded: its status is loaded in the background (once, however
            # many sends ask); refuse only revoked cells (channels to them are kept for the
            # audit trail).
            if recipient not in self._loading:
                self._loading.add(recipient)
                self.spawn(self._load_status(recipient))
            return None
        if status == CellStatus.REVOKED:
            return f.ErrorCode.REVOKED
        return None

    async def directory_changed(self) -> None:
        """Admin hook: channels changed (after the commit). Every node drops its caches."""
        await self._publish({"k": "directory"})
        await self._reload_directory()

    async def _reload_directory(self) -> None:
        """Re-read the peers of every linked cell and the statuses of them and their peers
        (a few grouped queries), then swap them in: sends are never judged against a
        half-empty cache."""
        linked = self.hub.cells()
        peer_sets = await directory.peer_sets(self.engine, linked)
        statuses = await directory.statuses(
            self.engine, list(set(linked).union(*peer_sets.values()))
        )
        for cell_id in self.hub.cells():  # linked meanwhile: keep what load_cell found
            if cell_id not in peer_sets and cell_id in self._peers:
                peer_sets[cell_id] = self._peers[cell_id]
        self._peers = peer_sets
        self._status.update(statuses)

    async def on_cell_status(self, cell_id: bytes, status: str, peers: list[bytes]) -> None:
        """Admin hook: a cell was suspended, resumed or revoked (after the commit). Applied
        here and on every other node (the bus; the fallback poll if the hint is lost)."""
        await self._publish({"k": "status", "c": cell_id.hex()})
        self._apply_status(cell_id, status, peers)

    def _apply_status(self, cell_id: bytes, status: str, peers: list[bytes]) -> None:
        self._status[cell_id] = CellStatus(status)
        conn = self.hub.get(cell_id)
        if status == CellStatus.REVOKED:
            if conn is not None:
                conn.close(f.ErrorCode.REVOKED, "this cell was revoked")
            for peer in peers:
                peer_conn = self.hub.get(peer)
                if peer_conn is not None:
                    peer_conn.send(f.PeerRevokedFrame(cell_id))
        elif status == CellStatus.SUSPENDED and conn is not None:
            conn.close(f.ErrorCode.SUSPENDED, "this cell was suspended")

    # -- prekeys -------------------------------------------------------------------------------

    async def take_bundle(self, cell_id: bytes) -> tuple[PrekeyBundle | None, int]:
        record = await directory.cell_by_id(self.engine, cell_id)
        if record is None or record.identity_key is None:
            return None, 0
        signed, otk, remaining = await store.take_bundle(self.engine, cell_id)
        if signed is None:
            return None, remaining
        bundle = PrekeyBundle(
            cell_id,
            IdentityKey(record.identity_key),
            SignedPrekey(signed.spk_id, X25519PublicKey(signed.spk_public), signed.spk_signature),
            SignedKemPrekey(signed.kem_id, KemPublicKey(signed.kem_public), signed.kem_signature),
            None if otk is None else OneTimePrekey(otk[0], X25519PublicKey(otk[1])),
        )
        return bundle, remaining

    # -- delivery and expiry -------------------------------------------------------------------

    def deliver_live(self, row: store.EnvelopeRow, seq: int) -> None:
        conn = self.hub.get(row.recipient)
        if conn is not None:
            frame = deliver_frame(seq, row.sender, row.received_at_ms, row.data)
            conn.push(_Delivery(seq, row.precedence, frame))
        elif not self.bus.local_only:
            # The recipient may be linked to another node: the envelopes of the batch that
            # just committed go out together, after this loop tick, in one bus message per
            # BUS_BATCH bytes. A node holding the recipient pushes them from memory.
            if not self._outbound:
                asyncio.get_running_loop().call_soon(self._send_outbound)
            entry = _REMOTE.pack(row.recipient, seq, row.sender, row.received_at_ms,
                                 row.precedence, len(row.data)) + row.data  # fmt: skip
            self._outbound.append(entry)
            self._outbound_size += len(entry)
            if self._outbound_size >= BUS_BATCH:
                self._send_outbound()

    def _send_outbound(self) -> None:
        if self._outbound:
            data = RAW_TAG + self._node_id + b"".join(self._outbound)
            self._outbound, self._outbound_size = [], 0
            self.spawn(self.bus.publish_raw(data))

    def on_bus_batch(self, data: bytes) -> None:
        """Deliveries committed by another node (see :meth:`deliver_live`). A batch that does
        not parse exactly is dropped whole: its envelopes are in the store, and the fallback
        poll delivers them."""
        if data[1:9] == self._node_id:
            return
        entries = []
        view, at, end = memoryview(data), 9, len(data)
        while at < end:
            if end - at < _REMOTE.size:
                log.warning("dropped a malformed delivery batch from the bus")
                return
            recipient, seq, sender, received_at_ms, precedence, size = _REMOTE.unpack_from(view, at)
            at += _REMOTE.size
            if size > MAX_ENVELOPE or end - at < size or precedence > 3:
                log.warning("dropped a malformed delivery batch from the bus")
                return
            entries.append((recipient, seq, sender, received_at_ms, precedence, at, size))
            at += size
        for recipient, seq, sender, received_at_ms, precedence, start, size in entries:
            conn = self.hub.get(recipient)
            if conn is not None:
                frame = deliver_frame(seq, sender, received_at_ms, data[start : start + size])
                conn.push(_Delivery(seq, precedence, frame))

    def prekeys_low(self, cell_id: bytes, remaining: int) -> None:
        owner = self.hub.get(cell_id)
        if owner is not None:
            owner.send(f.PrekeysLowFrame(remaining))
        elif not self.bus.local_only:
            self.spawn(self._publish({"k": "prekeys_low", "c": cell_id.hex(), "n": remaining}))

    async def sweep_expired(self) -> int:
        """Purge expired envelopes; tell connected senders now (on any node), others when they
        connect."""
        purged = await store.purge_expired(self.engine, int(time.time()))
        self.metrics.expired += len(purged)
        elsewhere = {n.sender for n in purged if self.hub.get(n.sender) is None}
        if elsewhere and not self.bus.local_only:
            await self._publish({"k": "expired", "c": [c.hex() for c in elsewhere]})
        told = []
        for notice in purged:
            conn = self.hub.get(notice.sender)
            if conn is not None:
                conn.send(notice_frame(notice))
                told.append((notice.sender, notice.message_id))
        if told:
            await store.forget_expiry_notices(self.engine, told)
        return len(purged)

    async def notices_stored(self, senders: list[bytes]) -> None:
        """Admin hook: notices for ``senders`` were committed (a revoked recipient's queue was
        purged). Senders linked here take theirs from the store now; a bus hint makes the
        node holding any other linked sender do the same; the rest get them on connect."""
        elsewhere = [s for s in senders if self.hub.get(s) is None]
        if elsewhere and not self.bus.local_only:
            await self._publish({"k": "expired", "c": [c.hex() for c in elsewhere]})
        for sender in senders:
            if self.hub.get(sender) is not None:
                await self._hand_over_notices(sender)

    async def _hand_over_notices(self, sender: bytes) -> None:
        """Notices for ``sender``, linked here, were stored (by this node or another): take
        them from the store (the truth) and send them."""
        conn = self.hub.get(sender)
        if conn is not None:
            await conn.send_expiry_notices()

    async def _recheck_status(self, cell_id: bytes) -> None:
        """A status hint from another node: apply what the store says, not what the hint
        says (a forged hint cannot disconnect or revoke anyone)."""
        record = await directory.cell_by_id(self.engine, cell_id)
        if record is None:
            return
        if self._status.get(cell_id) != record.status or self.hub.get(cell_id) is not None:
            peers = await directory.peers_of(self.engine, cell_id)
            self._apply_status(cell_id, record.status.value, peers)

    async def run_expiry(self, stop: asyncio.Event) -> None:
        """Sweep every ``expiry_sweep_seconds`` while this node holds the cluster's sweeper
        lock (PostgreSQL: a session advisory lock, so exactly one node sweeps and another takes
        over when it dies; SQLite: this node is the only one)."""
        async with contextlib.AsyncExitStack() as stack:
            while not stop.is_set():
                try:
                    if not self.sweeper:
                        self.sweeper = await self._become_sweeper(stack)
                    if self.sweeper:
                        await self.sweep_expired()
                except Exception:
                    log.exception("expiry sweep failed")
                    self.sweeper = False
                    await stack.aclose()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.expiry_sweep_seconds)

    async def _become_sweeper(self, stack: contextlib.AsyncExitStack) -> bool:
        conn = await stack.enter_async_context(self.engine.connect())
        held = await dialect.try_session_lock(conn, b"liaison", b"expiry-sweeper")
        if not held:
            await stack.aclose()
        return held

    # -- the bus ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start receiving bus hints."""
        await self.bus.start(self.on_bus, self.on_bus_batch)

    async def _publish(self, message: dict[str, Any]) -> None:
        if not self.bus.local_only:
            message["n"] = self.node
            await self.bus.publish(message)

    def _announce_link(self, conn: Connection) -> None:
        self.spawn(self._publish({"k": "link", "c": conn.cell_id.hex(), "t": conn.linked_at_ns}))

    def on_bus(self, message: dict[str, Any]) -> None:
        """A hint from another node (see ``bus.py``). Malformed hints are ignored: the bus is
        not trusted with anything the store cannot confirm."""
        node = message.get("n")
        if not isinstance(node, str) or node == self.node:
            return
        try:
            kind = message["k"]
            if kind == "link":
                self.hub.replaced_elsewhere(
                    bytes.fromhex(message["c"]), int(message["t"]), node, self.node
                )
            elif kind == "status":
                self.spawn(self._recheck_status(bytes.fromhex(message["c"])))
            elif kind == "directory":
                self.spawn(self._reload_directory())
            elif kind == "expired":
                for cell in message["c"]:
                    self.spawn(self._hand_over_notices(bytes.fromhex(cell)))
            elif kind == "prekeys_low":
                owner = self.hub.get(bytes.fromhex(message["c"]))
                if owner is not None:
                    owner.send(f.PrekeysLowFrame(int(message["n"])))
        except (KeyError, TypeError, ValueError):
            log.warning("ignored a malformed bus message of kind %r", message.get("k"))

    async def run_fallback(self, stop: asyncio.Event) -> None:
        """The store is the truth: every ``bus_fallback_seconds``, re-read the queues of
        linked cells that hold envelopes their link has not seen, and re-check the status of
        every cached cell (revocations whose hint was lost). Runs only with a shared bus."""
        if self.bus.local_only:
            return
        interval = self.settings.bus_fallback_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            try:
                await self.poll_store()
            except Exception as exc:  # keep polling
                self.log_store_failure(exc)

    async def poll_store(self) -> None:
        """One fallback pass (see :meth:`run_fallback`)."""
        linked = self.hub.cells()
        if linked:
            counts = await store.queue_counts(self.engine, linked)
            for cell_id, count in counts.items():
                conn = self.hub.get(cell_id)
                if conn is not None and count > conn.outstanding:
                    conn.reread()
        cached = list(self._status)
        if cached:
            statuses = await directory.statuses(self.engine, cached)
            for cell_id, status in statuses.items():
                if self._status.get(cell_id) != status:
                    peers = list(self._peers.get(cell_id, frozenset()))
                    self._apply_status(cell_id, status.value, peers)
        self.polls += 1
        if self.polls % 10 == 0:  # channel changes whose hint was lost
            await self._reload_directory()


OnStatus = Callable[[bytes, str, list[bytes]], Awaitable[None]]
