"""The machinery under :class:`~liaison.client.Cell`: state, link, frames, receipts.

Theory of operation
-------------------
An open cell has one :class:`~liaison.client.state.Store`, one
:class:`~liaison.client.runner.Runner` (the reconnecting link) and one long-lived receipt
task. Frames from the relay are handled in the runner's reader, one at a time:

* DELIVER: :func:`~liaison.client.receive.receive` stores the message (one transaction),
  *then* the ACK goes out (M-CLI-2); a duplicate is only ACKed. ``messages()`` yields inbox
  rows only up to a watermark moved after each ACK, so nothing is handed over unacknowledged.
* ACCEPTED / EXPIRED / ERROR with a message id: the outbox row moves to ``accepted`` /
  ``expired`` / ``failed`` (with the relay's code).
* BUNDLE, PEERS, UPLOADED, ERROR with a request id: answers, handed to the waiting request;
  PEERS is merged into the peer table whoever asked (pinning identities, M-CLI-5).
* PEER_REVOKED marks the peer revoked; PREKEYS_LOW generates one-time prekeys, stores their
  private halves (one transaction) and only then uploads the public halves.

On every link the bring-up sends LIST_PEERS and resends, in order, every outbox envelope the
relay has not accepted (M-CLI-1); an envelope already expired is marked ``expired`` instead.
Delivery receipts are sealed by the receipt task shortly after messages are stored (a burst
shares one receipt of up to 100 ids); ``mark_read`` seals its read receipt at once. The same
task reports gaps in a peer's channel numbers once they have stayed open ``gap_grace``
seconds (it wakes at the next such deadline), and seals again receipts a peer reported
missing (``channels``, SPEC.md §9.3).

One :class:`~liaison.client.runner.Signal` wakes every waiter (``messages()``, status and
link waits) on any change; waiters re-check their condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path
from typing import Any

from liaison.protocol import frames as f

from . import channels, local_ipc, outgoing, tables
from .errors import ClientError, NotEnrolled
from .link import Link, LinkFailed
from .receive import receive
from .runner import Runner, Signal, wait_event
from .state import Store
from .transport import Transport, WebSocketTransport

__all__ = ["CellCore"]

log = logging.getLogger("liaison.client")

PREKEY_TARGET = 100
"""One-time prekeys the relay should hold after a replenishment (at most 100 per upload)."""
RECEIPT_COALESCE = 0.05
"""Seconds the receipt task waits after a message so that a burst shares one receipt."""
GAP_GRACE = 120.0
HANDOFF_GRACE = 10.0
"""Seconds a closing link holder gives the requests other processes handed it to finish."""
LINGER = 5.0
"""Seconds ``aclose`` (leaving ``async with``) waits by default for the link and for the relay
to accept what the outbox holds (the ``linger`` keyword of ``Cell.open``)."""
"""Seconds a gap in a peer's channel numbers may stay open before its numbers count as
missing and are reported (a lower precedence overtaken by higher ones closes it sooner)."""


class CellCore:
    """State, link and frame handling of an open cell (the public API is ``Cell``)."""

    def __init__(
        self,
        home: str | Path,
        passphrase: str | bytes | None = None,
        *,
        transport: Transport | None = None,
        connect: bool = True,
        wait_connected: float | None = 10.0,
        request_timeout: float = 10.0,
        receipt_ttl: int = 7 * 24 * 3600,
        backoff: tuple[float, float] = (0.5, 30.0),
        ping_interval: float = 30.0,
        linger: float = LINGER,
        gap_grace: float = GAP_GRACE,
    ) -> None:
        self.home = Path(home)
        self._passphrase = passphrase
        self._transport = transport
        self._connect = connect
        self._wait_connected = wait_connected
        self._request_timeout = request_timeout
        self._receipt_ttl = receipt_ttl
        self._backoff = backoff
        self._ping_interval = ping_interval
        self._linger = linger
        self._gap_grace = gap_grace
        self._store: Store | None = None
        self._runner: Runner | None = None
        self._changed = Signal()
        self._retries: set[asyncio.Task[None]] = set()
        self._receipts_due = asyncio.Event()
        self._receipt_task: asyncio.Task[None] | None = None
        self._closed = False
        self._sent_link: Link | None = None
        self._sent_ids: set[bytes] = set()
        self._uploading: int | None = None
        self._peer_locks: dict[bytes, asyncio.Lock] = {}
        self._info: tuple[str, str, str, str] | None = None  # cell id, name, server, identity
        self._yield_upto = 0  # messages() yields inbox rows up to here: stored *and* ACKed
        # Sends committed to the outbox, handed to the link in order by one task: send()
        # never waits on the network (a stalled link or a reconnect's bring-up).
        self._transmissions: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        self._transmitter: asyncio.Task[None] | None = None
        # The relay's explanation of each refused SEND heard by this process (message id hex
        # -> reason; relay-controlled text), for SendFailed: the outbox keeps only the code.
        self._refusals: dict[str, str] = {}
        # Sends stored before a session existed, sealed once the link is up (cell.py).
        self._pending_due = asyncio.Event()
        self._pending_task: asyncio.Task[None] | None = None
        self._holder: local_ipc.Holder | None = None
        self.left_queued: list[str] = []
        """The message ids the last ``aclose`` left queued (sent when the cell next connects)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the state and, unless ``connect=False``, start the link (waiting up to
        ``wait_connected`` seconds for it: ``RelayUnreachable`` / ``CellRevoked`` / ...)."""
        if self._store is not None:
            return
        store = await asyncio.to_thread(Store.open, self.home, self._passphrase)
        if store.cell_id is None or store.keys is None:
            store.close()
            raise NotEnrolled(f"the enrollment of {self.home} did not complete")
        self._store = store
        self._closed = False
        try:
            await self._begin(store)
        except BaseException:
            await self.aclose()
            raise

    async def _begin(self, store: Store) -> None:
        assert store.cell_id is not None
        assert store.keys is not None
        self._info = (store.cell_id.hex(), store.name, store.server_url,
                      bytes(store.keys.identity.public).hex())  # fmt: skip
        with store.transaction():
            tables.prune(store, int(time.time()))
        self._yield_upto = tables.inbox_last_id(store)
        self._receipt_task = asyncio.create_task(self._receipt_loop(), name="liaison-receipts")
        self._receipts_due.set()  # receipts a crash left unsent
        if not self._connect:
            return
        self._holder = local_ipc.Holder.acquire(self.home)  # LinkHeld: never replace a sibling
        self._runner = Runner(
            self._transport or WebSocketTransport.for_server(store.server_url),
            link_key=store.keys.link, relay_key=store.relay_key, cell_id=store.cell_id,
            on_link_up=self._on_link_up, on_frame=self._on_frame, backoff=self._backoff,
            ping_interval=self._ping_interval, dead_after=4 * self._ping_interval,
            changed=self._changed,
        )  # fmt: skip
        self._runner.start()
        self._transmitter = asyncio.create_task(self._transmit_loop(), name="liaison-transmit")
        self._pending_task = asyncio.create_task(self._pending_loop(), name="liaison-pending")
        await self._holder.serve(self._handoff)
        if self._wait_connected:
            await self._runner.wait_online(self._wait_connected)

    async def aclose(self) -> None:
        """Close the cell: seal pending receipts, give the link up to ``linger`` seconds to
        come up and the relay to accept what the outbox holds (nothing is lost without it: the
        outbox is resent on the next open), stop the link and the receipt task, close the
        state file. The ids of the messages left queued are then in ``left_queued`` (with a
        link and ``linger`` > 0, a warning is logged with their count). Idempotent."""
        if self._holder is not None and not self._closed:  # requests in progress finish first
            await self._holder.stop_serving(HANDOFF_GRACE)
        if not self._closed and self._store is not None:
            left: list[bytes] = []
            with contextlib.suppress(ClientError):
                left = await self._drain(self._linger)
            self.left_queued = [m.hex() for m in left]
            if left and self._linger > 0 and self._runner is not None:  # else: not asked to send
                log.warning("%d message(s) left queued: sent when this cell next connects",
                            len(left))  # fmt: skip
        self._closed = True
        for task in list(self._retries):
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)
        for name in ("_transmitter", "_pending_task"):
            task = getattr(self, name)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                setattr(self, name, None)
        if self._receipt_task is not None:  # first: it uses the state and the link
            self._receipt_task.cancel()
            await asyncio.gather(self._receipt_task, return_exceptions=True)
            self._receipt_task = None
        if self._runner is not None:
            await self._runner.aclose()
        if self._holder is not None:  # after the link is down: the next holder's link is new
            await self._holder.aclose()
            self._holder = None
        if self._store is not None:
            self._store.close()
        self._store, self._runner = None, None
        self._changed.fire()

    async def _drain(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` seconds for the link (if it is down) and for the relay to
        accept every queued message and receipt; the user messages still queued then."""
        runner, store = self._runner, self._store
        if store is None:
            return []
        if runner is not None and timeout > 0:
            if runner.link is not None:
                await self._flush_receipts()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while runner.fatal is None and tables.outbox_queued(store):
                waiter = self._changed.waiter()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await waiter.wait()
        return tables.outbox_queued(store, include_receipts=False)

    async def flush(self, timeout: float | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds (default: ``linger``) for the link and for the relay
        to accept every queued message; the ids of those still queued (empty: all sent)."""
        self._require_store()
        left = await self._drain(self._linger if timeout is None else timeout)
        return [m.hex() for m in left]

    @property
    def link_state(self) -> str:
        """``online``, ``connecting`` (no attempt has failed yet), ``unreachable`` (the last
        attempt failed; it is retried with backoff), ``stopped`` (for good: revoked, suspended,
        replaced) or ``offline`` (``connect=False``)."""
        runner = self._runner
        if runner is None:
            return "offline"
        if runner.fatal is not None:
            return "stopped"
        if runner.link is not None:
            return "online"
        return "connecting" if runner.last_error is None else "unreachable"

    async def wait_link_state(self, timeout: float) -> str:
        """Wait up to ``timeout`` seconds until the link is up or an attempt failed; the
        :attr:`link_state` then (the relay is not waited on longer than that). Raises the
        link's fatal error (``CellRevoked``, ...) if it has one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            waiter = self._changed.waiter()
            self._raise_fatal()  # revoked, suspended: the relay said so, not "unreachable"
            state = self.link_state
            remaining = deadline - loop.time()
            if state != "connecting" or remaining <= 0:
                return state
            await wait_event(waiter, remaining)

    async def _handoff(self, op: str, params: dict[str, Any]) -> Any:
        """A request another process of this home handed over (``local_ipc``)."""
        from .cli_ops import dispatch  # the CLI's operations, on this cell

        return await dispatch(self, op, params)

    async def _pending_loop(self) -> None:
        while True:
            await self._pending_due.wait()
            self._pending_due.clear()
            if not self._is_open():
                return
            try:
                await self._seal_pending()
            except ClientError as exc:
                log.warning("cannot seal stored sends yet: %s", exc.code)
            except Exception:  # a bug must not end this for good: retried on the next link
                log.exception("failed to seal stored sends")

    async def _seal_pending(self) -> None:
        """Seal and send the sends stored before a session existed (``Cell``)."""

    def _is_open(self) -> bool:
        return self._store is not None and not self._closed

    def _require_store(self) -> Store:
        if self._store is None or self._closed:
            raise RuntimeError("the cell is not open (use 'async with Cell.open(...)')")
        return self._store

    def _raise_fatal(self) -> None:
        if self._runner is not None and self._runner.fatal is not None:
            raise self._runner.fatal

    def _lock_for(self, peer: bytes) -> asyncio.Lock:
        return self._peer_locks.setdefault(peer, asyncio.Lock())

    # -- the link ----------------------------------------------------------------------------------

    async def _on_link_up(self, link: Link) -> None:
        """Bring-up, under the runner's send lock: peers, then the outbox in order (M-CLI-1)."""
        if not self._is_open():
            return
        store = self._require_store()
        assert self._runner is not None
        self._sent_link, self._sent_ids, self._uploading = link, set(), None
        with contextlib.suppress(TimeoutError):  # PEERS is merged by _on_frame
            await self._runner.ask(link, f.ListPeersFrame, self._request_timeout)
        now = int(time.time())
        for message_id, envelope, expires_at in tables.outbox_unsent(store):
            if expires_at <= now:
                with store.transaction():
                    tables.outbox_finish(store, message_id, "expired", "expired before sending")
                continue
            await link.send(f.SendFrame(envelope))
            self._sent_ids.add(message_id)
        self._pending_due.set()  # stored sends without a session: sealed once this is live
        self._changed.fire()

    def _queue_transmit(self, message_id: bytes, envelope: bytes) -> None:
        """Hand an outbox envelope (already committed) to the transmitter task, in order."""
        if self._transmitter is not None:
            self._transmissions.put_nowait((message_id, envelope))

    async def _transmit_loop(self) -> None:
        while True:
            message_id, envelope = await self._transmissions.get()
            try:
                await self._transmit(message_id, envelope)
            except (ConnectionError, ClientError) as exc:  # the bring-up resends it
                log.debug("transmit failed (%s); the next link resends it", type(exc).__name__)

    async def _transmit(self, message_id: bytes, envelope: bytes) -> None:
        """Send an outbox envelope now if the link is live (else the bring-up resends it)."""
        runner = self._runner
        if runner is None:
            return
        async with runner.send_lock:
            link = runner.link
            if link is None or (link is self._sent_link and message_id in self._sent_ids):
                return
            with contextlib.suppress(LinkFailed):
                await link.send(f.SendFrame(envelope))
                if link is self._sent_link:
                    self._sent_ids.add(message_id)

    async def _on_frame(self, link: Link, frame: f.Frame) -> None:
        if not self._is_open():
            return  # closing: not ACKed, so the relay delivers it again next time
        store = self._require_store()
        runner = self._runner
        assert runner is not None
        if isinstance(frame, f.DeliverFrame):
            outcome = receive(store, frame.sender_cell_id, frame.relay_seq,
                              frame.received_at_ms, frame.envelope)  # fmt: skip
            await link.send(f.AckFrame(frame.relay_seq))  # only after the commit (M-CLI-2)
            self._yield_upto = tables.inbox_last_id(store)  # and only then can it be yielded
            if outcome.receipt_due or outcome.gap_changed:
                self._receipts_due.set()
            if outcome.unknown_sender:
                await link.send(f.ListPeersFrame(0))
            if not outcome.duplicate:
                self._changed.fire()
        elif isinstance(frame, f.AcceptedFrame):
            with store.transaction(durable=False):  # if lost: resent, ACCEPTED again
                tables.outbox_accepted(store, frame.message_id, frame.relay_seq)
            self._changed.fire()
        elif isinstance(frame, f.ExpiredFrame):
            with store.transaction():
                tables.outbox_finish(store, frame.message_id, "expired", None)
            self._changed.fire()
        elif isinstance(frame, f.ErrorFrame):
            self._on_error(store, runner, frame)
        elif isinstance(frame, f.PeersFrame):
            with store.transaction():
                changed = tables.apply_peers(store, frame.peers)
            if changed:
                log.warning("identity key changed for %d peer(s)", len(changed))
            runner.resolve(frame.request_id, frame)
            self._changed.fire()
        elif isinstance(frame, f.BundleFrame):
            runner.resolve(frame.request_id, frame)
        elif isinstance(frame, f.UploadedFrame):
            if frame.request_id == self._uploading:
                self._uploading = None
        elif isinstance(frame, f.PeerRevokedFrame):
            with store.transaction():
                tables.set_peer_status(store, frame.cell_id, "revoked")
            self._changed.fire()
        elif isinstance(frame, f.PrekeysLowFrame):
            await self._replenish(link, frame.remaining)

    def _on_error(self, store: Store, runner: Runner, frame: f.ErrorFrame) -> None:
        if len(frame.ref) == 16 and frame.code == f.ErrorCode.RATE_LIMITED:
            # Retryable (the relay is busy): keep it queued and send it again shortly; it is
            # also resent on every reconnect until the relay accepts it (M-CLI-1).
            self._sent_ids.discard(frame.ref)
            row = tables.outbox_row(store, frame.ref)
            if row is not None:
                self._retry_later(frame.ref)
        elif len(frame.ref) == 16:  # about one of our SENDs (M-FRM-6)
            row = tables.outbox_row(store, frame.ref)
            with store.transaction():  # also after ACCEPTED: a drop notice (M-CLI-7)
                tables.outbox_finish(store, frame.ref, "failed", frame.code)
                if frame.code == f.ErrorCode.REVOKED and row is not None:
                    tables.set_peer_status(store, bytes(row[1]), "revoked")
            self._refusals[frame.ref.hex()] = frame.reason[:200]
            if row is not None and row[2] == "accepted":  # a drop notice: the outbox shows it
                log.info("the relay dropped an accepted message: %s", frame.code)
            else:
                log.info("the relay refused a message: %s", frame.code)  # status failed says it
            self._changed.fire()
        elif len(frame.ref) == 4:
            request_id = int.from_bytes(frame.ref, "big")
            if request_id == self._uploading:
                self._uploading = None
            runner.resolve(request_id, frame)

    def _retry_later(self, message_id: bytes, delay: float = 1.0) -> None:
        """Resend an outbox envelope the relay refused as busy, after ``delay`` seconds."""

        async def retry() -> None:
            await asyncio.sleep(delay * (0.5 + random.random()))
            if not self._is_open():
                return
            store = self._require_store()
            for unsent_id, envelope, _expires in tables.outbox_unsent(store):
                if unsent_id == message_id:
                    await self._transmit(message_id, envelope)
                    return

        task = asyncio.get_running_loop().create_task(retry())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _replenish(self, link: Link, remaining: int) -> None:
        """PREKEYS_LOW: store new one-time prekeys privately, then upload them (M-REL-14)."""
        count = min(PREKEY_TARGET, PREKEY_TARGET - remaining)
        if count <= 0 or self._uploading is not None or self._runner is None:
            return
        store = self._require_store()
        with store.transaction():
            keys = store.new_one_time_prekeys(count)
        request_id = self._runner.new_request_id()
        self._uploading = request_id
        prekeys = tuple(f.OneTimePrekey(i, bytes(pair.public)) for i, pair in keys)
        await link.send(f.UploadPrekeysFrame(request_id, prekeys))

    # -- receipts ----------------------------------------------------------------------------------

    async def _flush_receipts(self, peer: bytes | None = None) -> None:
        store = self._require_store()
        gaps_before = time.time() - self._gap_grace
        for message_id, envelope in outgoing.queue_receipts(store, ttl=self._receipt_ttl,
                                                            peer=peer,
                                                            gaps_before=gaps_before):  # fmt: skip
            await self._transmit(message_id, envelope)

    def _gap_wait(self) -> float | None:
        """Seconds until the next gap is due to be reported (``None``: no open gap). A gap
        already due was not reportable at the last flush (its peer's key change waits for
        the operator): it is tried again a grace period later, not in a busy loop."""
        if not self._is_open():
            return None
        deadline = channels.next_deadline(self._require_store(), self._gap_grace)
        if deadline is None:
            return None
        remaining = deadline - time.time()
        return remaining if remaining > 0 else max(self._gap_grace, 1.0)

    async def _receipt_loop(self) -> None:
        while True:
            await wait_event(self._receipts_due, self._gap_wait())
            await asyncio.sleep(RECEIPT_COALESCE)
            self._receipts_due.clear()
            if not self._is_open():
                return
            try:
                await self._flush_receipts()
            except ClientError as exc:
                log.error("cannot queue receipts: %s", exc)
                if self._runner is not None:
                    self._runner.stop(exc)
                return
            except Exception:  # a bug must not end receipts for good: retried on next message
                log.exception("failed to queue receipts")
