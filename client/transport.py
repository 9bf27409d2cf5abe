"""The network under a cell's link: a tiny interface, WebSockets, and an in-memory pair.

A :class:`Transport` makes :class:`Connection` objects; a connection moves whole binary
messages (one Noise message each, SPEC.md §6.2) and reports the close code when it ends. The
Noise handshake and the frames live above this (``link.py``), so a transport never sees
plaintext.

* :class:`WebSocketTransport` is the real one (``websockets``, no compression, messages up to
  ``2**17`` bytes).
* :class:`MemoryTransport` connects to an in-process server coroutine instead: each
  ``connect()`` creates a :class:`MemorySocket` (the server's end, with the
  ``send_bytes``/``receive_message``/``close(code, reason)`` methods the relay's
  ``SocketLike`` has) and runs ``handler(socket)`` as a task. Tests wire it to the real relay
  logic; ``down`` makes ``connect`` fail and ``sever()`` drops every open connection, which is
  how tests simulate a relay outage.

Failures to connect raise :class:`ConnectionError` (an ``OSError``); a send on a closed
connection raises it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

__all__ = [
    "MAX_MESSAGE",
    "Connection",
    "MemoryConnection",
    "MemorySocket",
    "MemoryTransport",
    "Transport",
    "WebSocketTransport",
]

log = logging.getLogger("liaison.client.transport")

MAX_MESSAGE = 2**17
_CLOSED = object()


@runtime_checkable
class Connection(Protocol):
    """One bidirectional message connection to the relay."""

    @property
    def close_code(self) -> int | None:
        """The close code once the connection has ended (``None`` before, or if unknown)."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one binary message; ``ConnectionError`` if the connection is closed."""
        ...

    async def recv(self) -> bytes | None:
        """The next binary message, or ``None`` once the connection has closed."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    async def connect(self) -> Connection:
        """Open a connection; ``ConnectionError`` if the relay cannot be reached."""
        ...


# -- WebSockets -----------------------------------------------------------------------------------


class _WebSocketConnection:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise ConnectionError("the relay connection is closed") from exc

    async def recv(self) -> bytes | None:
        try:
            message = await self._ws.recv()
        except ConnectionClosed:
            return None
        if isinstance(message, str):  # M-LINK-5: a text message is fatal
            await self._ws.close(4000, "text message")
            return None
        return message

    async def close(self) -> None:
        await self._ws.close()


class WebSocketTransport:
    """``ws://`` or ``wss://`` URL of the relay's ``/v1/link`` endpoint."""

    def __init__(self, url: str, *, open_timeout: float = 10.0) -> None:
        self.url = url
        self.open_timeout = open_timeout

    async def connect(self) -> Connection:
        try:
            ws = await websockets.connect(
                self.url, compression=None, max_size=MAX_MESSAGE, open_timeout=self.open_timeout
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionError(f"cannot connect to {self.url}: {exc}") from exc
        return _WebSocketConnection(ws)

    @staticmethod
    def for_server(server: str) -> WebSocketTransport:
        """The link URL of a relay given by its HTTP(S) base URL."""
        base = server.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return WebSocketTransport(base + "/v1/link")


# -- in memory ------------------------------------------------------------------------------------


class _Pipe:
    """One direction: a queue of messages, then a close marker with its code."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | object] = asyncio.Queue()
        self.closed = False
        self.code: int | None = None

    def put(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("the connection is closed")
        self.queue.put_nowait(data)

    def shut(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            self.code = code
            self.queue.put_nowait(_CLOSED)

    async def get(self) -> bytes | None:
        item = await self.queue.get()
        if item is _CLOSED:
            self.queue.put_nowait(_CLOSED)  # every later read sees the close too
            return None
        assert isinstance(item, bytes)
        return item


class MemorySocket:
    """The server's end of a memory connection (duck-compatible with the relay's SocketLike)."""

    def __init__(self, to_client: _Pipe, to_server: _Pipe) -> None:
        self._out = to_client
        self._in = to_server

    async def send_bytes(self, data: bytes) -> None:
        self._out.put(bytes(data))

    async def receive_message(self) -> bytes | None:
        return await self._in.get()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._out.shut(code)
        self._in.shut(code)


class MemoryConnection:
    """The client's end of a memory connection."""

    def __init__(self, to_client: _Pipe, to_server: _Pipe) -> None:
        self._in = to_client
        self._out = to_server

    @property
    def close_code(self) -> int | None:
        return self._in.code if self._in.closed else None

    async def send(self, data: bytes) -> None:
        if self._in.closed:
            raise ConnectionError("the connection is closed")
        self._out.put(bytes(data))

    async def recv(self) -> bytes | None:
        return await self._in.get()

    async def close(self) -> None:
        self._out.shut(1000)
        self._in.shut(1000)

    def sever(self, code: int = 1006) -> None:
        """Drop the connection abruptly (as a network failure would)."""
        self._out.shut(code)
        self._in.shut(code)


class MemoryTransport:
    """Connections to ``handler``, run in-process: no sockets."""

    def __init__(self, handler: Callable[[MemorySocket], Awaitable[None]]) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: list[MemoryConnection] = []
        self.down = False
        self.connects = 0

    async def connect(self) -> Connection:
        if self.down:
            raise ConnectionError("the in-memory relay is down")
        self.connects += 1
        to_client, to_server = _Pipe(), _Pipe()
        conn = MemoryConnection(to_client, to_server)
        self._connections = [c for c in self._connections if c.close_code is None]
        self._connections.append(conn)
        task = asyncio.create_task(self._serve(MemorySocket(to_client, to_server)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    async def _serve(self, socket: MemorySocket) -> None:
        try:
            await self._handler(socket)
        except Exception:
            log.exception("in-memory relay handler failed")
        finally:
            await socket.close(1011, "handler ended")

    def sever(self) -> None:
        """Drop every open connection (the client sees close code 1006)."""
        for conn in self._connections:
            conn.sever()
        self._connections.clear()

    async def aclose(self) -> None:
        """Drop every connection and wait for the server-side handlers to finish."""
        self.sever()
        tasks = list(self._tasks)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
