"""The client SDK's entry point: :class:`Cell`.

::

    from liaison.client import Cell

    cell = await Cell.enroll(home, server="http://127.0.0.1:8000", code=CODE)
    async with Cell.open(home) as cell:                 # loads state, connects, authenticates
        message_id = await cell.send("fr-paris", "text", precedence="immediate", ttl=3600)
        await cell.status(message_id)                   # queued|accepted|delivered|read|...
        await cell.flush(timeout=10)                    # ids the relay has not accepted yet
        cell.gaps()                                     # messages from peers that never came
        async for message in cell.messages():           # each message once, across restarts
            await message.mark_read()                   # encrypted read receipt
        async for message in cell.messages(confirm=True):  # exactly once: yielded again
            if message.id not in journal:               # (after a crash) until confirmed,
                journal.add(message)                    # so the app skips ids it has
            await cell.confirm(message)                 # handover recorded

Bodies: a ``str`` is sent as TEXT (UTF-8); ``bytes`` as FILE_CHUNK (the raw bytes, no header),
or with ``file_name=`` as FILE (name and bytes, SPEC.md §9.4); ``content_type="json"`` sends
JSON (a ``str``/``bytes`` JSON text, or any JSON-serialisable object). ``wait_status`` returns
a status that was reached or raises (``StatusTimeout``, ``SendFailed``, ``MessageExpired``).
Ids are hex strings. Sending to a peer with no session fetches its prekey bundle, checks it
against the pinned identity (pin on first use) and starts a session; the first
message after that carries the session setup. The module ``core`` has the machinery;
``receive`` and ``outgoing`` say what each transaction holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.envelope import ContentType, Precedence
from liaison.protocol.errors import LiaisonError
from liaison.protocol.fingerprint import cell_safety_number, format_safety_number
from liaison.protocol.session import Session, initiate

from . import channels, files, outgoing, resets, tables
from .core import CellCore, log
from .enroll import ENROLL_ONE_TIME_PREKEYS, enroll
from .errors import (
    ClientError,
    KeyChanged,
    MessageExpired,
    MessageTooLarge,
    NotPaired,
    PeerRevoked,
    PeerUnavailable,
    ProtocolFailure,
    RelayUnreachable,
    SafetyNumberMismatch,
    SendFailed,
    StatusTimeout,
    UnknownMessage,
    UnknownPeer,
)
from .link import Link
from .models import (
    Gap,
    Message,
    OutboxEntry,
    Peer,
    Status,
    content_type_name,
    parse_precedence,
    precedence_name,
    utc,
)
from .notices import Notice
from .notices import watch as watch_notices
from .receive import receive
from .runner import wait_event
from .state import Store
from .tables import InboxRow, PeerRow
from .transport import Transport

__all__ = ["Cell"]

_RANK: dict[str, float] = {"queued": 0, "accepted": 1, "missing": 1.5, "delivered": 2, "read": 3}


class Cell(CellCore):
    """One enrolled cell, opened from its home directory. See the module docstring.

    Options (keywords of :meth:`open`): ``transport`` (default: WebSocket to the enrolled
    server), ``connect=False`` to use the state offline, ``wait_connected`` seconds to wait for
    the first link on entry (``None``: do not wait), ``request_timeout`` for bundle and peer
    requests, ``receipt_ttl`` seconds, ``backoff=(base, cap)`` seconds, ``ping_interval``,
    ``linger`` seconds that closing waits for the link and the relay to take the outbox
    (default 5; what it leaves queued is in ``left_queued``; ``flush()`` waits explicitly).
    One process per home holds the link: with ``connect=True`` opening raises ``LinkHeld``
    if another has it (see ``local_ipc``).
    """

    # -- construction ------------------------------------------------------------------------

    @classmethod
    async def enroll(
        cls,
        home: str | Path,
        *,
        server: str,
        code: str,
        name: str | None = None,
        passphrase: str | bytes | None = None,
        http: httpx.AsyncClient | None = None,
        transport: Transport | None = None,
        one_time_prekeys: int = ENROLL_ONE_TIME_PREKEYS,
        **options: Any,
    ) -> Cell:
        """Enroll a new cell in ``home`` with the one-time ``code``; returns it unopened
        (use ``async with cell:``). ``name``, if given, must be the name the relay gives the
        cell. ``http`` is an optional ``httpx.AsyncClient``."""
        cell_id, enrolled, identity = await enroll(
            Path(home), server=server, code=code, name=name, passphrase=passphrase, http=http,
            transport=transport, one_time_prekeys=one_time_prekeys,
        )  # fmt: skip
        cell = cls(home, passphrase, transport=transport, **options)
        cell._info = (cell_id.hex(), enrolled, server.rstrip("/"), identity.hex())
        return cell

    @classmethod
    def open(cls, home: str | Path, passphrase: str | bytes | None = None, **options: Any) -> Cell:
        """The cell of ``home``; ``async with`` it to load the state and connect."""
        return cls(home, passphrase, **options)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- who we are ----------------------------------------------------------------------------

    def _known(self) -> tuple[str, str, str, str]:
        if self._info is None:
            raise RuntimeError("the cell is not open (use 'async with Cell.open(...)')")
        return self._info

    @property
    def cell_id(self) -> str:
        """This cell's id (hex); known once enrolled or opened, also after close."""
        return self._known()[0]

    @property
    def name(self) -> str:
        return self._known()[1]

    @property
    def server(self) -> str:
        """The relay's URL, as enrolled."""
        return self._known()[2]

    @property
    def identity(self) -> str:
        """This cell's identity public key (hex)."""
        return self._known()[3]

    @property
    def online(self) -> bool:
        return self._runner is not None and self._runner.link is not None

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait for a live link (``RelayUnreachable`` after ``timeout``)."""
        if self._runner is None:
            raise RelayUnreachable("the cell was opened with connect=False")
        await self._runner.wait_online(timeout)

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self,
        peer: str,
        body: Any,
        *,
        precedence: str | int = "routine",
        ttl: int = 3600,
        marking: str = "",
        content_type: str | None = None,
        file_name: str | None = None,
    ) -> str:
        """Seal ``body`` for ``peer`` (a name or hex cell id), store it in the outbox and queue
        it for the link; returns the message id. The message is safe once this returns: it is
        resent until the relay accepts it, also across restarts. Returns without waiting on
        the network (a stalled or reconnecting link delays the sending, not the caller).

        ``file_name`` sends ``body`` (bytes) as a file with that name (one path component,
        content type FILE, SPEC.md §9.4); the receiver gets it as ``Message.file_name``. A
        body that fits no envelope raises ``MessageTooLarge`` with ``size`` and ``limit``.
        With no session with the peer yet and the relay not reached (offline, or
        ``connect=False``), the message is stored too — its body sealed at rest — and sealed
        into an envelope once the link is up and the peer's bundle is fetched."""
        store = self._require_store()
        self._raise_fatal()
        ctype, payload = _encode_body(body, content_type, file_name)
        prec = parse_precedence(precedence)
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        row = await self._resolve(peer)
        expires_at = int(time.time()) + ttl
        async with self._lock_for(row.cell_id):
            if resets.is_pending(store, row.cell_id):  # never seal on a session to be reset
                await self._reset_locked(row)
            sessions = tables.sessions_for(store, row.cell_id)
            new: Session | None = None
            pin = None
            if tables.outbox_pending(store, row.cell_id) or (not sessions and not self.online):
                return self._store_pending(row, ctype, payload, prec, expires_at, marking)
            if not sessions:
                try:
                    new, pin = await self._start_session(row)
                except RelayUnreachable:  # the link dropped meanwhile: stored all the same
                    return self._store_pending(row, ctype, payload, prec, expires_at, marking)
                sessions = tables.sessions_for(store, row.cell_id)  # one may have arrived
            if sessions:  # no await from here to the commit: nothing else touches the session
                session, row_id, pin = sessions[0].load(), sessions[0].id, None
            else:
                assert new is not None
                session, row_id = new, None
            try:
                message_id, envelope = outgoing.seal_into_outbox(
                    store, session, row_id, content_type=ctype, payload=payload,
                    precedence=prec, expires_at=expires_at, marking=marking, pin=pin,
                )  # fmt: skip
            except MessageTooLarge as exc:
                raise _too_large(exc, body, file_name) from None
        self._changed.fire()
        self._queue_transmit(message_id, envelope)  # never waits on the network
        return message_id.hex()

    def _store_pending(
        self, row: PeerRow, ctype: ContentType, payload: bytes, prec: Precedence,
        expires_at: int, marking: str,
    ) -> str:  # fmt: skip
        message_id = outgoing.store_pending(
            self._require_store(), row.cell_id, content_type=ctype, payload=payload,
            precedence=prec, expires_at=expires_at, marking=marking,
        )  # fmt: skip
        self._changed.fire()
        if self.online:
            self._pending_due.set()
        return message_id.hex()

    async def _seal_pending(self) -> None:
        """Seal the sends stored without a session, in order, once the link is live: fetch
        the peer's bundle (checked like any), seal under the stored id, send. A refusal that
        will not change (not paired, revoked, no prekeys) fails the message; a key change
        keeps it queued until the new key is accepted; an unreachable relay, until the next
        link."""
        store = self._require_store()
        now = int(time.time())
        blocked: set[bytes] = set()
        for pending in tables.outbox_pending(store):
            if pending.peer in blocked or not self._is_open():
                continue
            if pending.expires_at <= now:
                with store.transaction():
                    tables.outbox_finish(store, pending.message_id, "expired",
                                         "expired before sending")  # fmt: skip
                self._changed.fire()
                continue
            row = tables.peer_by_id(store, pending.peer)
            try:
                if row is None:
                    raise NotPaired(pending.peer.hex())
                _check_sendable(row)
                async with self._lock_for(row.cell_id):
                    sessions = tables.sessions_for(store, row.cell_id)
                    pin = None
                    if sessions:
                        session, row_id = sessions[0].load(), sessions[0].id
                    else:
                        session, pin = await self._start_session(row)
                        row_id = None
                        if tables.sessions_for(store, row.cell_id):  # one arrived meanwhile
                            current = tables.sessions_for(store, row.cell_id)[0]
                            session, row_id, pin = current.load(), current.id, None
                    envelope = outgoing.seal_pending(store, session, row_id, pending, pin)
            except (KeyChanged, RelayUnreachable):
                blocked.add(pending.peer)  # tried again later, in order
                continue
            except ClientError as exc:
                with store.transaction():
                    tables.outbox_finish(store, pending.message_id, "failed", exc.code)
                self._changed.fire()
                continue
            self._changed.fire()
            self._queue_transmit(pending.message_id, envelope)

    async def _resolve(self, peer: str) -> PeerRow:
        store = self._require_store()
        row = _find_peer(store, peer)
        if row is None and self._runner is not None and self.link_state != "unreachable":
            await self.refresh_peers()
            row = _find_peer(store, peer)
        if row is None:
            raise NotPaired(peer) if _is_cell_id(peer) else UnknownPeer(peer)
        _check_sendable(row)
        return row

    async def _start_session(self, row: PeerRow) -> tuple[Session, bytes | None]:
        """Fetch, check and use the peer's bundle (M-KEY-4, M-KEY-6, M-FRM-5, M-CLI-5)."""
        store = self._require_store()
        if self._runner is None:
            raise RelayUnreachable("no session with this peer yet, and the cell is offline")
        answer = await self._runner.request(
            lambda request_id: f.FetchBundleFrame(request_id, row.cell_id), self._request_timeout
        )
        if isinstance(answer, f.ErrorFrame):
            if answer.code == f.ErrorCode.NOT_PAIRED:
                raise NotPaired(row.label)
            if answer.code == f.ErrorCode.REVOKED:
                with store.transaction():
                    tables.set_peer_status(store, row.cell_id, "revoked")
                raise PeerRevoked(row.label)
            if answer.code == f.ErrorCode.NO_BUNDLE:
                raise PeerUnavailable(row.label)
            raise ProtocolFailure(f"the relay refused the bundle: {answer.code}")
        assert isinstance(answer, f.BundleFrame)
        try:
            bundle = PrekeyBundle.decode(answer.bundle)
        except LiaisonError as exc:
            raise ProtocolFailure(f"the relay sent a malformed bundle: {exc}") from None
        if answer.no_one_time_prekey != (bundle.one_time_prekey is None):
            raise ProtocolFailure("the BUNDLE flag contradicts the bundle")
        if bundle.cell_id != row.cell_id:
            raise ProtocolFailure("the relay sent the bundle of another cell")
        current = tables.peer_by_id(store, row.cell_id)
        pinned = None if current is None else current.identity
        if pinned is not None and bytes(bundle.identity) != pinned:
            with store.transaction():
                tables.set_pending_identity(store, row.cell_id, bytes(bundle.identity))
            self._changed.fire()
            raise KeyChanged(row.label)
        keys, own = store.keys, store.cell_id
        assert keys is not None
        assert own is not None
        try:
            session = initiate(keys.identity, own, bundle)
        except LiaisonError as exc:
            raise ProtocolFailure(f"the peer's bundle does not verify: {exc}") from None
        return session, bytes(bundle.identity) if pinned is None else None

    async def status(self, message_id: str) -> Status:
        """``queued``, ``accepted``, ``missing``, ``delivered``, ``read``, ``expired`` or
        ``failed``. ``missing``: the recipient reported that it never arrived although later
        messages did (SPEC.md §9.3); a delivery receipt still moves it to ``delivered``.
        ``failed`` keeps the relay's code in ``OutboxEntry.error``; ``revoked`` there means the
        recipient was revoked: the relay refused the message, or dropped it from the revoked
        cell's queue after accepting it and said so (SPEC.md M-REL-20) -- it will never be
        delivered."""
        row = tables.outbox_row(self._require_store(), _message_id(message_id))
        if row is None:
            raise UnknownMessage()
        status: Status = row[2]
        return status

    async def wait_status(
        self, message_id: str, until: str = "delivered", timeout: float | None = None
    ) -> Status:
        """Wait until the status is ``until`` or beyond it (``queued`` < ``accepted`` <
        ``missing`` < ``delivered`` < ``read``) and return it.

        Raises ``StatusTimeout`` (also a ``TimeoutError``; ``.status`` is the status reached)
        when ``timeout`` seconds pass first, or the cell is closed while waiting; the message
        stays in the outbox. A final status that is not ``until`` raises too: ``SendFailed``
        (``failed``: the relay refused it; ``.reason`` is its code) and ``MessageExpired``
        (``expired``). ``until="failed"`` / ``"expired"`` waits for that final status."""
        if until not in _RANK and until not in ("expired", "failed"):
            raise ValueError(f"until must be a status, not {until!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            waiter = self._changed.waiter()
            status = await self.status(message_id)
            if status == until or _RANK.get(status, -1) >= _RANK.get(until, 9):
                return status
            if status == "failed":
                row = tables.outbox_row(self._require_store(), _message_id(message_id))
                reason = None if row is None else row[-1]
                raise SendFailed(message_id, reason, self._refusals.get(message_id, ""))
            if status == "expired":
                raise MessageExpired(message_id)
            self._raise_fatal()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise StatusTimeout(message_id, status, until, timeout)
            try:
                async with asyncio.timeout(remaining):
                    await waiter.wait()
            except TimeoutError:
                continue  # the status is read once more, then the deadline has passed
            if not self._is_open():
                raise StatusTimeout(message_id, status, until, timeout)

    def outbox(self, *, limit: int = 100, include_receipts: bool = False) -> list[OutboxEntry]:
        """The most recent sends, oldest first, with their status."""
        store = self._require_store()
        labels = _labels(store)
        return [
            OutboxEntry(bytes(mid).hex(), labels.get(bytes(peer), bytes(peer).hex()), status,
                        precedence_name(prec), content_type_name(ctype), utc(created),
                        utc(expires), relay_seq, error)
            for mid, peer, status, prec, ctype, created, expires, relay_seq, error
            in tables.outbox_rows(store, limit, include_receipts)
        ]  # fmt: skip

    # -- receiving ---------------------------------------------------------------------------

    async def messages(self, *, confirm: bool = False) -> AsyncGenerator[Message, None]:
        """Every message not handed over before, in arrival order, then new ones as they
        arrive.

        A message is stored and acknowledged to the relay before it is yielded. Messages that
        could not be opened are yielded too, with ``error`` set. Ends when the cell closes;
        raises ``CellRevoked``/``CellSuspended``/``CellReplaced`` when the link stops for good.

        When a message counts as handed over, so that no later ``messages()`` yields it:

        * ``confirm=False`` (the default; *at most once* across a crash): as it is yielded.
          If the process dies after the yield and before the application has handled the
          message, no ``messages()`` yields it again; it is still in ``inbox()``, unread.
        * ``confirm=True`` (*exactly once*, for an application that is idempotent by
          ``message.id``): only when the application calls :meth:`confirm` (or
          :meth:`mark_read`) for it. One iteration yields each message once; one that was not
          confirmed is yielded again by the next ``messages(confirm=True)`` — after a crash, a
          restart, or a new iteration. The application records its handling durably, keyed
          by ``message.id``, *then* confirms; given an id it has already recorded, it only
          confirms. Wherever the process dies, every message is then handled exactly once.

        A message yielded with ``error`` set may later be followed by an authentic copy with
        the same ``id`` (a relay delivered an altered copy first): that copy is yielded as a
        new message, so an application records only messages without ``error`` by id.
        """
        cursor = 0  # rows up to here were yielded by this iteration
        while self._is_open():
            store = self._require_store()
            waiter = self._changed.waiter()
            rows = tables.inbox_unyielded(store, 50, self._yield_upto, cursor)
            for row in rows:
                if not self._is_open():  # the consumer closed the cell meanwhile
                    return
                cursor = row.id
                if not confirm:
                    with store.transaction():
                        tables.inbox_mark_yielded(store, row.id)
                yield self._message(store, row)
            if rows:
                continue
            self._raise_fatal()
            await waiter.wait()

    async def confirm(self, *messages: Message) -> None:
        """Record, durably and in one transaction, that the application has handled these
        messages: no ``messages(confirm=True)`` yields them again (see :meth:`messages`).
        Idempotent; :meth:`mark_read` confirms too. Call it only once the application's own
        record of the message is durable."""
        store = self._require_store()
        with store.transaction():
            for message in messages:
                row_id = tables.inbox_row_id(store, bytes.fromhex(message.sender_id),
                                             bytes.fromhex(message.id))  # fmt: skip
                if row_id is not None:
                    tables.inbox_mark_yielded(store, row_id)

    def inbox(self, *, peer: str | None = None, limit: int = 100) -> list[Message]:
        """Stored messages (also those already yielded), oldest first."""
        store = self._require_store()
        sender = _peer_id(store, peer)
        return [self._message(store, row) for row in tables.inbox_rows(store, sender, limit)]

    async def mark_read(self, *messages: Message) -> None:
        """Mark messages read and send their senders read receipts (one per peer). A message
        marked read is also confirmed (:meth:`confirm`): ``messages()`` does not yield it
        again."""
        store = self._require_store()
        peers = set()
        with store.transaction():
            for message in messages:
                sender = bytes.fromhex(message.sender_id)
                row_id = tables.inbox_row_id(store, sender, bytes.fromhex(message.id))
                if row_id is not None:
                    tables.inbox_mark_yielded(store, row_id)
                    if tables.inbox_mark_read(store, row_id):
                        peers.add(sender)
                message.read = True
        for sender in peers:
            await self._flush_receipts(sender)

    def _message(self, store: Store, row: InboxRow) -> Message:
        peer = tables.peer_by_id(store, row.sender)
        body: str | bytes | None = row.body
        file_name = None
        if row.body is not None and row.content_type in (ContentType.TEXT, ContentType.JSON):
            body = row.body.decode(errors="replace")
        elif row.body is not None and row.content_type == ContentType.FILE:
            with contextlib.suppress(ValueError):  # checked on receipt (receive._commit)
                file_name, body = files.decode_file(row.body)
        sent = None if row.sent_at_ms is None else utc(row.sent_at_ms / 1000)
        return Message(row.message_id.hex(), row.sender.hex() if peer is None else peer.label,
                       row.sender.hex(), body, content_type_name(row.content_type),
                       precedence_name(row.precedence), row.marking, sent,
                       utc(row.received_at_ms / 1000), row.seq, row.read, row.error,
                       self._mark_one, file_name=file_name)  # fmt: skip

    async def _mark_one(self, message: Message) -> None:
        await self.mark_read(message)

    # -- peers -------------------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        """The paired cells this cell knows (refreshed from the relay on every connect)."""
        store = self._require_store()
        missing = self._missing(store)
        return [_peer(row, missing.get(row.cell_id, 0)) for row in tables.peer_rows(store)]

    def gaps(self, peer: str | None = None) -> list[Gap]:
        """Channel numbers of ``peer`` (or of every peer) that have not arrived although
        later ones did: envelopes the relay dropped or still delays. A gap is ``missing``
        once it has stayed open ``gap_grace`` seconds; it is then reported to the peer, whose
        status of those messages becomes ``missing``."""
        store = self._require_store()
        sender = _peer_id(store, peer)
        labels = _labels(store)
        cutoff = time.time() - self._gap_grace
        return [Gap(labels.get(g.peer, g.peer.hex()), g.first_seq, g.last_seq, utc(g.noticed_at),
                    g.reported or g.noticed_at <= cutoff)
                for g in channels.gap_rows(store, sender)]  # fmt: skip

    def notices(self) -> AsyncIterator[Notice]:
        """Events for the operator besides messages — a gap becoming missing, a send that
        failed or expired, a changed key, a revoked peer — from now on, until the cell closes
        (:mod:`liaison.client.notices`)."""
        return watch_notices(self)

    @property
    def is_open(self) -> bool:
        """The cell is open (entered and not yet closed)."""
        return self._is_open()

    @property
    def gap_grace(self) -> float:
        """Seconds a gap stays open before its numbers count as missing (``gap_grace``)."""
        return self._gap_grace

    def change_waiter(self) -> asyncio.Event:
        """An event set at the next change of the cell's state (a message stored, a status
        moved, a peer changed, the link up or down, the cell closed). Take it *before*
        reading the state, then :meth:`wait_change` on it: no change is missed."""
        return self._changed.waiter()

    async def wait_change(self, waiter: asyncio.Event, timeout: float | None = None) -> None:
        """Wait until ``waiter`` (from :meth:`change_waiter`) is set, or ``timeout`` seconds."""
        await wait_event(waiter, timeout)

    def _missing(self, store: Store) -> dict[bytes, int]:
        return channels.missing_counts(store, time.time() - self._gap_grace)

    async def refresh_peers(self) -> list[Peer]:
        """Ask the relay for the current peer list (LIST_PEERS) and return it."""
        if self._runner is None:
            raise RelayUnreachable("the cell was opened with connect=False")
        await self._runner.request(f.ListPeersFrame, self._request_timeout)
        return self.peers()

    def peer(self, peer: str) -> Peer:
        store = self._require_store()
        row = _find_peer(store, peer)
        if row is None:
            raise UnknownPeer(peer)
        return _peer(row, self._missing(store).get(row.cell_id, 0))

    def safety_number(self, peer: str, *, new_key: bool = False) -> str:
        """The 60-digit safety number with ``peer`` (12 groups of 5), to compare out of band.
        ``new_key=True``: the number for the changed key waiting to be accepted."""
        store = self._require_store()
        row = _find_peer(store, peer)
        if row is None:
            raise UnknownPeer(peer)
        identity = row.pending_identity if new_key else row.identity
        if identity is None:
            what = "no changed key" if new_key else "no identity key yet"
            raise PeerUnavailable(row.label, f"{row.label!r} has {what}")
        keys, own = store.keys, store.cell_id
        assert keys is not None
        assert own is not None
        digits = cell_safety_number(bytes(keys.identity.public), own, identity, row.cell_id)
        return format_safety_number(digits)

    async def verify(
        self, peer: str, *, accept_new_key: bool = False, safety_number: str | None = None
    ) -> Peer:
        """Record that the safety number with ``peer`` was compared. If the peer's key
        changed, this raises ``KeyChanged`` unless ``accept_new_key``: then the new key is
        pinned, the old sessions are dropped and messages held by the change are opened.

        ``safety_number`` (digits; spaces are ignored), if given, must be the number being
        confirmed — of the new key when one is accepted, else of the pinned key — or this
        raises ``SafetyNumberMismatch`` and changes nothing (so a key that changed again
        after the operator compared the number is not accepted by mistake)."""
        store = self._require_store()
        if self.online:
            with contextlib.suppress(RelayUnreachable):
                await self.refresh_peers()
        row = _find_peer(store, peer)
        if row is None:
            raise UnknownPeer(peer)
        if row.pending_identity is not None and not accept_new_key:
            raise KeyChanged(row.label)
        if safety_number is not None:
            expected = self.safety_number(row.label, new_key=row.pending_identity is not None)
            if "".join(safety_number.split()) != expected.replace(" ", ""):
                raise SafetyNumberMismatch(row.label)
        if row.pending_identity is not None:
            with store.transaction():
                tables.accept_pending_identity(store, row.cell_id)
                channels.reset(store, row.cell_id)  # a new identity: a new channel (M-ENV-8)
            for row_id, relay_seq, received_at_ms, envelope in tables.held_rows(store, row.cell_id):
                outcome = receive(store, row.cell_id, relay_seq, received_at_ms, envelope,
                                  replace_row=row_id)  # fmt: skip
                if outcome.receipt_due or outcome.gap_changed:
                    self._receipts_due.set()
            self._yield_upto = tables.inbox_last_id(store)  # these were ACKed long ago
            self._pending_due.set()  # sends stored for this peer can be sealed now
        elif row.identity is None:
            raise PeerUnavailable(row.label, f"{row.label!r} has no identity key yet")
        else:
            with store.transaction():
                tables.set_verified(store, row.cell_id)
        self._changed.fire()
        return self.peer(row.label)

    # -- session resets (resets.py, SPEC.md §7.7) ------------------------------------------------

    async def reset_session(self, peer: str) -> str | None:
        """Start a new session with ``peer`` over a broken or stale one (M-SES-11): the
        sessions with it are dropped, a new one is started from a fresh bundle of its pinned
        identity and its first envelope tells the peer, which then uses the new session. The
        request is stored first: offline (or with the relay unreachable) it is carried out at
        the next link, and ``None`` is returned; else the reset envelope's message id."""
        store = self._require_store()
        row = await self._resolve(peer)
        with store.transaction():
            resets.request(store, row.cell_id, resets.REASON_OPERATOR)
        if not self.online:
            return None
        async with self._lock_for(row.cell_id):
            if not resets.is_pending(store, row.cell_id):  # the link's bring-up did it
                return None
            return await self._reset_locked(row)

    def pending_resets(self) -> list[str]:
        """The peers whose session reset waits for the next link (names or hex ids)."""
        store = self._require_store()
        labels = _labels(store)
        return [labels.get(peer, peer.hex()) for peer in resets.pending(store)]

    async def _reset_locked(self, row: PeerRow) -> str:
        """Carry out the requested reset with ``row`` (the caller holds the peer's lock)."""
        store = self._require_store()
        reason = resets.pending(store).get(row.cell_id, resets.REASON_OPERATOR)
        session, pin = await self._start_session(row)
        message_id, envelope = resets.seal_reset(store, session, reason,
                                                 ttl=self._receipt_ttl, pin=pin)  # fmt: skip
        log.warning("session with %s reset (reason %d)", row.cell_id.hex(), reason)
        self._changed.fire()
        self._queue_transmit(message_id, envelope)
        self._receipts_due.set()  # receipts held by the reset go with the new session
        return message_id.hex()

    async def _on_link_up(self, link: Link) -> None:
        await super()._on_link_up(link)
        if self._is_open() and resets.pending(self._require_store()):
            task = asyncio.get_running_loop().create_task(self._run_resets())
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _run_resets(self) -> None:
        """The resets requested before this link (a restored home: every peer)."""
        store = self._require_store()
        for peer in resets.pending(store):
            row = tables.peer_by_id(store, peer)
            if row is None or row.status == "revoked" or not row.paired:
                with store.transaction():
                    resets.drop_request(store, peer)
                continue
            if row.pending_identity is not None:
                continue  # waits until the operator decides on the key change
            try:
                async with self._lock_for(peer):
                    if self._is_open() and resets.is_pending(store, peer):
                        await self._reset_locked(row)
            except ClientError as exc:
                log.warning("cannot reset the session with %s yet: %s", peer.hex(), exc.code)


def _check_sendable(row: PeerRow) -> None:
    """Raise why this cell may not send to the peer of ``row`` now, if it may not: a key
    change waiting for the operator, a revoked peer, no channel any more."""
    if row.pending_identity is not None:
        raise KeyChanged(row.label)
    if row.status == "revoked":
        raise PeerRevoked(row.label)
    if not row.paired:
        raise NotPaired(row.label)


def _is_cell_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower())


def _find_peer(store: Store, peer: str) -> PeerRow | None:
    row = tables.peer_by_name(store, peer)
    if row is None and _is_cell_id(peer):
        row = tables.peer_by_id(store, bytes.fromhex(peer))
    return row


def _peer_id(store: Store, peer: str | None) -> bytes | None:
    """The cell id of ``peer`` (a name or hex id); None for None; ``UnknownPeer`` if unknown."""
    if peer is None:
        return None
    row = _find_peer(store, peer)
    if row is None:
        raise UnknownPeer(peer)
    return row.cell_id


def _labels(store: Store) -> dict[bytes, str]:
    return {row.cell_id: row.label for row in tables.peer_rows(store)}


def _peer(row: PeerRow, missing: int = 0) -> Peer:
    status = row.status if row.paired or row.status == "revoked" else "unpaired"
    return Peer(row.label, row.cell_id.hex(), status,
                None if row.identity is None else row.identity.hex(), row.verified,
                row.pending_identity is not None, missing)  # fmt: skip


def _message_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise UnknownMessage(f"{text!r} is not a message id") from None
    if len(raw) != 16:
        raise UnknownMessage(f"{text!r} is not a message id")
    return raw


def _encode_body(
    body: Any, content_type: str | None, file_name: str | None = None
) -> tuple[ContentType, bytes]:
    """``str`` → TEXT, ``bytes`` → FILE_CHUNK (FILE with ``file_name``); ``content_type=
    "json"`` → JSON."""
    if file_name is not None:
        if content_type not in (None, "file") or not isinstance(body, bytes | bytearray):
            raise TypeError("a file_name goes with a bytes body (content_type 'file')")
        return ContentType.FILE, files.encode_file(file_name, bytes(body))
    kind = content_type or ("text" if isinstance(body, str) else "file")
    if kind == "json":
        text = body if isinstance(body, str | bytes) else json.dumps(body)
        data = text.encode() if isinstance(text, str) else bytes(text)
        try:
            json.loads(data)
        except ValueError as exc:
            raise ValueError(f"the body is not valid JSON: {exc}") from None
        return ContentType.JSON, data
    if kind in ("text", "file"):
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body)
        else:
            raise TypeError("the body must be str or bytes (or use content_type='json')")
        return (ContentType.TEXT if kind == "text" else ContentType.FILE_CHUNK), data
    raise ValueError(f"content_type must be 'text', 'json' or 'file', not {content_type!r}")


def _too_large(exc: MessageTooLarge, body: Any, file_name: str | None) -> MessageTooLarge:
    """The error for a body that fits no envelope, in the caller's units (a file's bytes)."""
    if exc.size is None or exc.limit is None:
        return exc
    if file_name is None:
        return MessageTooLarge(
            f"the message is {exc.size} bytes; at most {exc.limit} bytes fit one message",
            size=exc.size, limit=exc.limit,
        )  # fmt: skip
    overhead = exc.size - len(body)
    size, limit = len(body), max(0, exc.limit - overhead)
    return MessageTooLarge(
        f"the file is {size} bytes; at most {limit} bytes fit one message (larger files are "
        "not supported yet)", size=size, limit=limit,
    )  # fmt: skip
