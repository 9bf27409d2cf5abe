"""Keeps one cell linked to its relay: reconnects, keeps alive, matches requests to answers.

Theory of operation
-------------------
One long-lived task (``_run``) loops: open a link (``link.open_link``), serve it until it ends,
wait a jittered exponential backoff (full jitter: uniform in ``[0, min(cap, base·2^(n-1))]``,
0.5 s doubling to 30 s by default), repeat. Serving a link means:

1. send the first frame at once (a PING), so the relay treats the link as live (M-LINK-9);
2. start the *bring-up* (the cell's ``on_link_up``: LIST_PEERS, resend the outbox in order)
   under ``send_lock``; when it is done the link is published as :attr:`Runner.link`, so sends
   made meanwhile cannot overtake the resent backlog (M-CLI-1);
3. read frames: PING is answered with PONG (M-REL-2); an ERROR without ref that says this
   cell is ``revoked``, ``suspended`` or ``replaced`` ends everything (:attr:`fatal`), as only
   an authenticated frame may (M-LINK-10, M-CLI-3); every other frame goes to ``on_frame``.
   With nothing received for ``ping_interval`` the runner sends a PING; with nothing for
   ``dead_after`` it drops the link and reconnects.

Requests (FETCH_BUNDLE, LIST_PEERS) carry a request id; :meth:`request` waits for the link,
sends, and waits for the frame :meth:`resolve` hands it. A request whose link drops is sent
again on the next link until its deadline. Tasks: the run loop, and one bring-up per link —
never one per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable

from liaison.protocol import frames as f
from liaison.protocol.keys import X25519KeyPair

from .errors import CellReplaced, CellRevoked, CellSuspended, ClientError, RelayUnreachable
from .link import Link, LinkFailed, open_link
from .transport import Transport

__all__ = ["Runner", "Signal"]

log = logging.getLogger("liaison.client")

_FATAL: dict[str, type[ClientError]] = {
    f.ErrorCode.REVOKED: CellRevoked,
    f.ErrorCode.SUSPENDED: CellSuspended,
    f.ErrorCode.REPLACED: CellReplaced,
}


class Signal:
    """Wakes every waiter when something changed. Take ``waiter()`` *before* checking the
    condition, then wait on it: no wake-up is lost."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event


async def wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait for ``event`` at most ``timeout`` seconds. (``asyncio.timeout``, not ``wait_for``,
    throughout this package: on Python 3.11 ``wait_for`` can swallow a cancellation that
    races with completion, which would make ``aclose`` hang.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class _LinkLost(LinkFailed):
    def __init__(self) -> None:
        super().__init__("the link was lost before the answer came")


class Runner:
    """The reconnecting link of one cell."""

    def __init__(
        self,
        transport: Transport,
        *,
        link_key: X25519KeyPair,
        relay_key: bytes,
        cell_id: bytes,
        on_link_up: Callable[[Link], Awaitable[None]],
        on_frame: Callable[[Link, f.Frame], Awaitable[None]],
        backoff: tuple[float, float] = (0.5, 30.0),
        handshake_timeout: float = 10.0,
        ping_interval: float = 30.0,
        dead_after: float = 120.0,
        changed: Signal | None = None,
    ) -> None:
        self._transport = transport
        self._link_key = link_key
        self._relay_key = relay_key
        self._cell_id = cell_id
        self._on_link_up = on_link_up
        self._on_frame = on_frame
        self._backoff = backoff
        self._handshake_timeout = handshake_timeout
        self._ping_interval = ping_interval
        self._dead_after = dead_after
        self.link: Link | None = None
        self.fatal: ClientError | None = None
        self.last_error: str | None = None
        self.changed = changed or Signal()
        self.send_lock = asyncio.Lock()
        self._requests: dict[int, asyncio.Future[f.Frame]] = {}
        self._next_request = random.randrange(1, 2**31)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.links = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="liaison-cell-link")

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.changed.fire()

    def stop(self, error: ClientError) -> None:
        """Stop for good (from a frame handler): ``error`` is raised to every waiter."""
        if self.fatal is None:
            self.fatal = error
        self.changed.fire()

    # -- waiting and requests ------------------------------------------------------------------

    async def wait_online(self, timeout: float) -> Link:
        """The live link; ``RelayUnreachable`` after ``timeout`` seconds, or the fatal error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            waiter = self.changed.waiter()
            if self.fatal is not None:
                raise self.fatal
            if self._closing or self._task is None:
                raise RelayUnreachable("the cell is not connected (it was closed)")
            if self.link is not None:
                return self.link
            remaining = deadline - loop.time()
            if remaining <= 0:
                detail = f": {self.last_error}" if self.last_error else ""
                raise RelayUnreachable(f"the relay cannot be reached{detail}")
            await wait_event(waiter, remaining)

    async def request(self, build: Callable[[int], f.Frame], timeout: float) -> f.Frame:
        """Send the frame ``build(request_id)`` and return the relay's answer to it (the
        answer frame, or its ERROR frame)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            link = await self.wait_online(max(0.0, deadline - loop.time()))
            try:
                return await self.ask(link, build, max(0.0, deadline - loop.time()))
            except LinkFailed:
                continue  # the link dropped: ask again on the next one
            except TimeoutError:
                raise RelayUnreachable("the relay did not answer in time") from None

    async def ask(self, link: Link, build: Callable[[int], f.Frame], timeout: float) -> f.Frame:
        """One request on ``link`` (also before it is live); ``TimeoutError`` or
        ``LinkFailed`` if no answer comes."""
        request_id = self.new_request_id()
        future: asyncio.Future[f.Frame] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        try:
            await link.send(build(request_id))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._requests.pop(request_id, None)

    def new_request_id(self) -> int:
        self._next_request = self._next_request % 0xFFFFFFFE + 1
        return self._next_request

    def resolve(self, request_id: int, frame: f.Frame) -> None:
        future = self._requests.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(frame)

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing and self.fatal is None:
            try:
                link = await open_link(self._transport, self._link_key, self._relay_key,
                                       self._cell_id, timeout=self._handshake_timeout)  # fmt: skip
            except LinkFailed as exc:
                self.last_error = str(exc)
                log.info("link attempt failed: %s", exc)
                attempt += 1
                self.changed.fire()
                await self._sleep(attempt)
                continue
            self.links += 1
            try:
                live = await self._serve(link)
                attempt = 0 if live else attempt + 1
            except LinkFailed as exc:
                self.last_error = str(exc)
                attempt += 1
            finally:
                self._down(link)
                await link.close()
            if not self._closing and self.fatal is None:
                await self._sleep(max(attempt, 1))

    async def _sleep(self, attempt: int) -> None:
        base, cap = self._backoff
        await asyncio.sleep(random.uniform(0, min(cap, base * 2 ** min(attempt - 1, 30))))

    async def _serve(self, link: Link) -> bool:
        try:
            await link.send(f.PingFrame(os.urandom(8)))  # M-LINK-9: prove the link at once
        except LinkFailed:
            await self._read_refusal(link)
            raise
        bring_up = asyncio.create_task(self._bring_up(link), name="liaison-cell-bring-up")
        try:
            await self._read(link)
        finally:
            bring_up.cancel()
            await asyncio.gather(bring_up, return_exceptions=True)
        return self.link is link

    async def _bring_up(self, link: Link) -> None:
        try:
            async with self.send_lock:
                await self._on_link_up(link)
                if not link.closed:
                    self.link = link
                    self.last_error = None
            self.changed.fire()
        except LinkFailed:
            pass  # the reader sees the link end
        except ClientError as exc:
            self.stop(exc)
            await link.close()

    async def _read_refusal(self, link: Link) -> None:
        """The relay closed right after the welcome: read the ERROR it sent first (a revoked
        or suspended cell gets one, M-LINK-4)."""
        with contextlib.suppress(LinkFailed, TimeoutError):
            async with asyncio.timeout(2.0):
                while (frame := await link.recv()) is not None:
                    if isinstance(frame, f.ErrorFrame) and not frame.ref:
                        fatal = _FATAL.get(frame.code)
                        if fatal is not None:
                            self.stop(fatal(frame.reason or None))
                            return
                        self.last_error = f"relay error {frame.code}: {frame.reason}"

    async def _read(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while self.fatal is None:
            try:
                async with asyncio.timeout(self._ping_interval):
                    frame = await link.recv()
            except TimeoutError:
                if loop.time() - heard >= self._dead_after:
                    self.last_error = "the relay went silent"
                    return
                await link.send(f.PingFrame(os.urandom(8)))
                continue
            if frame is None:
                self.last_error = f"the relay closed the link (code {link.close_code})"
                return
            heard = loop.time()
            if isinstance(frame, f.PingFrame):
                await link.send(f.PongFrame(frame.opaque))
                continue
            if isinstance(frame, f.ErrorFrame) and not frame.ref:
                fatal = _FATAL.get(frame.code)
                if fatal is not None:
                    self.stop(fatal(frame.reason or None))
                    return
                self.last_error = f"relay error {frame.code}: {frame.reason}"
                log.warning("relay error on the link: %s", frame.code)
                continue
            try:
                await self._on_frame(link, frame)
            except ClientError as exc:
                self.stop(exc)
                return
            except LinkFailed:
                raise
            except Exception:  # a bug must not kill the link loop; the frame is not ACKed
                log.exception("failed to handle a frame of type %s", type(frame).__name__)

    def _down(self, link: Link) -> None:
        if self.link is link:
            self.link = None
        for future in self._requests.values():
            if not future.done():
                future.set_exception(_LinkLost())
        self.changed.fire()
