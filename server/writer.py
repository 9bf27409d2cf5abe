"""Group commit: the relay's one durable write path for sends and acks.

Theory of operation:

* Callers enqueue work and get a future: :meth:`GroupCommitWriter.enqueue_send` /
  :meth:`~GroupCommitWriter.enqueue_ack` (plain functions, for a reader loop that attaches a
  callback and creates no task per message) or the awaitable :meth:`~GroupCommitWriter.submit_send`
  / :meth:`~GroupCommitWriter.submit_ack`.
* ONE background task takes whatever is queued, up to ``batch_max`` items, the moment the
  previous batch is done — it never waits on a timer to fill a batch — and writes them all in
  ONE transaction (one fsync: SQLite runs ``synchronous=FULL``). While that commit is in
  flight the next batch accumulates, so batches grow with load on their own.
* Futures are resolved only **after the commit returns**. If anything in the transaction or the
  commit fails, every future of the batch fails with :class:`WriteFailed` (``__cause__`` is the
  database error) and nothing of the batch is acknowledged; later batches go on.
* One batch, one hop. A batch is applied by ONE synchronous function on one connection
  (:func:`_apply`: acks, quota check, tombstone lookup, ``INSERT ... RETURNING``, all SQLAlchemy
  Core). On a SQLite file it runs in the writer's own thread, on its own ``sqlite3`` connection
  (:func:`liaison.server.db.create_sqlite_writer_engine`: same file, same pragmas), opened with
  ``BEGIN IMMEDIATE``: one hop to that thread and one back per batch (a ``SimpleQueue`` and
  ``call_soon_threadsafe``), instead of a round trip through aiosqlite's thread for every
  statement, cursor, fetch and close. On PostgreSQL (and an in-memory SQLite, which a second
  connection cannot open) it runs inside the async engine's transaction through
  ``AsyncConnection.run_sync``. The writer connection's ``begin``/``commit``/``rollback``
  events are passed on to the listeners of the async engine's ``sync_engine``, so
  instrumentation attached to the relay's engine sees the writer's transactions too.
* Quotas: a send may carry ``(max_messages, max_bytes)`` for its recipient's queue. The writer
  takes the queue's current usage, adds the rows accepted earlier in the same batch, and fails
  only the overflowing rows with :class:`QueueFull`. A re-send of an already stored message is
  never refused: it is a duplicate, not new data. Where the usage comes from:

  - PostgreSQL (several relay nodes share the database): counted inside the batch's
    transaction, under a per-recipient advisory lock, so concurrent nodes cannot both fill the
    last slot.
  - SQLite file: in-memory counters per recipient (:class:`_Counters`), loaded from the
    database the first time a recipient is seen, then kept up to date by the writer itself
    (inserts, acks) — O(batch), not O(backlog), per batch. Anything written by another
    connection (the expiry sweep's purge, a revocation's purge, another writer) changes
    SQLite's ``PRAGMA data_version``, read at the start of every batch: the counters are then
    dropped and reloaded on demand, inside the transaction that holds the write lock. So they
    are exact, and nobody needs to tell the writer about deletions made elsewhere.
* Acks in a batch are applied before its sends, so an ack frees quota for a send in the same
  batch. An ack deletes only an envelope addressed to the acknowledging cell.
* :meth:`GroupCommitWriter.flush` waits until everything enqueued before it is settled
  (batches are committed strictly one after another, in queue order).
* Bounded: beyond ``max_pending`` queued items a new item's future fails at once with
  :class:`WriterOverloaded` (explicit backpressure instead of unbounded memory).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.server import db, dialect, store
from liaison.server.store import EnvelopeRow

__all__ = [
    "GroupCommitWriter",
    "QueueFull",
    "WriteFailed",
    "WriterClosed",
    "WriterError",
    "WriterOverloaded",
]

log = logging.getLogger("liaison.server.writer")

_QUOTA_LOCK = b"liaison-queue"

Quota = tuple[int, int]
"""``(max_messages, max_bytes)`` for one recipient's queue."""


class WriterError(Exception):
    """Root of the writer's errors."""


class QueueFull(WriterError):
    """Storing this envelope would take the recipient's queue past its quota."""

    def __init__(self, recipient: bytes, messages: int, size: int) -> None:
        super().__init__(f"queue full: {messages} messages / {size} bytes already queued")
        self.recipient = recipient
        self.messages = messages
        self.size = size


class WriteFailed(WriterError):
    """The batch holding this item was not committed (``__cause__`` says why). Nothing in it
    was acknowledged; it is safe to submit again (sends are deduplicated by message id)."""


class WriterClosed(WriterError):
    """The writer is closed or stopped before this item was acknowledged (if it was cancelled
    in the middle of a batch, the batch may still have been committed: resending is safe)."""


class WriterOverloaded(WriterError):
    """Too many items are waiting for the writer; try again later."""


@dataclass(slots=True)
class _Send:
    row: EnvelopeRow
    quota: Quota | None
    future: asyncio.Future[tuple[int, bool]]


@dataclass(slots=True)
class _Ack:
    recipient: bytes
    seq: int
    future: asyncio.Future[bool]


@dataclass(slots=True)
class _Barrier:
    future: asyncio.Future[None]


_Item = _Send | _Ack | _Barrier
_Outcome = tuple[int, bool] | bool | BaseException


@dataclass(slots=True)
class WriterStats:
    """Counters for ``/metrics``: committed batches and items, and the batch sizes."""

    batches: int = 0
    rows: int = 0
    last_batch_size: int = 0
    max_batch_size: int = 0
    failed_batches: int = 0
    quota_rejections: int = 0


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Fire-and-forget acks: mark a failure as seen so asyncio does not log it at GC time.
    if not future.cancelled():
        future.exception()


class GroupCommitWriter:
    """The group-commit writer. Call :meth:`start` inside the event loop, :meth:`close` to
    drain and stop; or use it as ``async with GroupCommitWriter(engine) as writer:``.

    ``on_batch(size, seconds)`` is called after every committed batch (e.g. to feed a
    histogram); the counters are in :attr:`stats`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        batch_max: int = 512,
        *,
        max_pending: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._engine = engine
        self._backend: _Backend = (
            _ThreadBackend(engine) if db.is_file_sqlite(engine.url) else _Backend(engine)
        )
        self._batch_max = batch_max
        self._max_pending = max_pending if max_pending is not None else 16 * batch_max
        self._on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._high_water = max(1, self._max_pending // 2)
        self._room = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = WriterStats()

    # -- public API --------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Items queued and not yet taken into a batch."""
        return len(self._items)

    @property
    def saturated(self) -> bool:
        """More than half of ``max_pending`` items are waiting: producers should pause."""
        return len(self._items) >= self._high_water

    async def wait_for_room(self) -> None:
        """Return once the queue is below the high-water mark (backpressure for producers:
        a relay link stops reading its socket instead of refusing sends as busy)."""
        while len(self._items) >= self._high_water and not self._closing:
            self._room.clear()
            await self._room.wait()

    @property
    def batches(self) -> int:
        return self.stats.batches

    @property
    def rows(self) -> int:
        return self.stats.rows

    @property
    def last_batch_size(self) -> int:
        return self.stats.last_batch_size

    def start(self) -> None:
        """Start the background task (in the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="liaison-group-commit"
            )

    async def close(self) -> None:
        """Stop accepting work, commit everything already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        self._room.set()  # release producers waiting for room
        if self._task is not None:
            await asyncio.wait([self._task])  # its failure, if any, was logged by _run
        self._fail_queued()
        await self._backend.close()

    async def __aenter__(self) -> GroupCommitWriter:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def enqueue_send(
        self, row: EnvelopeRow, quota: Quota | None = None
    ) -> asyncio.Future[tuple[int, bool]]:
        """Queue ``row`` for storage; the future gives ``(seq, duplicate)`` once committed, or
        fails with :class:`QueueFull`, :class:`WriteFailed`, :class:`WriterClosed` or
        :class:`WriterOverloaded`. Acknowledge the sender only when it resolves."""
        future: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        self._enqueue(_Send(row, quota, future))
        return future

    def enqueue_ack(self, recipient: bytes, seq: int) -> asyncio.Future[bool]:
        """Queue the deletion of envelope ``seq`` from ``recipient``'s queue; the future says
        whether it was there. Failures need not be awaited (they are marked retrieved)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._enqueue(_Ack(recipient, seq, future))
        return future

    async def submit_send(self, row: EnvelopeRow, quota: Quota | None = None) -> tuple[int, bool]:
        """Store ``row`` durably; return ``(seq, duplicate)`` after the commit."""
        return await self.enqueue_send(row, quota)

    async def submit_ack(self, recipient: bytes, seq: int) -> bool:
        """Delete ``recipient``'s envelope ``seq`` durably; ``False`` if it was not there."""
        return await self.enqueue_ack(recipient, seq)

    async def flush(self) -> None:
        """Return once everything enqueued before this call has been committed (or failed):
        e.g. before re-reading a queue whose acks were enqueued without waiting."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Barrier(future))
        await future

    # -- the batch loop ----------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        if self._closing or (self._task is not None and self._task.done()):
            item.future.set_exception(WriterClosed("the writer is closed"))
        elif len(self._items) >= self._max_pending:
            item.future.set_exception(WriterOverloaded(f"{len(self._items)} items waiting"))
        else:
            self._items.append(item)
            self._wakeup.set()

    def _fail_queued(self) -> None:
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(WriterClosed("the writer stopped"))

    async def _run(self) -> None:
        while True:
            if not self._items:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            take = min(len(self._items), self._batch_max)
            batch = [self._items.popleft() for _ in range(take)]
            if len(self._items) < self._high_water:
                self._room.set()
            live = [item for item in batch if not item.future.done()]  # skip cancelled callers
            if not live:
                continue
            try:
                await self._commit(live)
            except Exception:  # pragma: no cover - a bug; keep serving the next batches
                log.exception("group-commit writer: unexpected failure")
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(WriteFailed("internal writer error"))

    async def _commit(self, items: list[_Item]) -> None:
        barriers = [item for item in items if isinstance(item, _Barrier)]
        batch = [item for item in items if not isinstance(item, _Barrier)]
        try:
            if batch:
                await self._commit_batch(batch)
        finally:
            # Everything before a barrier is settled now (batches run one after another).
            for barrier in barriers:
                if not barrier.future.done():
                    barrier.future.set_result(None)

    async def _commit_batch(self, batch: list[_Send | _Ack]) -> None:
        started = time.perf_counter()
        try:
            outcomes = await self._backend.commit(batch)
            # The transaction has committed here, and only here may anyone be told.
        except asyncio.CancelledError:
            # The outcome is unknown (SQLite: the writer's thread finishes the batch anyway):
            # WriterClosed never says "not stored", only "not acknowledged"; a resend is safe.
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(WriterClosed("the writer was cancelled"))
            raise
        except Exception as exc:
            self.stats.failed_batches += 1
            log.error("group commit of %d items failed: %s", len(batch), type(exc).__name__)
            for item in batch:
                if not item.future.done():
                    failure = WriteFailed(f"batch not committed: {type(exc).__name__}: {exc}")
                    failure.__cause__ = exc
                    item.future.set_exception(failure)
            return
        size = len(batch)
        stats = self.stats
        stats.batches += 1
        stats.rows += size
        stats.last_batch_size = size
        stats.max_batch_size = max(stats.max_batch_size, size)
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                stats.quota_rejections += isinstance(outcome, QueueFull)
                item.future.set_exception(outcome)
            elif isinstance(item, _Send):
                assert isinstance(outcome, tuple)
                item.future.set_result(outcome)
            else:
                item.future.set_result(bool(outcome))
        if self._on_batch is not None:
            try:
                self._on_batch(size, time.perf_counter() - started)
            except Exception:
                log.exception("on_batch callback failed")


# -- one batch, one synchronous function -------------------------------------------------------


class _QueueUsage:
    """Where a batch's quota check gets each recipient's ``(messages, bytes)``: counted in the
    database, in the batch's transaction, under per-recipient advisory locks (PostgreSQL,
    where several relay nodes write). The hooks let :class:`_Counters` keep counts instead."""

    def begin(self, conn: Connection) -> None:
        """A batch's transaction has begun on ``conn``."""

    def deleted(self, gone: dict[tuple[bytes, int], int]) -> None:
        """The batch deleted these envelopes (``{(recipient, seq): size}``)."""

    def usage(self, conn: Connection, recipients: set[bytes]) -> dict[bytes, tuple[int, int]]:
        """The usage of each of ``recipients``' queues now, inside the transaction."""
        dialect.lock_keys_sync(conn, _QUOTA_LOCK, recipients)
        return store.queue_usages_sync(conn, recipients)

    def stored(self, recipient: bytes, size: int) -> None:
        """The batch stored a new envelope of ``size`` bytes for ``recipient``."""

    def committed(self) -> None:
        """The batch's transaction committed."""

    def forget(self) -> None:
        """The batch failed (rolled back, or its commit's outcome is unknown)."""


class _Counters(_QueueUsage):
    """Queue usage kept in memory, for a writer whose connection is the only one that writes
    envelopes in steady state (SQLite: one relay process, one writer).

    A recipient's counter is loaded from the database (count and sum over its queue) the first
    time a batch needs it, then follows the writer's own inserts and acks. The batch's changes
    are staged and published only when the transaction commits. ``PRAGMA data_version`` is read
    at the start of every batch (after ``BEGIN IMMEDIATE``, so nobody else can write until the
    commit): a change means another connection committed something — an expiry or revocation
    purge, another writer — and every counter is dropped, to be reloaded on demand.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._known: dict[bytes, tuple[int, int]] = {}
        self._staged: dict[bytes, tuple[int, int]] = {}
        self._version: int | None = None
        self._capacity = capacity

    def _get(self, recipient: bytes) -> tuple[int, int] | None:
        staged = self._staged.get(recipient)
        return self._known.get(recipient) if staged is None else staged

    def begin(self, conn: Connection) -> None:
        self._staged.clear()
        version = dialect.data_version(conn)
        if version != self._version:
            self._known.clear()
            self._version = version

    def deleted(self, gone: dict[tuple[bytes, int], int]) -> None:
        for (recipient, _seq), size in gone.items():
            current = self._get(recipient)
            if current is not None:  # else it is loaded later, after this delete
                self._staged[recipient] = (current[0] - 1, current[1] - size)

    def usage(self, conn: Connection, recipients: set[bytes]) -> dict[bytes, tuple[int, int]]:
        missing = [r for r in recipients if self._get(r) is None]
        if missing:
            loaded = store.queue_usages_sync(conn, missing)
            for recipient in missing:
                self._staged[recipient] = loaded.get(recipient, (0, 0))
        return {r: self._staged.get(r) or self._known[r] for r in recipients}

    def stored(self, recipient: bytes, size: int) -> None:
        current = self._get(recipient)
        if current is not None:  # else it is loaded later, with this envelope
            self._staged[recipient] = (current[0] + 1, current[1] + size)

    def committed(self) -> None:
        if len(self._known) + len(self._staged) > self._capacity:
            self._known.clear()  # bounded memory; the staged counters are exact
        self._known.update(self._staged)
        self._staged.clear()

    def forget(self) -> None:
        self._known.clear()
        self._staged.clear()
        self._version = None


def _apply(conn: Connection, batch: Sequence[_Send | _Ack], usage: _QueueUsage) -> list[_Outcome]:
    """Apply one batch on ``conn``, inside its transaction: acks first (an ack frees quota for
    a send of the same batch), then the sends that fit their quotas. Returns each item's
    outcome, in order; raises if the batch must not commit."""
    outcomes: list[_Outcome] = [False] * len(batch)
    acks = [(i, item) for i, item in enumerate(batch) if isinstance(item, _Ack)]
    if acks:
        gone = store.delete_acked_pairs_sync(conn, [(a.recipient, a.seq) for _, a in acks])
        usage.deleted(gone)
        for i, ack in acks:
            outcomes[i] = (ack.recipient, ack.seq) in gone
    sends = [(i, item) for i, item in enumerate(batch) if isinstance(item, _Send)]
    if sends:
        accepted = _check_quotas(conn, sends, outcomes, usage)
        results = store.insert_envelopes_sync(conn, [s.row for _, s in accepted])
        for (i, send), result in zip(accepted, results, strict=True):
            outcomes[i] = result
            if not result[1]:
                usage.stored(send.row.recipient, len(send.row.data))
    return outcomes


def _check_quotas(
    conn: Connection,
    sends: list[tuple[int, _Send]],
    outcomes: list[_Outcome],
    usage: _QueueUsage,
) -> list[tuple[int, _Send]]:
    """The sends that fit their recipients' quotas; ``outcomes`` gets a :class:`QueueFull` for
    each one that does not.

    A re-send of a stored message does not count. Looking that up costs a query, so it is done
    only when some row overflows with every row counted as new — and only for the recipients
    concerned (each recipient's accounting is independent of the others')."""
    limited = {s.row.recipient for _, s in sends if s.quota is not None}
    if not limited:
        return sends
    used = usage.usage(conn, limited)
    accepted, refused = _fit(sends, used, set())
    if refused:
        crowded = {exc.recipient for exc in refused.values()}
        keys = [s.row.key for _, s in sends if s.quota is not None and s.row.recipient in crowded]
        accepted, refused = _fit(sends, used, set(store.existing_seqs_sync(conn, keys)))
    for i, exc in refused.items():
        outcomes[i] = exc
    return accepted


# -- where a batch runs ---------------------------------------------------------------------------


class _Backend:
    """Runs a batch in the async engine's transaction, through ``AsyncConnection.run_sync``:
    PostgreSQL (quotas counted in the database) and in-memory SQLite."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._usage = _QueueUsage()

    async def commit(self, batch: list[_Send | _Ack]) -> list[_Outcome]:
        """Apply and commit ``batch``; raise if it was not committed."""
        async with dialect.write_transaction(self._engine) as conn:
            return await conn.run_sync(_apply, batch, self._usage)

    async def close(self) -> None:
        """Release what the backend holds (after the last batch)."""


class _ThreadBackend(_Backend):
    """A SQLite file: every batch runs, start to commit, as ONE call in the writer's own thread
    on its own connection (opened lazily, kept, reopened after a failed batch).

    The hop is a bare ``queue.SimpleQueue`` one way and ``loop.call_soon_threadsafe`` the other:
    about half the CPU of ``run_in_executor`` and its two chained futures, per batch."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._sync_engine = db.create_sqlite_writer_engine(engine.url)
        _forward_transaction_events(self._sync_engine, engine.sync_engine)
        self._usage = _Counters()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None

    async def commit(self, batch: list[_Send | _Ack]) -> list[_Outcome]:
        if self._thread is None:
            # A daemon: a writer never closed must not keep the process alive (an interrupted
            # transaction is rolled back by SQLite).
            self._thread = threading.Thread(target=self._serve, name="liaison-writer", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[_Outcome]] = loop.create_future()
        self._jobs.put((batch, loop, done))
        return await done

    def _serve(self) -> None:  # the writer thread
        while True:
            batch, loop, done = self._jobs.get()
            if batch is None:  # close(): everything queued before has been done
                self._disconnect()
                loop.call_soon_threadsafe(_settle, done, [], None)
                return
            try:
                outcomes = self._commit(batch)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, outcomes, None)

    def _commit(self, batch: list[_Send | _Ack]) -> list[_Outcome]:  # in the writer thread
        conn = self._conn
        if conn is None:
            conn = self._conn = self._sync_engine.connect()
        try:
            with conn.begin():
                dialect.begin_immediate(conn)
                self._usage.begin(conn)
                outcomes = _apply(conn, batch, self._usage)
        except BaseException:
            self._usage.forget()
            self._disconnect()  # a fresh connection for the next batch, whatever went wrong
            raise
        self._usage.committed()
        return outcomes

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a broken connection
                log.exception("closing the writer's SQLite connection failed")

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            loop = asyncio.get_running_loop()
            stopped: asyncio.Future[list[_Outcome]] = loop.create_future()
            self._jobs.put((None, loop, stopped))  # after any batch still queued or running
            await asyncio.shield(stopped)
            thread.join()  # it has returned or is about to
        self._sync_engine.dispose()


# A batch for the writer thread (``None``: stop), the loop to answer on, and the answer.
_Job = tuple[
    list["_Send | _Ack"] | None, asyncio.AbstractEventLoop, "asyncio.Future[list[_Outcome]]"
]


def _settle(
    done: asyncio.Future[list[_Outcome]],
    outcomes: list[_Outcome] | None,
    exc: BaseException | None,
) -> None:
    if done.done():  # the awaiting task was cancelled
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        assert outcomes is not None
        done.set_result(outcomes)


def _forward_transaction_events(source: Engine, target: Engine) -> None:
    """Pass ``source``'s connection ``begin``/``commit``/``rollback`` events on to the listeners
    registered on ``target`` (the relay's engine), whenever they were registered."""

    def begin(conn: Connection) -> None:
        target.dispatch.begin(conn)

    def commit(conn: Connection) -> None:
        target.dispatch.commit(conn)

    def rollback(conn: Connection) -> None:
        target.dispatch.rollback(conn)

    event.listen(source, "begin", begin)
    event.listen(source, "commit", commit)
    event.listen(source, "rollback", rollback)


def _fit(
    sends: list[tuple[int, _Send]],
    usage: dict[bytes, tuple[int, int]],
    stored: set[tuple[bytes, bytes]],
) -> tuple[list[tuple[int, _Send]], dict[int, QueueFull]]:
    """Charge the sends, in order, to their recipients' current ``usage``; keys in ``stored``
    (and repeats within the batch) are free. Returns the accepted sends and the refusals."""
    used = dict(usage)
    accepted: list[tuple[int, _Send]] = []
    refused: dict[int, QueueFull] = {}
    taken: set[tuple[bytes, bytes]] = set()
    for i, send in sends:
        row = send.row
        if send.quota is not None and row.key not in stored and row.key not in taken:
            messages, size = used.get(row.recipient, (0, 0))
            max_messages, max_bytes = send.quota
            if messages + 1 > max_messages or size + len(row.data) > max_bytes:
                refused[i] = QueueFull(row.recipient, messages, size)
                continue
            used[row.recipient] = (messages + 1, size + len(row.data))
        taken.add(row.key)
        accepted.append((i, send))
    return accepted, refused
