"""The cross-node bus: wake-ups and notices between relay nodes that share one database.

Several relay nodes (processes, possibly on several machines) can serve one deployment when
they share a PostgreSQL store. The store is the truth; the bus carries only *hints* that make
the cluster quick:

* **deliveries** (binary, not JSON): envelopes just committed for recipients linked to some
  other node, with their relay sequence numbers; the node holding a recipient pushes them to
  its link from memory, exactly as for a local recipient, without reading the store;
* ``link``: a cell authenticated on a node (another node holding an older link for it closes
  that one with ``replaced``);
* ``status``: an admin suspended, resumed or revoked a cell (every node applies it at once);
* ``directory``: channels changed (every node drops its cached peer sets);
* ``expired``: the node that ran the expiry sweep purged these envelopes (the senders' nodes
  send EXPIRED frames);
* ``prekeys_low``: a cell's one-time prekeys ran low through a fetch on another node.

A lost hint costs latency, never a message: every node polls the store on a short timer
(``bus_fallback_seconds``) for queued envelopes of its connected cells and for the status of
the cells it caches, so a restarted bus or a partitioned node is caught up within about one
poll interval. Three implementations are chosen by ``LIAISON_BUS_URL``: ``memory://`` (one
node; the hints stay in the process and no poll runs), ``redis://...`` (Redis pub/sub) and
``nats://...`` (NATS core subjects). No clustering, consensus or gossip of our own.

Messages are small JSON objects with the sending node's id, or binary delivery batches that
start with ``D`` (see ``relay.py``); a node ignores its own. The bus is inside the relay's trust
boundary, like the database: anyone who can publish on it can push envelopes to linked cells
(which reject anything not end-to-end authentic) or close links as "replaced", so it must be
reachable by the relay nodes only (Redis AUTH/TLS, NATS credentials, a private network).
Status and expiry hints are re-read from the store before anything is done about them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Bus", "BusError", "MemoryBus", "NatsBus", "RedisBus", "bus_kind", "create_bus"]

log = logging.getLogger("liaison.bus")

CHANNEL = "liaison.events"  # the default channel / subject (``LIAISON_BUS_CHANNEL``)
Handler = Callable[[dict[str, Any]], None]
RawHandler = Callable[[bytes], None]
RAW_TAG = b"D"  # the first byte of a binary delivery batch


class BusError(ValueError):
    """An unusable bus URL."""


class Bus:
    """Publish small JSON hints to every node; deliver the others' hints to ``handler``."""

    #: True when the bus reaches only this process (no fallback poll is needed).
    local_only = False

    def __init__(self, channel: str = CHANNEL) -> None:
        self.channel = channel
        self._handler: Handler | None = None
        self._raw_handler: RawHandler | None = None
        self.connected = False
        self.published = 0
        self.received = 0
        self.failures = 0
        self._failure_logged = 0.0

    async def start(self, handler: Handler, raw_handler: RawHandler | None = None) -> None:
        """Begin delivering JSON messages to ``handler`` and binary ones (first byte
        :data:`RAW_TAG`) to ``raw_handler`` (both called on the event loop)."""
        self._handler = handler
        self._raw_handler = raw_handler

    async def publish(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every node. Never raises: a failed publish is logged (rate-
        limited) and counted; the fallback poll covers what it would have said."""
        await self.publish_raw(json.dumps(message, separators=(",", ":")).encode())

    async def publish_raw(self, data: bytes) -> None:
        """:meth:`publish` for bytes already encoded (a JSON object or a binary batch)."""
        try:
            await self._publish(data)
            self.published += 1
        except Exception as exc:  # the bus is a hint; the store is the truth
            self._failed("publish", exc)

    async def close(self) -> None:
        """Stop receiving and release the connection."""

    async def _publish(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _deliver(self, data: bytes) -> None:
        if data[:1] == RAW_TAG:
            if self._raw_handler is not None:
                self.received += 1
                try:
                    self._raw_handler(data)
                except Exception:
                    log.exception("bus batch handler failed")
            return
        try:
            message = json.loads(data)
        except ValueError:
            self._failed("decode", ValueError("a bus message that is not JSON"))
            return
        if not isinstance(message, dict) or self._handler is None:
            return
        self.received += 1
        try:
            self._handler(message)
        except Exception:
            log.exception("bus message handler failed")

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._failure_logged >= 1.0:
            # Only the exception type: a URL with a password must never reach the log.
            log.warning("bus %s failed (%s); the fallback poll covers it", what, type(exc).__name__)
            self._failure_logged = now


class MemoryBus(Bus):
    """One node: nothing leaves the process, and a node ignores its own messages, so
    publishing is free."""

    local_only = True

    async def start(self, handler: Handler, raw_handler: RawHandler | None = None) -> None:
        await super().start(handler, raw_handler)
        self.connected = True

    async def publish_raw(self, data: bytes) -> None:
        self.published += 1

    async def _publish(self, data: bytes) -> None:  # pragma: no cover - never called
        return None


class RedisBus(Bus):
    """Redis pub/sub on one channel; resubscribes after the server restarts."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        super().__init__(channel)
        import redis.asyncio as aioredis  # the [scale] extra

        self._client: Any = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=None, health_check_interval=5
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self, handler: Handler, raw_handler: RawHandler | None = None) -> None:
        await super().start(handler, raw_handler)
        self._task = asyncio.create_task(self._listen(), name="bus-redis")

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected = True
                while True:
                    item = await pubsub.get_message(timeout=5.0)
                    if item is not None and item.get("type") == "message":
                        self._deliver(item["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect whatever went wrong
                self.connected = False
                self._failed("subscription", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _publish(self, data: bytes) -> None:
        await self._client.publish(self.channel, data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._client.aclose()


class NatsBus(Bus):
    """NATS core publish/subscribe on one subject; nats-py reconnects by itself."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        super().__init__(channel)
        self._url = url
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, handler: Handler, raw_handler: RawHandler | None = None) -> None:
        await super().start(handler, raw_handler)
        self._task = asyncio.create_task(self._connect(), name="bus-nats")

    async def _connect(self) -> None:
        import nats  # the [scale] extra

        async def on_message(msg: Any) -> None:
            self._deliver(msg.data)

        async def on_disconnect() -> None:
            self.connected = False

        async def on_reconnect() -> None:
            self.connected = True

        async def on_error(exc: Exception) -> None:
            self._failed("connection", exc)

        while self._nc is None:
            try:
                nc = await nats.connect(
                    self._url,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    error_cb=on_error,
                )
                await nc.subscribe(self.channel, cb=on_message)
                self._nc = nc
                self.connected = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retry until the server is there
                self._failed("connect", exc)
                await asyncio.sleep(0.5)

    async def _publish(self, data: bytes) -> None:
        if self._nc is None:
            raise ConnectionError("not connected to NATS yet")
        await self._nc.publish(self.channel, data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()


def bus_kind(url: str) -> str:
    """``"memory"``, ``"redis"`` or ``"nats"`` for a bus URL; :class:`BusError` otherwise."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    kinds = {"memory": "memory", "redis": "redis", "rediss": "redis", "unix": "redis"}
    kinds |= {"nats": "nats", "tls": "nats"}
    if scheme not in kinds:
        raise BusError("LIAISON_BUS_URL must start with memory://, redis://, rediss:// or nats://")
    return kinds[scheme]


def create_bus(url: str, channel: str = CHANNEL) -> Bus:
    """The bus named by ``url``: ``memory://``, ``redis://host:port/db`` (or ``rediss://``)
    or ``nats://host:port``."""
    kind = bus_kind(url)
    if kind == "memory":
        return MemoryBus()
    if kind == "redis":
        return RedisBus(url, channel)
    return NatsBus(url, channel)
