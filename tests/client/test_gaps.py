"""Channel sequence numbers and gap detection in the SDK (SPEC.md §9.2–§9.3).

The end-to-end tests run the real relay in-process; drops and delays are made by the malicious
relay of the reliability suite (``tests.reliability.malicious``), which deletes or holds
DELIVER frames the real relay produced. Everything else is real: crypto, SQLite, receipts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from liaison.client import Cell, StatusTimeout
from liaison.client import channels as ch
from liaison.client.state import STATE_FILE, Store
from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.envelope import ContentType, Envelope, Precedence
from liaison.protocol.errors import LiaisonError
from liaison.protocol.keys import IdentityKeyPair
from liaison.protocol.session import initiate
from tests.cells import take
from tests.reliability.malicious import MaliciousRelay, Tap

from .faults import cell_keys, expect, impersonate
from .relaykit import memory_relay

GRACE = 0.4


@dataclass
class Pair:
    evil: MaliciousRelay
    paris: Path
    berlin: Path
    paris_id: bytes
    berlin_id: bytes

    def open(self, home: Path, **options: object) -> Cell:
        options.setdefault("gap_grace", GRACE)
        return self.evil.open(home, **options)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris", one_time_prekeys=10)
        berlin = await relay.new_cell("berlin", pair_with=("paris",), one_time_prekeys=10)
        evil = MaliciousRelay(relay)
        try:
            yield Pair(evil, paris, berlin, cell_keys(paris)[1], cell_keys(berlin)[1])
        finally:
            await evil.aclose()


async def eventually(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def message_id_of(frame: f.DeliverFrame) -> str:
    return Envelope.decode(frame.envelope).routing.message_id.hex()


def gap_reports(home: Path) -> int:
    """How many gap reports (RECEIPT kind 3) the cell of ``home`` has sealed."""
    with contextlib.closing(sqlite3.connect(home / STATE_FILE)) as db:
        row = db.execute(
            "SELECT count(*) FROM channel_sent WHERE substr(receipt, 1, 1) = x'03'"
        ).fetchone()
    return int(row[0])


# -- the counter ----------------------------------------------------------------------------------


async def test_channel_numbers_continue_across_sessions(pair: Pair) -> None:
    """[M-ENV-8] The body's seq counts envelopes per channel, not per session: after paris
    loses its session and starts a new one, berlin sees 3, 4 (not 1 again), and no gap."""
    async with pair.open(pair.paris) as paris, pair.open(pair.berlin) as berlin:
        await paris.send("berlin", "one")
        await paris.send("berlin", "two")
        assert [m.seq for m in await take(berlin, 2)] == [1, 2]
    with contextlib.closing(sqlite3.connect(pair.paris / STATE_FILE)) as db, db:
        db.execute("DELETE FROM sessions")  # paris must set up a new session
    async with pair.open(pair.paris) as paris, pair.open(pair.berlin) as berlin:
        await paris.send("berlin", "three")
        await paris.send("berlin", "four")
        got = await take(berlin, 2)
        assert [(m.body, m.seq) for m in got] == [("three", 3), ("four", 4)]
        assert berlin.gaps() == []
        # berlin's own channel to paris counts its receipts: a reply continues after them
        reply = await berlin.send("paris", "reply")
        [back] = await take(paris, 1)
        assert back.id == reply
        assert (back.seq or 0) > 1


async def test_new_identity_starts_a_new_channel(pair: Pair) -> None:
    """[M-ENV-8] Accepting a peer's new identity key starts a new channel both ways: the
    envelope of the new key numbered 1 opens no gap, and what paris seals next under the new
    key is numbered from 1 again."""
    async with pair.open(pair.paris) as paris, pair.open(pair.berlin) as berlin:
        for i in range(3):
            await berlin.send("paris", f"old {i}")
            await paris.send("berlin", f"old {i}")
        await take(paris, 3)
        await take(berlin, 3)
        await asyncio.sleep(0.3)  # receipts settle
    impostor = IdentityKeyPair.generate()
    link = await impersonate(pair.evil.transport, pair.berlin)
    try:
        await link.send(f.FetchBundleFrame(9, pair.paris_id))
        answer = await expect(link, f.BundleFrame)
        assert isinstance(answer, f.BundleFrame)
        session = initiate(impostor, pair.berlin_id, PrekeyBundle.decode(answer.bundle))
        envelope = session.seal(ContentType.TEXT, b"new key", message_id=os.urandom(16),
                                precedence=Precedence.FLASH, expires_at=int(time.time()) + 60,
                                seq=1)  # fmt: skip
        await link.send(f.SendFrame(envelope))
        await expect(link, f.AcceptedFrame)
    finally:
        await link.close()
    async with pair.open(pair.paris) as paris:
        [held] = await take(paris, 1)
        assert held.error == "key_changed"
        await paris.verify("berlin", accept_new_key=True)
        [opened] = await take(paris, 1)
        assert (opened.body, opened.seq) == ("new key", 1)
        assert paris.gaps() == []
        await paris.send("berlin", "to the new key")
        await asyncio.sleep(0.3)
    link = await impersonate(pair.evil.transport, pair.berlin)
    seqs: list[int] = []
    try:
        with contextlib.suppress(TimeoutError):
            while True:
                frame = await expect(link, f.DeliverFrame, timeout=1.0)
                assert isinstance(frame, f.DeliverFrame)
                with contextlib.suppress(LiaisonError):  # old-session receipts do not open
                    seqs.append(session.open(Envelope.decode(frame.envelope)).seq)
    finally:
        await link.close()
    assert sorted(seqs) == list(range(1, len(seqs) + 1))  # a receipt and the message: 1, 2
    assert len(seqs) == 2


# -- the bookkeeping ------------------------------------------------------------------------------


def test_gap_bookkeeping(tmp_path: Path) -> None:
    """[M-ENV-10] Opened numbers open and close gaps; a late number splits its gap; a number
    seen before, or 0, changes nothing; gaps become due after the grace period and are
    reported once; the report payload round-trips and malformed ones are refused."""
    store = Store.create(tmp_path / "cell", None)
    peer = os.urandom(16)
    try:
        with store.transaction():
            assert not ch.opened(store, peer, 1, 100.0)
            assert not ch.opened(store, peer, 2, 100.0)
            assert ch.opened(store, peer, 7, 101.0)  # 3..6 skipped
            assert ch.opened(store, peer, 5, 102.0)  # late: splits the gap
            assert not ch.opened(store, peer, 5, 103.0)  # seen before
            assert not ch.opened(store, peer, 0, 103.0)
            assert ch.opened(store, peer, 10, 104.0)  # 8..9 skipped
        rows = [(g.first_seq, g.last_seq, g.noticed_at) for g in ch.gap_rows(store, peer)]
        assert rows == [(3, 4, 101.0), (6, 6, 101.0), (8, 9, 104.0)]
        assert ch.missing_counts(store, 101.5) == {peer: 3}
        assert ch.next_deadline(store, 10.0) == 111.0
        assert ch.due_gaps(store, 101.5) == {peer: [(3, 4), (6, 6)]}
        with store.transaction():
            ch.mark_reported(store, peer, [3, 6])
        assert ch.due_gaps(store, 200.0) == {peer: [(8, 9)]}
        with store.transaction():
            assert ch.opened(store, peer, 3, 105.0)  # late after it was reported
        assert [(g.first_seq, g.reported) for g in ch.gap_rows(store, peer)] == [
            (4, True), (6, True), (8, False),
        ]  # fmt: skip
        report = ch.build_gap_report([(4, 4), (6, 9)])
        assert ch.parse_gap_report(report) == [(4, 4), (6, 9)]
        for bad in (b"", b"\x03", report[:-1], b"\x01" + report[1:],
                    b"\x03" + bytes(8) + (1).to_bytes(8, "big"),  # first = 0
                    b"\x03" + (5).to_bytes(8, "big") + (4).to_bytes(8, "big"),  # first > last
                    b"\x03" + bytes(16) * 101):  # fmt: skip
            assert ch.parse_gap_report(bad) is None
        with store.transaction():
            ch.reset(store, peer)
        assert ch.gap_rows(store, peer) == []
        assert ch.next_seq(store, peer) == 1
    finally:
        store.close()


# -- drops, delays and lost receipts --------------------------------------------------------------


def drop_nth(pair: Pair, recipient: bytes, wanted: Sequence[int]) -> list[str]:
    """Make the relay delete the ``wanted`` (1-based) DELIVERs to ``recipient``; returns the
    message ids it dropped, as it drops them."""
    dropped: list[str] = []
    count = 0

    async def hook(tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
        nonlocal count
        if isinstance(frame, f.DeliverFrame) and tap.cell_id == recipient:
            count += 1
            if count in wanted:
                dropped.append(message_id_of(frame))
                await pair.evil.discard(recipient, frame.relay_seq)
                return []
        return [frame]

    pair.evil.on_frame = hook
    return dropped


async def test_dropped_message_is_shown_missing_and_reported(pair: Pair) -> None:
    """[M-ENV-10][M-ENV-11] The relay deletes the second of three messages: berlin shows the
    gap as missing after the grace period (not before), reports it once, and paris shows that
    message — only that one — as ``missing``; the others become ``delivered``."""
    dropped = drop_nth(pair, pair.berlin_id, [2])
    async with pair.open(pair.paris) as paris, pair.open(pair.berlin, gap_grace=1.0) as berlin:
        ids = [await paris.send("berlin", f"m{i}") for i in range(3)]
        got = await take(berlin, 2)
        assert [m.body for m in got] == ["m0", "m2"]
        assert dropped == [ids[1]]
        [gap] = berlin.gaps("paris")
        assert (gap.peer, gap.first_seq, gap.last_seq, gap.missing) == ("paris", 2, 2, False)
        assert berlin.peer("paris").missing == 0  # still within the grace period
        with pytest.raises(StatusTimeout) as early:
            await paris.wait_status(ids[1], "missing", timeout=0.3)
        assert early.value.status == "accepted"
        assert await paris.wait_status(ids[1], "missing", timeout=5) == "missing"
        assert [gap.missing for gap in berlin.gaps()] == [True]
        assert berlin.peer("paris").missing == 1
        assert [await paris.status(i) for i in ids] == ["delivered", "missing", "delivered"]
        assert [e.status for e in paris.outbox()] == ["delivered", "missing", "delivered"]
        await asyncio.sleep(2 * 1.0)
        assert gap_reports(pair.berlin) == 1  # reported once


async def test_late_message_closes_its_gap_and_moves_on_to_delivered(pair: Pair) -> None:
    """[M-ENV-10][M-ENV-11] The relay holds the first message past the grace period: it is
    reported missing, then delivered; the gap closes and paris's status moves on from
    ``missing`` to ``delivered`` (missing is not final). A gap that closes within the grace
    period is never reported."""
    held: list[f.Frame] = []

    async def hold_first(tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
        if isinstance(frame, f.DeliverFrame) and tap.cell_id == pair.berlin_id and not held:
            held.append(frame)
            return []
        return [frame]

    pair.evil.on_frame = hold_first
    async with pair.open(pair.paris) as paris, pair.open(pair.berlin) as berlin:
        late = await paris.send("berlin", "late")
        on_time = await paris.send("berlin", "on time")
        assert [m.body for m in await take(berlin, 1)] == ["on time"]
        assert await paris.wait_status(late, "missing", timeout=5) == "missing"
        assert berlin.peer("paris").missing == 1
        await pair.evil.tap(pair.berlin_id).emit(*held)
        [arrived] = await take(berlin, 1)
        assert (arrived.id, arrived.seq) == (late, 1)
        assert berlin.gaps() == []
        assert berlin.peer("paris").missing == 0
        assert await paris.wait_status(late, "delivered", timeout=5) == "delivered"
        assert await paris.status(on_time) == "delivered"
        # within the grace period: held, released quickly, never reported
        held.clear()
        quick = await paris.send("berlin", "quick")
        after = await paris.send("berlin", "after")
        await take(berlin, 1)
        await pair.evil.tap(pair.berlin_id).emit(*held)
        await take(berlin, 1)
        for message_id in (quick, after):
            assert await paris.wait_status(message_id, "delivered", timeout=5) == "delivered"
        await asyncio.sleep(2 * GRACE)
        assert gap_reports(pair.berlin) == 1  # only the first gap was reported
        assert berlin.gaps() == []


async def test_lost_receipt_is_sealed_again(pair: Pair) -> None:
    """[M-ENV-11] The relay deletes berlin's first delivery receipt. Paris notices the gap in
    berlin's numbers when berlin's next envelope arrives, reports it, and berlin seals the
    lost receipt again: paris's first message ends ``delivered``."""
    dropped = drop_nth(pair, pair.paris_id, [1])
    async with pair.open(pair.paris) as paris, pair.open(pair.berlin) as berlin:
        first = await paris.send("berlin", "first")
        await take(berlin, 1)
        await eventually(lambda: len(dropped) == 1)
        with pytest.raises(StatusTimeout) as early:
            await paris.wait_status(first, "delivered", timeout=2 * GRACE)
        assert early.value.status == "accepted"
        await berlin.send("paris", "anything later")  # reveals the gap in berlin's numbers
        await take(paris, 1)
        assert await paris.wait_status(first, "delivered", timeout=5) == "delivered"
        [gap] = paris.gaps("berlin")  # the dropped receipt's number stays missing at paris
        assert (gap.first_seq, gap.last_seq, gap.missing) == (1, 1, True)
