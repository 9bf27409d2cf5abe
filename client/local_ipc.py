"""One link per home: the link lock, the receive lock and the local hand-off socket.

Theory of operation
-------------------
The relay keeps one link per cell: a second link *replaces* the first (its process ends with
``replaced``, exit 21). So within one home at most one process holds the link, and the others
hand their work to it:

* ``<home>/link.lock`` — ``fcntl.flock`` held (exclusively, never waited on by the SDK) by the
  process whose open ``Cell`` has the link. A second ``Cell.open(home)`` with ``connect=True``
  raises :class:`~liaison.client.errors.LinkHeld` (29) instead of replacing it. The lock goes
  with the process: a crash releases it.
* ``<home>/cell.sock`` — the link holder serves this Unix socket (mode 0600 in the 0700 home;
  every peer's uid is checked with ``SO_PEERCRED`` and must be ours). A ``liaison cell``
  command finds the holder here and hands it its request instead of opening a link. The
  socket is (re)created only by the process that holds ``link.lock``, after checking that no
  one answers on a socket left behind.
* ``<home>/receive.lock`` — held by ``liaison cell listen``: exactly one process receives for
  a home; a second ``listen`` exits with ``already_listening`` (28).

The hand-off protocol is one request per connection, one JSON object per line (UTF-8, at most
``MAX_LINE`` bytes): the client sends ``{"op": NAME, "params": {...}}``; the holder answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": CODE, "message": TEXT,
"exit_code": N}`` (a :class:`~liaison.client.errors.ClientError` of the holder's side). What
the operations are is the CLI's business (``cli_ops``); this module only carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import (
    AlreadyListening,
    ClientError,
    HandoffFailed,
    LinkHeld,
    NotEnrolled,
    error_for_code,
)

__all__ = [
    "LINK_LOCK",
    "MAX_LINE",
    "RECEIVE_LOCK",
    "SOCKET",
    "Handler",
    "Holder",
    "connect",
    "exchange",
    "holder_running",
    "receive_lock",
]

log = logging.getLogger("liaison.client")

SOCKET = "cell.sock"
LINK_LOCK = "link.lock"
RECEIVE_LOCK = "receive.lock"
MAX_LINE = 64 * 1024 * 1024
"""The longest request or answer line (a file body travels hex-encoded in it)."""

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


def _lock(path: Path) -> IO[bytes] | None:
    """``path`` opened (0600) and exclusively ``flock``-ed; ``None`` if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    handle = os.fdopen(fd, "r+b", buffering=0)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return handle


@contextlib.contextmanager
def receive_lock(home: Path) -> Iterator[None]:
    """Hold ``<home>/receive.lock`` for the block; ``AlreadyListening`` if another holds it."""
    if not Path(home).is_dir():
        raise NotEnrolled(f"no cell state in {home}")
    handle = _lock(Path(home) / RECEIVE_LOCK)
    if handle is None:
        raise AlreadyListening()
    try:
        yield
    finally:
        handle.close()


@contextlib.contextmanager
def _unix_path(path: Path) -> Iterator[str]:
    """A name for ``path`` short enough for ``sockaddr_un`` (108 bytes): the path itself, or
    ``/proc/self/fd/N/NAME`` through an open descriptor of its directory (Linux)."""
    text = str(path)
    if len(os.fsencode(text)) < 100:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _same_user(sock: socket.socket | None) -> bool:
    """Whether the process at the other end of ``sock`` runs as our uid (``SO_PEERCRED``)."""
    if sock is None:
        return False
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:  # not Linux: the 0700 home and the 0600 socket still guard it
        return True
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", raw)
    return bool(uid == os.getuid())


async def connect(home: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection to the link holder of ``home``, or ``None`` if no process answers."""
    path = Path(home) / SOCKET
    if not path.exists():
        return None
    try:
        with _unix_path(path) as name:
            reader, writer = await asyncio.open_unix_connection(name, limit=MAX_LINE)
    except OSError:
        return None
    if not _same_user(writer.get_extra_info("socket")):
        writer.close()
        return None
    return reader, writer


async def exchange(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], op: str, params: dict[str, Any]
) -> Any:
    """Send one request on ``connection`` and return the holder's result (or raise its
    error); ``HandoffFailed`` if the holder ends before it answers."""
    reader, writer = connection
    try:
        writer.write(json.dumps({"op": op, "params": params}).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    except (OSError, ValueError, asyncio.IncompleteReadError):
        line = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    try:
        answer = json.loads(line) if line else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise HandoffFailed()
    if answer.get("ok") is True:
        return answer.get("result")
    if answer.get("error") == "bad_request":  # a bad argument, as when run here (exit 2)
        raise ValueError(str(answer.get("message", "bad request")))
    raise error_for_code(str(answer.get("error")), str(answer.get("message", "failed")))


class Holder:
    """The link lock of one home and, once :meth:`serve` is called, its hand-off socket."""

    def __init__(self, home: Path, lock: IO[bytes]) -> None:
        self.home = Path(home)
        self._lock: IO[bytes] | None = lock
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @classmethod
    def acquire(cls, home: Path) -> Holder:
        """Take ``<home>/link.lock``; ``LinkHeld`` if another process (or cell) has it."""
        handle = _lock(Path(home) / LINK_LOCK)
        if handle is None:
            raise LinkHeld()
        return cls(home, handle)

    async def serve(self, handler: Handler) -> None:
        """Serve ``<home>/cell.sock`` with ``handler(op, params)`` until :meth:`aclose`."""
        path = self.home / SOCKET
        if path.exists() or path.is_symlink():
            stale = await connect(self.home)
            if stale is not None:  # cannot happen while we hold the link lock; be safe
                stale[1].close()
                raise LinkHeld()
            path.unlink(missing_ok=True)

        async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._handlers.add(task)
            try:
                await self._serve_one(handler, reader, writer)
            finally:
                if task is not None:
                    self._handlers.discard(task)

        try:
            with _unix_path(path) as name:
                self._server = await asyncio.start_unix_server(serve_one, name, limit=MAX_LINE)
            os.chmod(path, 0o600)
        except OSError as exc:  # the link still works; other commands wait for the lock
            log.warning("cannot serve %s: %s", path, exc.strerror or exc)
            if self._server is not None:
                self._server.close()
                self._server = None

    async def _serve_one(
        self, handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            if not _same_user(writer.get_extra_info("socket")):
                return
            try:
                request = json.loads(await reader.readline())
                op, params = str(request["op"]), request.get("params") or {}
                if not isinstance(params, dict):
                    raise TypeError("params")
            except (ValueError, KeyError, TypeError, asyncio.LimitOverrunError):
                answer: dict[str, Any] = {"ok": False, "error": "bad_request",
                                          "message": "malformed hand-off request",
                                          "exit_code": 1}  # fmt: skip
            else:
                answer = await _answer(handler, op, params)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()

    async def stop_serving(self, grace: float) -> None:
        """Take no new requests (the socket goes; a newcomer waits for the link lock and then
        opens its own link) and give those in progress up to ``grace`` seconds to finish."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(OSError):
            (self.home / SOCKET).unlink()
        self._server = None
        if self._handlers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*self._handlers, return_exceptions=True)
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop serving at once, remove the socket, release the link lock. Idempotent."""
        await self.stop_serving(0)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


async def _answer(handler: Handler, op: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "result": await handler(op, params)}
    except ClientError as exc:  # in the CLI's words (flags, escaped): the asker prints it
        from .cell_io import cli_text

        return {"ok": False, "error": exc.code, "message": cli_text(exc),
                "exit_code": exc.exit_code}  # fmt: skip
    except (ValueError, TypeError) as exc:
        return {"ok": False, "error": "bad_request", "message": str(exc), "exit_code": 1}
    except Exception:
        log.exception("a hand-off request failed")
        return {"ok": False, "error": "client_error", "message": "the request failed",
                "exit_code": 1}  # fmt: skip


def holder_running(home: Path) -> bool:
    """Whether a process answers on ``<home>/cell.sock`` (it holds the home's link)."""
    path = Path(home) / SOCKET
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            with _unix_path(path) as name:
                sock.connect(name)
        except OSError:
            return False
        return _same_user(sock)
