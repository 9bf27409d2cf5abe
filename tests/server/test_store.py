"""The relay's store (``liaison.server.store``) on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.server import store
from liaison.server.dialect import write_transaction
from liaison.server.schema import envelopes
from liaison.server.store import ExpiryNotice, SignedPrekeys
from liaison.server.writer import GroupCommitWriter, QueueFull
from tests.server.storekit import FAR_FUTURE, add_cell, cell, envelope_count, row

FLASH, IMMEDIATE, PRIORITY, ROUTINE = 0, 1, 2, 3


async def insert(engine: AsyncEngine, rows: list[store.EnvelopeRow]) -> list[tuple[int, bool]]:
    async with write_transaction(engine) as conn:
        return await store.insert_envelopes(conn, rows)


# -- deduplication ------------------------------------------------------------------------------


async def test_a_resend_is_stored_once_and_reports_the_original_seq(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    first = row(bob, alice)
    [(seq, duplicate)] = await insert(engine, [first])
    assert duplicate is False
    assert await insert(engine, [first]) == [(seq, True)]
    # The duplicate is decided by (sender, message_id), whatever else the resend carries.
    again = row(bob, alice, first.message_id, precedence=FLASH, data=b"other")
    assert await insert(engine, [again]) == [(seq, True)]
    assert await envelope_count(engine) == 1


async def test_duplicates_within_one_batch_are_stored_once(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    a, b = row(bob, alice), row(bob, alice)
    results = await insert(engine, [a, b, a, a])
    assert results[0][1] is False
    assert results[1][1] is False
    assert results[2] == (results[0][0], True)
    assert results[3] == (results[0][0], True)
    assert results[0][0] != results[1][0]
    # A batch mixing an already stored key, a new one, and the new one again.
    c = row(bob, alice)
    mixed = await insert(engine, [b, c, c])
    assert mixed[0] == (results[1][0], True)
    assert mixed[1][1] is False
    assert mixed[2] == (mixed[1][0], True)
    assert await envelope_count(engine) == 3


async def test_the_same_message_id_from_two_senders_is_two_messages(engine: AsyncEngine) -> None:
    alice, bob, carol = cell(), cell(), cell()
    message_id = os.urandom(16)
    results = await insert(engine, [row(carol, alice, message_id), row(carol, bob, message_id)])
    assert [dup for _, dup in results] == [False, False]
    assert await envelope_count(engine, recipient=carol) == 2


async def test_seq_is_never_reused_after_a_queue_drains(engine: AsyncEngine) -> None:
    """A late or repeated ack of an old seq must not hit a newer message."""
    alice, bob = cell(), cell()
    [(old, _)] = await insert(engine, [row(bob, alice)])
    assert await store.delete_acked(engine, bob, [old]) == 1
    assert await envelope_count(engine) == 0
    [(new, _)] = await insert(engine, [row(bob, alice)])
    assert new > old
    assert await store.delete_acked(engine, bob, [old]) == 0
    assert await envelope_count(engine) == 1


# -- delivery order, acks ------------------------------------------------------------------------


async def test_pending_is_precedence_first_then_fifo(engine: AsyncEngine) -> None:
    alice, carol, bob = cell(), cell(), cell()
    plan = [
        (alice, ROUTINE),
        (carol, ROUTINE),
        (alice, FLASH),
        (alice, PRIORITY),
        (carol, FLASH),
        (alice, ROUTINE),
        (carol, IMMEDIATE),
    ]
    rows = [row(bob, sender, precedence=p) for sender, p in plan]
    seqs = [seq for seq, _ in await insert(engine, rows)]
    await insert(engine, [row(cell(), alice, precedence=FLASH)])  # someone else's queue
    expected = sorted(zip(rows, seqs, strict=True), key=lambda rs: (rs[0].precedence, rs[1]))
    pending = await store.pending_for(engine, bob, 100)
    assert [(e.precedence, e.seq) for e in pending] == [(r.precedence, s) for r, s in expected]
    assert pending[0] == store.StoredEnvelope(
        seq=expected[0][1],
        recipient=bob,
        sender=expected[0][0].sender,
        message_id=expected[0][0].message_id,
        precedence=FLASH,
        expires_at=FAR_FUTURE,
        received_at_ms=expected[0][0].received_at_ms,
        data=expected[0][0].data,
    )
    # FIFO per channel within a precedence: alice's two ROUTINE messages keep their order.
    alice_routine = [e.seq for e in pending if e.sender == alice and e.precedence == ROUTINE]
    assert alice_routine == [seqs[0], seqs[5]]
    # Paging: limit, then exclude what was sent, or only newer than a seq.
    first_page = await store.pending_for(engine, bob, 3)
    assert first_page == pending[:3]
    rest = await store.pending_for(engine, bob, 100, exclude={e.seq for e in first_page})
    assert rest == pending[3:]
    newer = await store.pending_for(engine, bob, 100, after_seq=seqs[4])
    assert {e.seq for e in newer} == set(seqs[5:])


async def test_pending_excludes_a_large_set(engine: AsyncEngine) -> None:
    """``exclude`` is bound as one parameter, so it may exceed the drivers' parameter limits."""
    alice, bob = cell(), cell()
    seqs = [seq for seq, _ in await insert(engine, [row(bob, alice) for _ in range(5)])]
    exclude = set(range(-40_000, 0)) | set(seqs[:4])
    assert [e.seq for e in await store.pending_for(engine, bob, 10, exclude=exclude)] == seqs[4:]


async def test_pending_never_returns_expired_envelopes(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    now = 1_700_000_000
    rows = [row(bob, alice, expires_at=t) for t in (now - 1, now, now + 1)]
    seqs = [seq for seq, _ in await insert(engine, rows)]
    pending = await store.pending_for(engine, bob, 10, now_s=now)
    assert [e.seq for e in pending] == [seqs[2]]
    assert await store.pending_for(engine, bob, 10) == []  # the wall clock is past all three


async def test_an_ack_deletes_only_the_acknowledging_cells_envelopes(engine: AsyncEngine) -> None:
    alice, bob, carol = cell(), cell(), cell()
    to_bob = [seq for seq, _ in await insert(engine, [row(bob, alice) for _ in range(3)])]
    to_carol = [seq for seq, _ in await insert(engine, [row(carol, alice) for _ in range(2)])]
    # bob "acks" everything, including carol's seqs: only his own go.
    assert await store.delete_acked(engine, bob, to_bob + to_carol) == 3
    assert await envelope_count(engine, recipient=bob) == 0
    assert await envelope_count(engine, recipient=carol) == 2
    async with write_transaction(engine) as conn:
        gone = await store.delete_acked_pairs(
            conn, [(bob, to_carol[0]), (carol, to_carol[1]), (carol, 10**9)]
        )
    assert gone == {(carol, to_carol[1])}
    assert await envelope_count(engine, recipient=carol) == 1


async def test_queue_usage_counts_messages_and_bytes(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    await insert(engine, [row(bob, alice, data=b"x" * n) for n in (10, 20, 30)])
    async with engine.connect() as conn:
        assert await store.queue_usage(conn, bob) == (3, 60)
        assert await store.queue_usage(conn, alice) == (0, 0)
        assert await store.queue_usages(conn, [alice, bob]) == {bob: (3, 60)}


# -- expiry, revocation ---------------------------------------------------------------------------


async def test_purge_expired_leaves_notices_for_the_senders(engine: AsyncEngine) -> None:
    alice, carol, bob = cell(), cell(), cell()
    now = 1_700_000_000
    old_a = row(bob, alice, expires_at=now - 10)
    old_c = row(bob, carol, expires_at=now)
    fresh = row(bob, alice, expires_at=now + 10)
    old_a2 = row(carol, alice, expires_at=now - 5)
    await insert(engine, [old_a, old_c, fresh, old_a2])

    purged = await store.purge_expired(engine, now)
    assert sorted(purged) == sorted(
        [
            ExpiryNotice(alice, old_a.message_id, bob),
            ExpiryNotice(carol, old_c.message_id, bob),
            ExpiryNotice(alice, old_a2.message_id, carol),
        ]
    )
    assert [e.message_id for e in await store.pending_for(engine, bob, 10, now_s=now)] == [
        fresh.message_id
    ]
    assert await envelope_count(engine) == 1
    assert await store.purge_expired(engine, now) == []

    assert await store.take_expiry_notices(engine, alice) == [
        ExpiryNotice(alice, old_a.message_id, bob),
        ExpiryNotice(alice, old_a2.message_id, carol),
    ]
    assert await store.take_expiry_notices(engine, alice) == []
    # carol was told on her live link: the relay forgets her notice instead.
    assert await store.forget_expiry_notices(engine, [(carol, old_c.message_id)]) == 1
    assert await store.take_expiry_notices(engine, carol) == []


async def test_purge_expired_works_in_bounded_chunks(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    await insert(engine, [row(bob, alice, expires_at=100 + i) for i in range(5)])
    assert len(await store.purge_expired(engine, 1000, limit=3)) == 3
    assert len(await store.purge_expired(engine, 1000, limit=3)) == 2
    assert len(await store.take_expiry_notices(engine, alice, limit=4)) == 4
    assert len(await store.take_expiry_notices(engine, alice, limit=4)) == 1


async def test_purge_cell_queue_on_revocation(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    await insert(engine, [row(bob, alice), row(bob, alice), row(alice, bob, expires_at=1)])
    await store.purge_expired(engine, 2)  # leaves a notice for bob
    async with write_transaction(engine) as conn:
        assert await store.purge_cell_queue(conn, bob) == 2
    assert await envelope_count(engine) == 0
    assert await store.take_expiry_notices(engine, bob) == []


# -- prekeys -------------------------------------------------------------------------------------


def signed(cell_id: bytes, spk_id: int = 1) -> SignedPrekeys:
    return SignedPrekeys(
        cell_id=cell_id,
        spk_id=spk_id,
        spk_public=os.urandom(32),
        spk_signature=os.urandom(64),
        kem_id=spk_id + 100,
        kem_public=os.urandom(1184),
        kem_signature=os.urandom(64),
        updated_at_ms=1_700_000_000_000 + spk_id,
    )


async def test_take_bundle_consumes_one_time_prekeys_one_by_one(engine: AsyncEngine) -> None:
    bob = await add_cell(engine)
    spk = signed(bob)
    await store.store_signed_prekeys(engine, spk)
    otks = [(7, os.urandom(32)), (3, os.urandom(32)), (5, os.urandom(32))]
    assert await store.add_one_time_prekeys(engine, bob, otks, max_total=100) == 3
    by_id = dict(otks)
    for expected_id, left in ((3, 2), (5, 1), (7, 0)):
        bundle = await store.take_bundle(engine, bob)
        assert bundle.signed == spk
        assert bundle.one_time == (expected_id, by_id[expected_id])
        assert bundle.remaining == left
    empty = await store.take_bundle(engine, bob)
    assert empty == store.TakenBundle(spk, None, 0)


async def test_take_bundle_without_signed_prekeys_consumes_nothing(engine: AsyncEngine) -> None:
    bob = await add_cell(engine)
    await store.add_one_time_prekeys(engine, bob, [(1, os.urandom(32))], max_total=10)
    assert await store.take_bundle(engine, bob) == store.TakenBundle(None, None, 1)
    assert await store.one_time_prekey_count(engine, bob) == 1


async def test_signed_prekeys_are_replaced(engine: AsyncEngine) -> None:
    bob = await add_cell(engine)
    await store.store_signed_prekeys(engine, signed(bob, 1))
    newer = signed(bob, 2)
    await store.store_signed_prekeys(engine, newer)
    assert await store.get_signed_prekeys(engine, bob) == newer
    async with write_transaction(engine) as conn:
        await store.delete_prekeys(conn, bob)
    assert await store.get_signed_prekeys(engine, bob) is None


async def test_one_time_prekeys_respect_the_cap_and_ignore_known_ids(engine: AsyncEngine) -> None:
    bob = await add_cell(engine)
    await store.store_signed_prekeys(engine, signed(bob))
    keys = {i: os.urandom(32) for i in range(10)}
    assert await store.add_one_time_prekeys(engine, bob, [(1, keys[1]), (2, keys[2])], 4) == 2
    # 1 is known, 3 repeats: new are 3, 4, 5 — only two fit under the cap of 4.
    batch = [(1, keys[1]), (3, keys[3]), (3, keys[3]), (4, keys[4]), (5, keys[5])]
    assert await store.add_one_time_prekeys(engine, bob, batch, 4) == 2
    assert await store.one_time_prekey_count(engine, bob) == 4
    assert await store.add_one_time_prekeys(engine, bob, [(9, keys[9])], 4) == 0
    taken = [(await store.take_bundle(engine, bob)).one_time for _ in range(5)]
    assert taken == [(1, keys[1]), (2, keys[2]), (3, keys[3]), (4, keys[4]), None]


async def test_concurrent_bundle_fetches_get_distinct_prekeys(engine: AsyncEngine) -> None:
    bob = await add_cell(engine)
    await store.store_signed_prekeys(engine, signed(bob))
    await store.add_one_time_prekeys(engine, bob, [(i, os.urandom(32)) for i in range(6)], 100)
    bundles = await asyncio.gather(*(store.take_bundle(engine, bob) for _ in range(10)))
    ids = [b.one_time[0] for b in bundles if b.one_time is not None]
    assert sorted(ids) == list(range(6))
    assert sum(b.one_time is None for b in bundles) == 4
    assert await store.one_time_prekey_count(engine, bob) == 0


# -- quotas (enforced by the writer, counted by the store) ----------------------------------------


async def test_quota_refuses_exactly_the_overflowing_rows(engine: AsyncEngine) -> None:
    alice, bob, carol = cell(), cell(), cell()
    stored = row(bob, alice, data=b"x" * 100)
    [_, (stored_seq, _)] = await insert(engine, [row(bob, alice, data=b"x" * 100), stored])
    # bob now holds 2 messages, 200 bytes
    quota = (4, 10_000)
    async with GroupCommitWriter(engine, batch_max=64) as writer:
        futures = [writer.enqueue_send(row(bob, alice), quota) for _ in range(4)]
        futures.append(writer.enqueue_send(row(carol, alice), quota))  # another queue
        futures.append(writer.enqueue_send(stored, quota))  # a resend, even though bob is full
        futures.append(writer.enqueue_send(row(bob, alice)))  # no quota given: not checked
        results = await asyncio.gather(*futures, return_exceptions=True)
    assert writer.batches == 1  # everything was decided in one transaction
    assert [type(r).__name__ for r in results] == [
        "tuple",
        "tuple",
        "QueueFull",
        "QueueFull",
        "tuple",
        "tuple",
        "tuple",
    ]
    full = results[2]
    assert isinstance(full, QueueFull)
    assert (full.recipient, full.messages, full.size) == (bob, 4, 328)
    assert results[5] == (stored_seq, True)
    assert writer.stats.quota_rejections == 2
    assert await envelope_count(engine, recipient=bob) == 5


async def test_byte_quota_and_acks_that_free_room(engine: AsyncEngine) -> None:
    alice, bob = cell(), cell()
    [(old_seq, _)] = await insert(engine, [row(bob, alice, data=b"x" * 600)])
    quota = (100, 1000)
    async with GroupCommitWriter(engine) as writer:
        with_room = writer.enqueue_send(row(bob, alice, data=b"y" * 400), quota)
        too_big = writer.enqueue_send(row(bob, alice, data=b"z" * 1), quota)
        assert (await with_room)[1] is False
        with pytest.raises(QueueFull):
            await too_big
        # An ack and a send in the same batch: the ack is applied first and frees the room.
        ack = writer.enqueue_ack(bob, old_seq)
        send = writer.enqueue_send(row(bob, alice, data=b"w" * 500), quota)
        assert await ack is True
        assert (await send)[1] is False
    async with engine.connect() as conn:
        sizes = (await conn.execute(select(envelopes.c.size).order_by(envelopes.c.seq))).all()
    assert [s for (s,) in sizes] == [400, 500]
