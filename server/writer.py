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
* Quotas: a send may carry ``(max_messages, max_bytes)`` for its recipient's queue. The writer
  counts the queue inside the batch's transaction (PostgreSQL: under a per-recipient advisory
  lock, so concurrent relay nodes cannot both fill the last slot), adds the rows accepted
  earlier in the same batch, and fails only the overflowing rows with :class:`QueueFull`. A
  re-send of an already stored message is never refused: it is a duplicate, not new data.
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
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from liaison.server import dialect, store
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
    """The writer is closed or stopped before this item was committed."""


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
        self._batch_max = batch_max
        self._max_pending = max_pending if max_pending is not None else 16 * batch_max
        self._on_batch = on_batch
        self._items: deque[_Item] = deque()
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
        if self._task is not None:
            await asyncio.wait([self._task])  # its failure, if any, was logged by _run
        self._fail_queued()

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
            async with dialect.write_transaction(self._engine) as conn:
                outcomes = await self._apply(conn, batch)
            # The transaction has committed here, and only here may anyone be told.
        except asyncio.CancelledError:
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

    async def _apply(self, conn: AsyncConnection, batch: list[_Send | _Ack]) -> list[_Outcome]:
        outcomes: list[_Outcome] = [False] * len(batch)
        acks = [(i, item) for i, item in enumerate(batch) if isinstance(item, _Ack)]
        if acks:
            gone = await store.delete_acked_pairs(conn, [(a.recipient, a.seq) for _, a in acks])
            for i, ack in acks:
                outcomes[i] = (ack.recipient, ack.seq) in gone
        sends = [(i, item) for i, item in enumerate(batch) if isinstance(item, _Send)]
        if sends:
            accepted = await self._check_quotas(conn, sends, outcomes)
            results = await store.insert_envelopes(conn, [s.row for _, s in accepted])
            for (i, _), result in zip(accepted, results, strict=True):
                outcomes[i] = result
        return outcomes

    async def _check_quotas(
        self, conn: AsyncConnection, sends: list[tuple[int, _Send]], outcomes: list[_Outcome]
    ) -> list[tuple[int, _Send]]:
        """The sends that fit their recipients' quotas; ``outcomes`` gets a :class:`QueueFull`
        for each one that does not.

        A re-send of a stored message does not count. Looking that up costs a query, so it is
        done only when some row overflows with every row counted as new — and only for the
        recipients concerned (each recipient's accounting is independent of the others')."""
        limited = {s.row.recipient for _, s in sends if s.quota is not None}
        if not limited:
            return sends
        await dialect.lock_keys(conn, _QUOTA_LOCK, limited)
        usage = await store.queue_usages(conn, limited)
        accepted, refused = _fit(sends, usage, set())
        if refused:
            crowded = {exc.recipient for exc in refused.values()}
            keys = [
                s.row.key for _, s in sends if s.quota is not None and s.row.recipient in crowded
            ]
            accepted, refused = _fit(sends, usage, set(await store.existing_seqs(conn, keys)))
        for i, exc in refused.items():
            outcomes[i] = exc
        return accepted


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
