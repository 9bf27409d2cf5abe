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

Bodies: a ``str`` is sent as TEXT (UTF-8); ``bytes`` as FILE_CHUNK (the raw bytes, no header);
``content_type="json"`` sends JSON (a ``str``/``bytes`` JSON text, or any JSON-serialisable
object). Ids are hex strings. Sending to a peer with no session fetches its prekey bundle,
checks it against the pinned identity (pin on first use) and starts a session; the first
message after that carries the session setup. The module ``core`` has the machinery;
``receive`` and ``outgoing`` say what each transaction holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator
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

from . import channels, outgoing, tables
from .core import CellCore
from .enroll import ENROLL_ONE_TIME_PREKEYS, enroll
from .errors import (
    ClientError,
    KeyChanged,
    NotPaired,
    PeerRevoked,
    PeerUnavailable,
    ProtocolFailure,
    RelayUnreachable,
    UnknownMessage,
    UnknownPeer,
)
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
from .receive import receive
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
    ) -> str:
        """Seal ``body`` for ``peer`` (a name or hex cell id), store it in the outbox and queue
        it for the link; returns the message id. The message is safe once this returns: it is
        resent until the relay accepts it, also across restarts. Returns without waiting on
        the network (a stalled or reconnecting link delays the sending, not the caller).

        With no session with the peer yet and the relay not reached (offline, or
        ``connect=False``), the message is stored too — its body sealed at rest — and sealed
        into an envelope once the link is up and the peer's bundle is fetched."""
        store = self._require_store()
        self._raise_fatal()
        ctype, payload = _encode_body(body, content_type)
        prec = parse_precedence(precedence)
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        row = await self._resolve(peer)
        expires_at = int(time.time()) + ttl
        async with self._lock_for(row.cell_id):
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
            message_id, envelope = outgoing.seal_into_outbox(
                store, session, row_id, content_type=ctype, payload=payload, precedence=prec,
                expires_at=expires_at, marking=marking, pin=pin,
            )  # fmt: skip
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
                if row.pending_identity is not None:
                    raise KeyChanged(row.label)
                if row.status == "revoked":
                    raise PeerRevoked(row.label)
                if not row.paired:
                    raise NotPaired(row.label)
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
        if row.pending_identity is not None:
            raise KeyChanged(row.label)
        if row.status == "revoked":
            raise PeerRevoked(row.label)
        if not row.paired:
            raise NotPaired(row.label)
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
        messages did (SPEC.md §9.3); a delivery receipt still moves it to ``delivered``."""
        row = tables.outbox_row(self._require_store(), _message_id(message_id))
        if row is None:
            raise UnknownMessage()
        status: Status = row[2]
        return status

    async def wait_status(
        self, message_id: str, until: str = "delivered", timeout: float | None = None
    ) -> Status:
        """Wait until the status is ``until`` or beyond it (``queued`` < ``accepted`` <
        ``missing`` < ``delivered`` < ``read``), or final (``expired``, ``failed``); returns
        the status then, or the current one after ``timeout`` seconds."""
        if until not in _RANK and until not in ("expired", "failed"):
            raise ValueError(f"until must be a status, not {until!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            waiter = self._changed.waiter()
            status = await self.status(message_id)
            if status in ("expired", "failed") or _RANK.get(status, -1) >= _RANK.get(until, 9):
                return status
            self._raise_fatal()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return status
            try:
                async with asyncio.timeout(remaining):
                    await waiter.wait()
            except TimeoutError:
                return await self.status(message_id)
            if not self._is_open():
                return status

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
        if row.body is not None and row.content_type in (ContentType.TEXT, ContentType.JSON):
            body = row.body.decode(errors="replace")
        sent = None if row.sent_at_ms is None else utc(row.sent_at_ms / 1000)
        return Message(row.message_id.hex(), row.sender.hex() if peer is None else peer.label,
                       row.sender.hex(), body, content_type_name(row.content_type),
                       precedence_name(row.precedence), row.marking, sent,
                       utc(row.received_at_ms / 1000), row.seq, row.read, row.error,
                       self._mark_one)  # fmt: skip

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

    async def verify(self, peer: str, *, accept_new_key: bool = False) -> Peer:
        """Record that the safety number with ``peer`` was compared. If the peer's key
        changed, this raises ``KeyChanged`` unless ``accept_new_key``: then the new key is
        pinned, the old sessions are dropped and messages held by the change are opened."""
        store = self._require_store()
        if self.online:
            with contextlib.suppress(RelayUnreachable):
                await self.refresh_peers()
        row = _find_peer(store, peer)
        if row is None:
            raise UnknownPeer(peer)
        if row.pending_identity is not None:
            if not accept_new_key:
                raise KeyChanged(row.label)
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


def _encode_body(body: Any, content_type: str | None) -> tuple[ContentType, bytes]:
    """``str`` → TEXT, ``bytes`` → FILE_CHUNK; ``content_type="json"`` → JSON."""
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
