"""The SDK against the real relay logic, in-process, over the in-memory transport.

Every test runs the relay's own code (``create_app``, its enrollment route, its Noise link
handshake and store-and-forward ``Connection``) and the real SDK with real crypto and real
SQLite; only the byte pipe between them is in memory (``relaykit``). Faults are injected as
transports (``faults``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import update

from liaison.client import (
    AlreadyEnrolled,
    BadCode,
    Cell,
    CellReplaced,
    CellRevoked,
    CellSuspended,
    CorruptState,
    KeyChanged,
    LinkHeld,
    MessageTooLarge,
    NotEnrolled,
    NotPaired,
    PassphraseRequired,
    PeerRevoked,
    RelayUnreachable,
    SendFailed,
    UnknownPeer,
    WrongPassphrase,
)
from liaison.client.state import STATE_FILE, Store
from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.enrollment import EnrollmentCode
from liaison.protocol.envelope import (
    ContentType,
    EnvelopeKind,
    Precedence,
    Routing,
)
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from liaison.protocol.session import initiate
from liaison.server import schema
from liaison.server import store as relay_store
from tests.cells import take

from .faults import CutBeforeAck, cell_keys, expect, impersonate
from .relaykit import BASE_URL, MemoryRelay, memory_relay


@dataclass
class World:
    relay: MemoryRelay
    paris: Path
    berlin: Path
    rome: Path  # enrolled, paired with nobody

    def open(self, home: Path, **options: object) -> Cell:
        return self.relay.open(home, **options)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with memory_relay(tmp_path, expiry_sweep_seconds=0.2) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        rome = await relay.new_cell("rome")
        yield World(relay, paris, berlin, rome)


async def nothing_more(cell: Cell, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await take(cell, 1, timeout=wait)


async def until(condition: object, timeout: float = 5.0) -> None:
    """Poll a zero-argument callable until it is true."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- the happy paths ------------------------------------------------------------------------------


async def test_send_receive_and_receipts(world: World) -> None:
    """queued -> accepted -> delivered (automatic receipt) -> read (mark_read); body, marking,
    precedence and times arrive; receipts are not yielded."""
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        assert [p.name for p in paris.peers()] == ["berlin"]
        message_id = await paris.send("berlin", "bonjour", precedence="immediate", ttl=600,
                                      marking="NATO RESTRICTED")  # fmt: skip
        assert await paris.status(message_id) in ("queued", "accepted", "delivered")
        assert await paris.wait_status(message_id, "delivered", timeout=5) == "delivered"
        [message] = await take(berlin, 1)
        assert (message.id, message.sender, message.body) == (message_id, "paris", "bonjour")
        assert (message.content_type, message.precedence) == ("text", "immediate")
        assert message.marking == "NATO RESTRICTED"
        assert message.sent_at is not None
        assert abs(message.received_at.timestamp() - time.time()) < 30
        await message.mark_read()
        assert await paris.wait_status(message_id, "read", timeout=5) == "read"
        assert berlin.inbox()[0].read
        # The conversation continues the other way; receipts never show up as messages.
        reply = await berlin.send("paris", b"\x00\x01binary")
        [back] = await take(paris, 1)
        assert (back.id, back.body, back.content_type) == (reply, b"\x00\x01binary", "file")
        await nothing_more(berlin)
        assert [e.status for e in paris.outbox()] == ["read"]


async def test_receipts_are_batched(world: World) -> None:
    """A backlog of 150 messages is acknowledged end to end by a few RECEIPT envelopes of up
    to 100 ids each, not one per message; every send reaches ``delivered``."""
    async with world.open(world.paris) as paris:
        sent = [await paris.send("berlin", f"n{i}") for i in range(150)]
        entries = paris.outbox(limit=1000)
        assert [e.message_id for e in entries] == sent
        assert {(e.peer, e.precedence, e.content_type) for e in entries} == {
            ("berlin", "routine", "text")
        }
    async with world.open(world.berlin) as berlin:
        assert len(await take(berlin, 150)) == 150
        await asyncio.sleep(0.3)
        receipts = [e for e in berlin.outbox(include_receipts=True) if e.content_type == "receipt"]
        assert 2 <= len(receipts) < 20
    async with world.open(world.paris) as paris:
        for message_id in sent:
            assert await paris.wait_status(message_id, "delivered", timeout=10) == "delivered"


async def test_content_types(world: World) -> None:
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await paris.send("berlin", {"grid": "32U", "n": 3}, content_type="json")
        await paris.send("berlin", "plain")
        await paris.send("berlin", bytes(range(256)))
        messages = await take(berlin, 3)
        assert [m.content_type for m in messages] == ["json", "text", "file"]
        assert messages[0].json() == {"grid": "32U", "n": 3}
        assert messages[2].body == bytes(range(256))
        with pytest.raises(ValueError, match="JSON"):
            await paris.send("berlin", "{not json", content_type="json")
        with pytest.raises(ValueError, match="precedence"):
            await paris.send("berlin", "x", precedence="urgent")


async def test_offline_recipient_gets_precedence_order(world: World) -> None:
    """Sent ROUTINE, PRIORITY, IMMEDIATE, FLASH while berlin is offline: berlin opens the
    session from whichever arrives first and sees FLASH first."""
    async with world.open(world.paris) as paris:
        ids = {}
        for precedence in ("routine", "priority", "immediate", "flash"):
            ids[precedence] = await paris.send("berlin", precedence, precedence=precedence)
        for message_id in ids.values():
            assert await paris.wait_status(message_id, "accepted", timeout=5) == "accepted"
    async with world.open(world.berlin) as berlin:
        messages = await take(berlin, 4)
        assert [m.body for m in messages] == ["flash", "immediate", "priority", "routine"]
        assert [m.id for m in messages] == [ids[m.precedence] for m in messages]
    async with world.open(world.paris) as paris:
        for message_id in ids.values():
            assert await paris.wait_status(message_id, "delivered", timeout=5) == "delivered"


async def test_each_message_is_yielded_once_across_restarts(world: World) -> None:
    async with world.open(world.paris) as paris:
        sent = [await paris.send("berlin", f"m{i}") for i in range(3)]
    async with world.open(world.berlin) as berlin:
        first = await take(berlin, 1)
    async with world.open(world.berlin) as berlin:
        rest = await take(berlin, 2)
        await nothing_more(berlin)
        assert [m.id for m in first + rest] == sent
        assert [m.body for m in berlin.inbox()] == ["m0", "m1", "m2"]
        assert [m.body for m in berlin.inbox(peer="paris", limit=1)] == ["m2"]


async def test_restart_mid_conversation(world: World) -> None:
    """Close and reopen both cells between every exchange: the sessions continue."""
    for round_ in range(3):
        async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
            await paris.send("berlin", f"ping {round_}")
            assert [m.body for m in await take(berlin, 1)] == [f"ping {round_}"]
            await berlin.send("paris", f"pong {round_}")
            assert [m.body for m in await take(paris, 1)] == [f"pong {round_}"]


async def test_simultaneous_first_messages(world: World) -> None:
    """Both cells start a session at the same time: both messages open, and the channel keeps
    working afterwards in both directions."""
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await asyncio.gather(
            paris.send("berlin", "from paris"), berlin.send("paris", "from berlin")
        )
        assert [m.body for m in await take(berlin, 1)] == ["from paris"]
        assert [m.body for m in await take(paris, 1)] == ["from berlin"]
        for i in range(3):
            await paris.send("berlin", f"p{i}")
            await berlin.send("paris", f"b{i}")
        assert [m.body for m in await take(berlin, 3)] == ["p0", "p1", "p2"]
        assert [m.body for m in await take(paris, 3)] == ["b0", "b1", "b2"]
        assert not any(m.failed for m in paris.inbox() + berlin.inbox())


async def test_peer_that_restarts_its_session(world: World) -> None:
    """A peer that lost its session starts a new one; the responder builds it from the new
    setup block (different setup ephemeral) and keeps receiving."""
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await paris.send("berlin", "one")
        await take(berlin, 1)
    with sqlite3.connect(world.paris / STATE_FILE) as db:
        db.execute("DELETE FROM sessions")
    db.close()
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await paris.send("berlin", "two")
        assert [m.body for m in await take(berlin, 1)] == ["two"]
        await berlin.send("paris", "three")
        assert [m.body for m in await take(paris, 1)] == ["three"]


# -- delivery guarantees ---------------------------------------------------------------------


async def test_duplicate_delivery_is_yielded_once(world: World) -> None:
    """The link breaks after berlin stored a message but before its ACK left: the relay
    delivers it again on the next link, berlin only ACKs it (M-CLI-2)."""
    cutting = CutBeforeAck(world.relay.transport)
    async with world.open(world.paris) as paris:
        await paris.send("berlin", "exactly once")
    async with world.open(world.berlin, transport=cutting) as berlin:
        [message] = await take(berlin, 1)
        assert message.body == "exactly once"
        await until(lambda: cutting.connects >= 2 and berlin.online)
        await nothing_more(berlin, 0.5)
        assert cutting.cuts == 0
        assert world.relay.relay.metrics.delivered == 2  # the same envelope, twice
        assert len(berlin.inbox()) == 1
    berlin_id = cell_keys(world.berlin)[1]
    assert await relay_store.pending_for(world.relay.relay.engine, berlin_id, 10) == []


async def test_outbox_survives_relay_outage_and_restart(world: World) -> None:
    """Sends while the relay is down are queued, kept across a restart of the sender, and
    sent in order once the relay is back (M-CLI-1)."""
    transport = world.relay.transport
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await paris.send("berlin", "before")
        await take(berlin, 1)
        transport.down = True
        transport.sever()
        await until(lambda: not paris.online)
        queued = [await paris.send("berlin", f"during {i}") for i in range(3)]
        assert [await paris.status(m) for m in queued] == ["queued"] * 3
    async with world.open(world.paris, wait_connected=None) as paris:
        assert [await paris.status(m) for m in queued] == ["queued"] * 3
        transport.down = False
        await paris.wait_connected(5)
        async with world.open(world.berlin) as berlin:
            assert [m.body for m in await take(berlin, 3)] == ["during 0", "during 1", "during 2"]
        for message_id in queued:
            assert await paris.wait_status(message_id, "delivered", timeout=5) == "delivered"


async def test_open_waits_for_the_relay(world: World) -> None:
    world.relay.transport.down = True
    with pytest.raises(RelayUnreachable):
        async with world.open(world.paris, wait_connected=0.3):
            pass
    async with world.open(world.paris, connect=False) as paris:
        assert paris.name == "paris"
        assert not paris.online
        with pytest.raises(RelayUnreachable):
            await paris.wait_connected(0.1)


async def test_expiry(world: World) -> None:
    """Undelivered past its expiry: the relay says EXPIRED; a queued one is expired locally."""
    async with world.open(world.paris) as paris:
        relayed = await paris.send("berlin", "too late", ttl=1)
        assert await paris.wait_status(relayed, "expired", timeout=5) == "expired"
        world.relay.transport.down = True
        world.relay.transport.sever()
        await until(lambda: not paris.online)
        local = await paris.send("berlin", "never sent", ttl=1)
        await asyncio.sleep(1.2)
        world.relay.transport.down = False
        assert await paris.wait_status(local, "expired", timeout=5) == "expired"
    async with world.open(world.berlin) as berlin:
        await nothing_more(berlin)


async def test_queue_full_marks_failed(tmp_path: Path) -> None:
    async with memory_relay(tmp_path, queue_max_messages=2) as relay:
        paris = await relay.new_cell("paris")
        await relay.new_cell("berlin", pair_with=("paris",))
        async with relay.open(paris) as cell:
            ids = [await cell.send("berlin", str(i)) for i in range(3)]
            with pytest.raises(SendFailed) as refused:
                await cell.wait_status(ids[2], "accepted", timeout=5)
            assert (refused.value.status, refused.value.reason) == ("failed", "queue_full")
            assert [e.error for e in cell.outbox()] == [None, None, "queue_full"]


async def test_message_too_large_leaves_the_session_usable(world: World) -> None:
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await paris.send("berlin", "first")
        with pytest.raises(MessageTooLarge):
            await paris.send("berlin", b"x" * 70_000)
        await paris.send("berlin", b"y" * 60_000)
        messages = await take(berlin, 2)
        assert [m.body for m in messages] == ["first", b"y" * 60_000]


# -- peers, keys, errors ----------------------------------------------------------------------


async def test_unknown_and_unpaired_peers(world: World) -> None:
    rome_id = cell_keys(world.rome)[1].hex()
    async with world.open(world.paris) as paris:
        with pytest.raises(UnknownPeer) as unknown:
            await paris.send("nobody", "hello")
        assert (unknown.value.code, unknown.value.exit_code) == ("unknown_peer", 10)
        with pytest.raises(NotPaired):
            await paris.send(rome_id, "hello")
        await world.relay.admin.unpair("paris", "berlin")
        await paris.refresh_peers()
        assert paris.peer("berlin").status == "unpaired"
        with pytest.raises(NotPaired):
            await paris.send("berlin", "hello")


async def test_revoked_peer_and_revoked_cell(world: World) -> None:
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await paris.send("berlin", "before")
        await take(berlin, 1)
        await world.relay.admin.action("berlin", "revoke")
        await until(lambda: paris.peer("berlin").status == "revoked")
        with pytest.raises(PeerRevoked):
            await paris.send("berlin", "after")
        with pytest.raises(CellRevoked):
            await take(berlin, 1)
        with pytest.raises(CellRevoked):
            await berlin.send("paris", "still here?")
    with pytest.raises(CellRevoked):
        async with world.open(world.berlin):
            pass


async def test_suspended_cell(world: World) -> None:
    async with world.open(world.paris) as paris:
        await world.relay.admin.action("paris", "suspend")
        with pytest.raises(CellSuspended):
            await take(paris, 1)
    await world.relay.admin.action("paris", "resume")
    async with world.open(world.paris) as paris:
        assert paris.online


async def test_a_second_instance_of_a_home_is_refused(world: World) -> None:
    """One link per home: a second open of the same home with connect=True raises LinkHeld
    instead of replacing the first one's link; connect=False works beside it."""
    async with world.open(world.paris) as first:
        with pytest.raises(LinkHeld):
            await world.open(world.paris).start()
        async with world.open(world.paris, connect=False) as beside:
            assert beside.outbox() == []
        await first.send("berlin", "still linked")
        assert await first.wait_status(await first.send("berlin", "x"), "accepted", 10) == (
            "accepted"
        )
        assert first.online


async def test_a_copy_of_the_home_elsewhere_replaces_the_link(world: World) -> None:
    """The relay keeps one link per cell: a copy of the home in another directory (another
    machine) replaces the first link (CellReplaced)."""
    copy = world.paris.parent / "paris-copy"
    shutil.copytree(world.paris, copy, ignore=shutil.ignore_patterns("*.lock", "*.sock"))
    async with world.open(world.paris) as first, world.open(copy) as second:
        with pytest.raises(CellReplaced):
            await take(first, 1)
        assert second.online


async def test_key_change_blocks_sending_until_accepted(world: World) -> None:
    """The relay starts claiming another identity for berlin (a compromised relay, or a
    re-keyed peer): sending stops with KeyChanged until the new key is accepted (M-CLI-5)."""
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await paris.send("berlin", "hello")
        await take(berlin, 1)
        old_number = paris.safety_number("berlin")
        assert old_number == berlin.safety_number("paris")
    identity, spk, kem = IdentityKeyPair.generate(), X25519KeyPair.generate(), KemKeyPair.generate()
    berlin_id = cell_keys(world.berlin)[1]
    signed = SignedPrekey.create(identity, 1, spk)
    kem_signed = SignedKemPrekey.create(identity, 1, kem)
    async with world.relay.relay.engine.begin() as conn:
        await conn.execute(update(schema.cells).where(schema.cells.c.id == berlin_id)
                           .values(identity_key=bytes(identity.public)))  # fmt: skip
        await conn.execute(update(schema.signed_prekeys)
                           .where(schema.signed_prekeys.c.cell_id == berlin_id)
                           .values(spk_public=bytes(spk.public), spk_signature=signed.signature,
                                   kem_public=bytes(kem.public),
                                   kem_signature=kem_signed.signature))  # fmt: skip
    async with world.open(world.paris) as paris:
        peer = paris.peer("berlin")
        assert peer.key_changed
        with pytest.raises(KeyChanged) as changed:
            await paris.send("berlin", "to whom?")
        assert changed.value.exit_code == 12
        assert paris.safety_number("berlin") == old_number
        assert paris.safety_number("berlin", new_key=True) != old_number
        with pytest.raises(KeyChanged):
            await paris.verify("berlin")
        accepted = await paris.verify("berlin", accept_new_key=True)
        assert accepted.verified
        assert not accepted.key_changed
        assert accepted.identity == bytes(identity.public).hex()
        message_id = await paris.send("berlin", "to the new key")
        assert await paris.wait_status(message_id, "accepted", timeout=5) == "accepted"


async def test_setup_block_with_another_identity_is_held_until_accepted(world: World) -> None:
    """A session setup from berlin's cell id under a different identity is not shown as
    berlin's (M-SES-7, M-SN-2): it is held, and opened once the new key is accepted."""
    async with world.open(world.paris) as paris:
        await paris.send("berlin", "hello")  # pins berlin's enrolled identity
        paris_id = bytes.fromhex(paris.cell_id)
        berlin_id = cell_keys(world.berlin)[1]
        impostor = IdentityKeyPair.generate()
        link = await impersonate(world.relay.transport, world.berlin)
        try:
            await link.send(f.FetchBundleFrame(7, paris_id))
            bundle = await expect(link, f.BundleFrame)
            assert isinstance(bundle, f.BundleFrame)
            session = initiate(impostor, berlin_id, PrekeyBundle.decode(bundle.bundle))
            envelope = session.seal(ContentType.TEXT, b"it is me, berlin",
                                    message_id=os.urandom(16), precedence=Precedence.FLASH,
                                    expires_at=int(time.time()) + 60)  # fmt: skip
            await link.send(f.SendFrame(envelope))
            await expect(link, f.AcceptedFrame)
        finally:
            await link.close()
        [held] = await take(paris, 1)
        assert (held.error, held.body, held.sender) == ("key_changed", None, "berlin")
        assert paris.peer("berlin").key_changed
        with pytest.raises(KeyChanged):
            await paris.send("berlin", "blocked")
        await paris.verify("berlin", accept_new_key=True)
        [opened] = await take(paris, 1)
        assert (opened.id, opened.body, opened.error) == (held.id, "it is me, berlin", None)


async def test_envelopes_that_do_not_open_never_wedge_the_queue(world: World) -> None:
    """Garbage and malformed envelopes are recorded as failures and ACKed (M-CLI-4); real
    messages behind them arrive."""
    berlin_id = cell_keys(world.berlin)[1]
    expires = int(time.time()) + 60
    garbage = Routing(EnvelopeKind.MESSAGE, berlin_id, os.urandom(16), Precedence.FLASH, expires)
    bad_setup = Routing(EnvelopeKind.PREKEY, berlin_id, os.urandom(16), Precedence.FLASH, expires)
    link = await impersonate(world.relay.transport, world.paris)
    try:
        for routing in (garbage, bad_setup):
            head = routing.encode()
            filler = b"\xff" * 1164 if routing is bad_setup else os.urandom(4096 - len(head))
            await link.send(f.SendFrame((head + filler + os.urandom(4096))[:4096]))
            await expect(link, f.AcceptedFrame)
    finally:
        await link.close()
    async with world.open(world.paris) as paris, world.open(world.berlin) as berlin:
        await paris.send("berlin", "real one")
        messages = await take(berlin, 3)
        assert [(m.error, m.body) for m in messages] == [
            ("decrypt_failed", None), ("malformed_envelope", None), (None, "real one"),
        ]  # fmt: skip
        assert messages[0].id == garbage.message_id.hex()
    assert await relay_store.pending_for(world.relay.relay.engine, berlin_id, 10) == []


async def test_one_time_prekeys_are_replenished_and_used_once(tmp_path: Path) -> None:
    async with memory_relay(tmp_path, prekeys_low_threshold=10) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",), one_time_prekeys=3)
        berlin_id = cell_keys(berlin)[1]
        engine = relay.relay.engine
        assert await relay_store.one_time_prekey_count(engine, berlin_id) == 3
        async with relay.open(berlin) as cell:
            # PREKEYS_LOW(3) on connect: 97 new ones, stored privately before the upload.
            for _ in range(100):
                if await relay_store.one_time_prekey_count(engine, berlin_id) == 100:
                    break
                await asyncio.sleep(0.05)
            assert await relay_store.one_time_prekey_count(engine, berlin_id) == 100
            store = Store.open(berlin, None)
            try:
                assert store.one_time_prekey_count() == 100
            finally:
                store.close()
            async with relay.open(paris) as sender:
                await sender.send("berlin", "uses a one-time prekey")
                await take(cell, 1)
        store = Store.open(berlin, None)
        try:
            assert store.one_time_prekey_count() == 99  # deleted with the first message
        finally:
            store.close()


async def test_passphrase(tmp_path: Path) -> None:
    async with memory_relay(tmp_path) as relay:
        _cell_id, code = await relay.admin.add_cell("paris")
        home = tmp_path / "paris"
        await Cell.enroll(home, server=BASE_URL, code=code, passphrase="correct horse",
                          http=relay.http)  # fmt: skip
        with pytest.raises(PassphraseRequired):
            async with relay.open(home):
                pass
        with pytest.raises(WrongPassphrase):
            async with relay.open(home, passphrase="battery staple"):
                pass
        async with relay.open(home, passphrase="correct horse") as cell:
            assert cell.online


async def test_corrupted_or_missing_state(world: World, tmp_path: Path) -> None:
    with pytest.raises(NotEnrolled):
        async with world.open(tmp_path / "nowhere"):
            pass
    path = world.paris / STATE_FILE
    path.write_bytes(os.urandom(path.stat().st_size))
    for side in ("-wal", "-shm"):
        (world.paris / (STATE_FILE + side)).unlink(missing_ok=True)
    with pytest.raises(CorruptState):
        async with world.open(world.paris):
            pass


async def test_enrollment_refusals(world: World, tmp_path: Path) -> None:
    relay = world.relay
    lisbon_id, code = await relay.admin.add_cell("lisbon")
    lisbon = await Cell.enroll(tmp_path / "lisbon", server=BASE_URL, code=code, http=relay.http,
                               transport=relay.transport)  # fmt: skip
    assert (lisbon.cell_id, lisbon.name, lisbon.server) == (lisbon_id.hex(), "lisbon", BASE_URL)
    offline = lisbon.online
    assert not offline
    async with lisbon:
        assert lisbon.online
        identity = lisbon.identity
    assert lisbon.identity == identity  # still known after close
    with pytest.raises(AlreadyEnrolled):
        await Cell.enroll(tmp_path / "lisbon", server=BASE_URL, code=code, http=relay.http)
    with pytest.raises(BadCode) as used:
        await Cell.enroll(tmp_path / "again", server=BASE_URL, code=code, http=relay.http)
    assert used.value.reason == "code_used"
    assert not (tmp_path / "again" / STATE_FILE).exists()
    with pytest.raises(BadCode) as malformed:
        await Cell.enroll(tmp_path / "x", server=BASE_URL, code="ln1-nonsense", http=relay.http)
    assert malformed.value.reason == "malformed"
    other_relay = EnrollmentCode.generate(bytes(X25519KeyPair.generate().public)).text()
    with pytest.raises(BadCode) as wrong:
        await Cell.enroll(tmp_path / "x", server=BASE_URL, code=other_relay, http=relay.http)
    assert wrong.value.reason == "wrong_relay"
    _cell_id, madrid_code = await relay.admin.add_cell("madrid")
    with pytest.raises(BadCode) as mismatch:
        await Cell.enroll(tmp_path / "madrid", server=BASE_URL, code=madrid_code, name="rome",
                          http=relay.http)  # fmt: skip
    assert mismatch.value.reason == "name_mismatch"
    assert not (tmp_path / "madrid").exists()  # refused before the code was used: no state
    await Cell.enroll(tmp_path / "madrid", server=BASE_URL, code=madrid_code, name="madrid",
                      http=relay.http)  # fmt: skip
    async with world.open(tmp_path / "madrid") as madrid:  # the same code still enrolls
        assert madrid.name == "madrid"


async def test_interrupted_enrollment_is_recovered(world: World, tmp_path: Path) -> None:
    """The relay enrolled the cell but the answer was lost: the next attempt with the same
    code hears code_used, finds its keys enrolled over the link, and keeps them."""
    relay = world.relay
    _cell_id, code = await relay.admin.add_cell("oslo")
    home = tmp_path / "oslo"
    await Cell.enroll(home, server=BASE_URL, code=code, http=relay.http)
    with sqlite3.connect(home / STATE_FILE) as db:  # as if the answer never arrived
        db.execute("DELETE FROM meta WHERE key IN ('cell_id', 'cell_name')")
    db.close()
    with pytest.raises(NotEnrolled):
        async with world.open(home):
            pass
    await Cell.enroll(home, server=BASE_URL, code=code, name="oslo", http=relay.http,
                      transport=relay.transport)  # fmt: skip
    async with world.open(home) as oslo:
        assert oslo.online


async def test_busy_relay_refusal_is_retried_not_failed(world: World) -> None:
    """``rate_limited`` (the relay's writer is saturated) is retryable: the message stays
    queued, is sent again, and is accepted once the relay has room (SPEC.md §11.7, M-CLI-1)."""
    writer = world.relay.relay.writer
    async with world.open(world.paris) as paris, world.open(world.berlin):
        limit = writer._max_pending
        writer._max_pending = 0  # the real writer's overload path: every send refused as busy
        try:
            message_id = await paris.send("berlin", "when you can")
            await asyncio.sleep(0.3)
            assert await paris.status(message_id) == "queued"
        finally:
            writer._max_pending = limit
        assert await paris.wait_status(message_id, "accepted", timeout=10) in (
            "accepted", "delivered", "read",
        )  # fmt: skip
