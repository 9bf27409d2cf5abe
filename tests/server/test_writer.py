"""The group-commit writer (``liaison.server.writer``) on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.server import migrate, store
from liaison.server.db import create_engine
from liaison.server.dialect import write_transaction
from liaison.server.schema import envelopes
from liaison.server.writer import (
    GroupCommitWriter,
    QueueFull,
    WriteFailed,
    WriterClosed,
    WriterOverloaded,
)
from tests.server.storekit import cell, envelope_count, row

REJECT = 99  # a precedence the test trigger below refuses at INSERT time


async def install_reject_trigger(engine: AsyncEngine) -> None:
    """A real database-side failure in the middle of a batch: any row with precedence 99."""
    async with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(
                text(
                    "CREATE TRIGGER reject_99 BEFORE INSERT ON envelopes "
                    "WHEN NEW.precedence = 99 BEGIN SELECT RAISE(ABORT, 'rejected by test'); END"
                )
            )
        else:
            await conn.execute(
                text(
                    "CREATE FUNCTION reject_99() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.precedence = 99 THEN RAISE EXCEPTION 'rejected by test'; END IF; "
                    "RETURN NEW; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER reject_99 BEFORE INSERT ON envelopes "
                    "FOR EACH ROW EXECUTE FUNCTION reject_99()"
                )
            )


async def test_concurrent_sends_share_few_transactions(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    rows = [row(bob, alice) for _ in range(500)]
    sizes: list[int] = []
    writer = GroupCommitWriter(engine, batch_max=512, on_batch=lambda n, _s: sizes.append(n))
    writer.start()
    try:
        results = await asyncio.gather(*(writer.submit_send(r) for r in rows))
    finally:
        await writer.close()
    assert writer.stats.rows == 500
    assert writer.batches < 500 / 5, f"{writer.batches} transactions for 500 rows"
    assert sum(sizes) == 500
    assert len(sizes) == writer.batches
    assert writer.last_batch_size == sizes[-1]
    assert all(duplicate is False for _, duplicate in results)
    seqs = [seq for seq, _ in results]
    assert len(set(seqs)) == 500
    async with engine.connect() as conn:
        stored = (await conn.execute(select(envelopes.c.seq, envelopes.c.message_id))).all()
    assert sorted(seqs) == sorted(seq for seq, _ in stored)
    assert {m for _, m in stored} == {r.message_id for r in rows}


async def test_batch_max_bounds_each_transaction(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    async with GroupCommitWriter(engine, batch_max=7) as writer:
        await asyncio.gather(*(writer.submit_send(row(bob, alice)) for _ in range(50)))
    assert writer.stats.max_batch_size == 7
    assert writer.batches >= 8
    assert await envelope_count(engine) == 50


async def test_concurrent_resends_are_stored_once(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    rows = [row(bob, alice) for _ in range(20)]
    async with GroupCommitWriter(engine, batch_max=8) as writer:
        results = await asyncio.gather(*(writer.submit_send(r) for r in rows * 3))
    assert await envelope_count(engine) == 20
    first, second, third = results[:20], results[20:40], results[40:]
    assert [s for s, _ in first] == [s for s, _ in second] == [s for s, _ in third]
    assert all(dup for _, dup in second + third)
    assert not any(dup for _, dup in first)


async def test_a_failed_batch_fails_every_future_and_stores_nothing(engine: AsyncEngine) -> None:
    await install_reject_trigger(engine)
    alice, bob = cell(), cell()
    good = [row(bob, alice) for _ in range(5)]
    bad = row(bob, alice, precedence=REJECT)
    async with GroupCommitWriter(engine) as writer:
        ack = writer.enqueue_ack(bob, 1)
        futures = [writer.enqueue_send(r) for r in [*good[:2], bad, *good[2:]]]
        results = await asyncio.gather(ack, *futures, return_exceptions=True)
        failures = [r for r in results if isinstance(r, WriteFailed)]
        assert len(failures) == len(results), results
        assert all(isinstance(r.__cause__, DBAPIError) for r in failures)
        assert "rejected by test" in str(results[1])
        assert writer.stats.failed_batches == 1
        assert writer.batches == 0
        assert await envelope_count(engine) == 0
        # The writer lives on: the good rows, sent again, are stored.
        again = await asyncio.gather(*(writer.submit_send(r) for r in good))
    assert [dup for _, dup in again] == [False] * 5
    assert await envelope_count(engine) == 5


async def test_nothing_is_acknowledged_before_the_commit(engine: AsyncEngine) -> None:
    """At the moment the batch's COMMIT is issued no future of the batch may be resolved; and
    when the COMMIT itself fails, every future fails and no row is stored."""
    alice, bob = cell(), cell()
    futures: list[asyncio.Future[Any]] = []
    seen_at_commit: list[list[bool]] = []
    fail_commit = True

    def on_commit(_conn: Any) -> None:
        seen_at_commit.append([f.done() for f in futures])
        if fail_commit:
            raise RuntimeError("the disk went away")

    event.listen(engine.sync_engine, "commit", on_commit)
    try:
        async with GroupCommitWriter(engine) as writer:
            futures.extend(writer.enqueue_send(row(bob, alice)) for _ in range(10))
            results = await asyncio.gather(*futures, return_exceptions=True)
            failures = [r for r in results if isinstance(r, WriteFailed)]
            assert len(failures) == 10
            assert all(isinstance(r.__cause__, RuntimeError) for r in failures)
            assert seen_at_commit == [[False] * 10]
            assert await envelope_count(engine) == 0

            fail_commit = False
            futures.clear()
            seen_at_commit.clear()
            futures.extend(writer.enqueue_send(row(bob, alice)) for _ in range(10))
            results = await asyncio.gather(*futures)
            assert seen_at_commit[0] == [False] * 10
    finally:
        event.remove(engine.sync_engine, "commit", on_commit)
    assert await envelope_count(engine) == 10


async def test_an_acknowledged_send_is_visible_to_another_connection(
    engine: AsyncEngine, db_url: str
) -> None:
    alice, bob = cell(), cell()
    other = create_engine(db_url)
    try:
        async with GroupCommitWriter(engine) as writer:
            for _ in range(3):
                seq, _dup = await writer.submit_send(row(bob, alice))
                async with other.connect() as conn:
                    found = await conn.execute(
                        select(envelopes.c.seq).where(envelopes.c.seq == seq)
                    )
                    assert found.scalar_one_or_none() == seq
    finally:
        await other.dispose()


async def test_acks_delete_only_the_acknowledging_cells_envelopes(engine: AsyncEngine) -> None:
    alice, bob, carol = cell(), cell(), cell()
    async with GroupCommitWriter(engine) as writer:
        (to_bob, _), (to_carol, _) = await asyncio.gather(
            writer.submit_send(row(bob, alice)), writer.submit_send(row(carol, alice))
        )
        assert await writer.submit_ack(bob, to_carol) is False
        assert await writer.submit_ack(bob, to_bob) is True
        assert await writer.submit_ack(bob, to_bob) is False  # a repeated ack is harmless
    assert await envelope_count(engine, recipient=carol) == 1
    assert await envelope_count(engine, recipient=bob) == 0


async def test_close_commits_what_was_queued_then_refuses(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    writer = GroupCommitWriter(engine, batch_max=16)
    writer.start()
    futures = [writer.enqueue_send(row(bob, alice)) for _ in range(40)]
    await writer.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert await envelope_count(engine) == 40
    with pytest.raises(WriterClosed):
        await writer.submit_send(row(bob, alice))
    await writer.close()  # idempotent


async def test_close_without_start_fails_the_queue(engine: AsyncEngine) -> None:
    writer = GroupCommitWriter(engine)
    future = writer.enqueue_send(row(cell(), cell()))
    await writer.close()
    with pytest.raises(WriterClosed):
        await future
    assert await envelope_count(engine) == 0


async def test_backpressure_beyond_max_pending(engine: AsyncEngine) -> None:
    writer = GroupCommitWriter(engine, batch_max=4, max_pending=2)
    alice, bob = cell(), cell()
    queued = [writer.enqueue_send(row(bob, alice)) for _ in range(3)]
    with pytest.raises(WriterOverloaded):
        await queued[2]
    assert writer.pending == 2
    writer.start()
    await asyncio.gather(*queued[:2])
    await writer.close()
    assert await envelope_count(engine) == 2


async def test_a_cancelled_caller_is_skipped(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    writer = GroupCommitWriter(engine)
    dropped = writer.enqueue_send(row(bob, alice))
    kept = writer.enqueue_send(row(bob, alice))
    dropped.cancel()
    writer.start()
    await kept
    await writer.close()
    assert await envelope_count(engine) == 1


async def test_two_writers_cannot_overfill_a_queue_together(
    engine: AsyncEngine, db_url: str
) -> None:
    """Two relay nodes (two writers, two engines) racing for the last slots of one queue: the
    quota holds exactly (PostgreSQL advisory lock; SQLite's single writer)."""
    alice, bob = cell(), cell()
    other = create_engine(db_url)
    quota = (10, 10**9)
    try:
        async with GroupCommitWriter(engine, 4) as one, GroupCommitWriter(other, 4) as two:
            results = await asyncio.gather(
                *(w.submit_send(row(bob, alice), quota) for _ in range(15) for w in (one, two)),
                return_exceptions=True,
            )
    finally:
        await other.dispose()
    assert sum(isinstance(r, tuple) for r in results) == 10
    assert sum(isinstance(r, QueueFull) for r in results) == 20
    assert await envelope_count(engine, recipient=bob) == 10
    async with engine.connect() as conn:
        assert await store.queue_usage(conn, bob) == (10, 640)
        total = (await conn.execute(select(func.count()).select_from(envelopes))).scalar_one()
    assert total == 10


async def test_flush_waits_for_fire_and_forget_acks(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    async with GroupCommitWriter(engine) as writer:
        seqs = [
            s
            for s, _ in await asyncio.gather(
                *(writer.submit_send(row(bob, alice)) for _ in range(5))
            )
        ]
        for seq in seqs:
            writer.enqueue_ack(bob, seq)  # not awaited, as a reader loop does
        await writer.flush()
        assert await envelope_count(engine) == 0
        batches = writer.batches
        await writer.flush()  # nothing queued: no transaction for a bare barrier
        assert writer.batches == batches


# -- one thread hop per batch, and the quota counters kept by the SQLite writer ------------------


def sqlite_only(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL batches run in the event loop (no writer thread)")


async def test_a_batch_costs_one_thread_hop(
    engine: AsyncEngine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole batch (acks, quota check, tombstone lookup, inserts, commit) runs as one call in
    the writer's thread: the loop hears back from it exactly once per batch, however many
    statements the batch took (aiosqlite costs one such hop per statement, fetch and close)."""
    sqlite_only(db_url)
    alice, bob = cell(), cell()
    quota = (1000, 10**9)
    loop = asyncio.get_running_loop()
    hops = 0
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, context: Any = None) -> Any:
        nonlocal hops
        hops += 1
        return call_soon_threadsafe(callback, *args, context=context)

    async with GroupCommitWriter(engine, batch_max=64) as writer:
        [(first, _)] = await asyncio.gather(writer.submit_send(row(bob, alice), quota))
        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        batches = writer.batches
        results = await asyncio.gather(
            writer.submit_ack(bob, first),
            *(writer.submit_send(row(bob, alice), quota) for _ in range(300)),
        )
        batches = writer.batches - batches
        monkeypatch.undo()
    assert results[0] is True
    assert batches >= 300 // 64
    assert hops == batches


async def test_quota_counters_follow_sends_acks_and_bytes(engine: AsyncEngine) -> None:
    alice, bob, carol = cell(), cell(), cell()
    quota = (3, 200)
    async with GroupCommitWriter(engine) as writer:
        stored = [await writer.submit_send(row(bob, alice), quota) for _ in range(3)]
        with pytest.raises(QueueFull) as full:
            await writer.submit_send(row(bob, alice), quota)
        assert (full.value.messages, full.value.size) == (3, 192)
        assert (await writer.submit_send(row(carol, alice), quota))[1] is False  # own queue
        # An ack frees one slot; a repeated or foreign ack frees nothing.
        assert await writer.submit_ack(bob, stored[0][0]) is True
        assert await writer.submit_ack(bob, stored[0][0]) is False
        assert await writer.submit_ack(carol, stored[1][0]) is False
        await writer.submit_send(row(bob, alice), quota)
        with pytest.raises(QueueFull):
            await writer.submit_send(row(bob, alice), quota)
        # Bytes count too: 2 x 64 queued after one more ack, so 72 bytes fit but 73 do not.
        assert await writer.submit_ack(bob, stored[1][0]) is True
        with pytest.raises(QueueFull) as full:
            await writer.submit_send(row(bob, alice, data=b"x" * 73), quota)
        assert (full.value.messages, full.value.size) == (2, 128)
        await writer.submit_send(row(bob, alice, data=b"x" * 72), quota)
        # Rows stored without a quota still count for a later send that has one.
        await writer.submit_ack(bob, stored[2][0])
        await writer.submit_send(row(bob, alice))
        with pytest.raises(QueueFull):
            await writer.submit_send(row(bob, alice), quota)
    async with engine.connect() as conn:
        assert await store.queue_usage(conn, bob) == (3, 200)


async def test_quota_counters_see_purges_made_elsewhere(engine: AsyncEngine) -> None:
    """Expiry and revocation purges and a direct DELETE run on other connections than the
    writer's: the writer sees that the database changed (SQLite ``data_version``) and counts
    the queues again, so room freed elsewhere is usable at once and nothing is over-filled."""
    alice, bob = cell(), cell()
    now = int(time.time())
    quota = (2, 10**6)
    async with GroupCommitWriter(engine) as writer:
        await writer.submit_send(row(bob, alice, expires_at=now - 10), quota)
        await writer.submit_send(row(bob, alice, expires_at=now - 5), quota)
        with pytest.raises(QueueFull):
            await writer.submit_send(row(bob, alice), quota)
        assert len(await store.purge_expired(engine, now)) == 2
        await writer.submit_send(row(bob, alice), quota)
        await writer.submit_send(row(bob, alice), quota)
        with pytest.raises(QueueFull):
            await writer.submit_send(row(bob, alice), quota)

        async with write_transaction(engine) as conn:  # a revocation
            assert await store.purge_cell_queue(conn, bob) == 2
        await writer.submit_send(row(bob, alice), quota)

        async with engine.begin() as conn:  # anything else: e.g. an operator's DELETE
            await conn.execute(delete(envelopes).where(envelopes.c.recipient == bob))
        await writer.submit_send(row(bob, alice), quota)
        await writer.submit_send(row(bob, alice), quota)
        with pytest.raises(QueueFull):
            await writer.submit_send(row(bob, alice), quota)

        # Rows added behind its back count too (another writer, another relay process).
        await writer.submit_send(row(alice, bob), quota)
        async with write_transaction(engine) as conn:
            await store.insert_envelopes(conn, [row(alice, bob)])
        with pytest.raises(QueueFull):
            await writer.submit_send(row(alice, bob), quota)
    assert await envelope_count(engine, recipient=bob) == 2
    assert await envelope_count(engine, recipient=alice) == 2


async def test_quota_counters_survive_a_failed_batch(engine: AsyncEngine) -> None:
    await install_reject_trigger(engine)
    alice, bob = cell(), cell()
    quota = (3, 10**6)
    async with GroupCommitWriter(engine) as writer:
        await writer.submit_send(row(bob, alice), quota)
        failed = await asyncio.gather(
            writer.enqueue_send(row(bob, alice), quota),
            writer.enqueue_send(row(bob, alice, precedence=REJECT), quota),
            return_exceptions=True,
        )
        assert all(isinstance(r, WriteFailed) for r in failed)
        # Nothing of the failed batch was counted: two more fit, then the queue is full.
        await writer.submit_send(row(bob, alice), quota)
        await writer.submit_send(row(bob, alice), quota)
        with pytest.raises(QueueFull):
            await writer.submit_send(row(bob, alice), quota)
    assert await envelope_count(engine, recipient=bob) == 3


async def test_acked_messages_stay_duplicates_on_the_writer_path(engine: AsyncEngine) -> None:
    """M-REL-4 through the writer: a resend of a queued or an acknowledged message gets the
    original seq back and is stored once, even in the batch that acknowledges it."""
    alice, bob = cell(), cell()
    first, second = row(bob, alice), row(bob, alice)
    async with GroupCommitWriter(engine) as writer:
        [(seq1, _), (seq2, _)] = await asyncio.gather(
            writer.submit_send(first), writer.submit_send(second)
        )
        assert await writer.submit_send(first) == (seq1, True)
        acked, resent = await asyncio.gather(
            writer.submit_ack(bob, seq1), writer.submit_send(first)
        )
        assert acked is True
        assert resent == (seq1, True)
        assert await writer.submit_send(first) == (seq1, True)
        many = await asyncio.gather(*(writer.submit_send(r) for r in [first, second] * 300))
    assert set(many) == {(seq1, True), (seq2, True)}
    assert await envelope_count(engine, recipient=bob) == 1


async def test_close_stops_the_writer_thread(engine: AsyncEngine, db_url: str) -> None:
    sqlite_only(db_url)

    def writer_threads() -> int:
        return sum(t.name == "liaison-writer" and t.is_alive() for t in threading.enumerate())

    before = writer_threads()
    writer = GroupCommitWriter(engine)
    writer.start()
    await writer.submit_send(row(cell(), cell()))
    assert writer_threads() == before + 1
    await writer.close()
    assert writer_threads() == before


async def test_an_in_memory_sqlite_database_is_written_in_the_event_loop() -> None:
    """``:memory:`` cannot be opened by a second connection: the batch runs on the async
    engine's connection instead (``run_sync``), quotas counted in the database."""
    engine = create_engine("sqlite+aiosqlite://")
    try:
        await migrate.upgrade_async(engine)
        alice, bob = cell(), cell()
        async with GroupCommitWriter(engine) as writer:
            stored, full = await asyncio.gather(
                writer.submit_send(row(bob, alice), (1, 1000)),
                writer.submit_send(row(bob, alice), (1, 1000)),
                return_exceptions=True,
            )
            assert isinstance(full, QueueFull)
            assert isinstance(stored, tuple)
            seq, duplicate = stored
            assert duplicate is False
            assert await writer.submit_ack(bob, seq) is True
        assert await envelope_count(engine) == 0
    finally:
        await engine.dispose()


async def test_backpressure_signals_and_releases(tmp_path: pathlib.Path) -> None:
    """Above half of max_pending the writer reports ``saturated``; ``wait_for_room`` returns
    once batches drain the queue below that mark (the relay pauses link reads meanwhile)."""
    from liaison.server.db import create_engine
    from liaison.server.migrate import upgrade_async
    from liaison.server.writer import GroupCommitWriter

    url = f"sqlite+aiosqlite:///{tmp_path / 'bp.db'}"
    await upgrade_async(url)
    engine = create_engine(url)
    writer = GroupCommitWriter(engine, batch_max=4, max_pending=8)
    try:
        futures = [writer.enqueue_ack(bytes(16), seq) for seq in range(6)]
        assert writer.saturated
        writer.start()
        await asyncio.wait_for(writer.wait_for_room(), 10)
        assert writer.pending < 4  # below the high-water mark (half of max_pending)
        await asyncio.gather(*futures)
    finally:
        await writer.close()
        await engine.dispose()
