"""The relay end to end: real uvicorn, real WebSockets, the real protocol (SPEC.md §6, §11)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets

from liaison.protocol import frames as f
from liaison.protocol.envelope import Precedence
from liaison.protocol.keys import X25519KeyPair
from liaison.protocol.link import LinkInitiator
from tests.server.harness import Admin, Link, RawCell, RunningRelay, running_relay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    with running_relay(tmp_path, queue_max_messages=20, prekeys_low_threshold=3,
                       handshake_timeout_seconds=1.0) as r:  # fmt: skip
        yield r


@dataclass
class World:
    relay: RunningRelay
    admin: Admin
    paris: RawCell
    berlin: RawCell
    rome: RawCell  # enrolled, never paired with anyone


@pytest.fixture
async def world(relay: RunningRelay) -> AsyncIterator[World]:
    admin = Admin(relay.url, relay.admin_token)
    cells = {}
    for name in ("paris", "berlin", "rome"):
        cell = RawCell(name)
        _cell_id, code = await admin.add_cell(name)
        await cell.enroll(relay, code)
        cells[name] = cell
    await admin.pair("paris", "berlin")
    try:
        yield World(relay, admin, cells["paris"], cells["berlin"], cells["rome"])
    finally:
        await admin.aclose()
        for link in relay.links:  # links a failing test left open
            await link.close()


async def exchange_first(world: World, sender_link: Link) -> bytes:
    """Fetch berlin's bundle over paris's link."""
    return await sender_link.fetch_bundle(world.berlin)


async def test_send_deliver_ack(world: World) -> None:
    """SEND -> ACCEPTED after commit; online recipient gets DELIVER; ACK deletes it."""
    paris, berlin = await world.paris.connect(world.relay), await world.berlin.connect(world.relay)
    bundle = await paris.fetch_bundle(world.berlin)
    message_id, data = world.paris.seal(world.berlin, "bonjour", bundle=bundle)
    await paris.send(f.SendFrame(data))
    accepted = await paris.expect(f.AcceptedFrame)
    assert accepted.message_id == message_id
    deliver = await berlin.expect(f.DeliverFrame)
    assert deliver.sender_cell_id == world.paris.cell_id
    assert deliver.envelope == data
    assert world.berlin.open(world.paris, deliver.envelope) == "bonjour"
    await berlin.send(f.AckFrame(deliver.relay_seq))
    await berlin.close()
    # Nothing left: a reconnect gets no redelivery.
    berlin2 = await world.berlin.connect(world.relay)
    with pytest.raises(TimeoutError):
        await berlin2.expect(f.DeliverFrame, timeout=0.5)
    await berlin2.close()
    await paris.close()


async def test_offline_queue_delivered_in_precedence_order(world: World) -> None:
    """Queued envelopes arrive FLASH, IMMEDIATE, PRIORITY, ROUTINE; FIFO within one."""
    paris = await world.paris.connect(world.relay)
    bundle = await paris.fetch_bundle(world.berlin)
    order = [Precedence.ROUTINE, Precedence.FLASH, Precedence.PRIORITY, Precedence.ROUTINE,
             Precedence.IMMEDIATE, Precedence.FLASH]  # fmt: skip
    sent = []
    for i, precedence in enumerate(order):
        _mid, data = world.paris.seal(world.berlin, f"m{i}", precedence=precedence, bundle=bundle)
        await paris.send(f.SendFrame(data))
        await paris.expect(f.AcceptedFrame)
        sent.append((precedence, i))
    berlin = await world.berlin.connect(world.relay)
    got = []
    for _ in order:
        deliver = await berlin.expect(f.DeliverFrame)
        got.append(world.berlin.open(world.paris, deliver.envelope))
        await berlin.send(f.AckFrame(deliver.relay_seq))
    expected = [f"m{i}" for _p, i in sorted(sent)]
    assert got == expected
    await berlin.close()
    await paris.close()


async def test_unacked_envelopes_are_redelivered(world: World) -> None:
    paris = await world.paris.connect(world.relay)
    bundle = await paris.fetch_bundle(world.berlin)
    _mid, data = world.paris.seal(world.berlin, "again", bundle=bundle)
    await paris.send(f.SendFrame(data))
    await paris.expect(f.AcceptedFrame)
    berlin = await world.berlin.connect(world.relay)
    first = await berlin.expect(f.DeliverFrame)
    await berlin.close()  # no ACK
    berlin = await world.berlin.connect(world.relay)
    second = await berlin.expect(f.DeliverFrame)
    assert second.relay_seq == first.relay_seq
    assert second.envelope == data
    await berlin.close()
    await paris.close()


async def test_duplicate_send_is_acknowledged_and_stored_once(world: World) -> None:
    paris = await world.paris.connect(world.relay)
    bundle = await paris.fetch_bundle(world.berlin)
    _mid, data = world.paris.seal(world.berlin, "once", bundle=bundle)
    await paris.send(f.SendFrame(data))
    first = await paris.expect(f.AcceptedFrame)
    await paris.send(f.SendFrame(data))
    second = await paris.expect(f.AcceptedFrame)
    assert first == second
    berlin = await world.berlin.connect(world.relay)
    deliver = await berlin.expect(f.DeliverFrame)
    await berlin.send(f.AckFrame(deliver.relay_seq))
    with pytest.raises(TimeoutError):
        await berlin.expect(f.DeliverFrame, timeout=0.5)
    await berlin.close()
    await paris.close()


async def test_unpaired_send_and_bundle_fetch_refused(world: World) -> None:
    rome = await world.rome.connect(world.relay)
    await rome.send(f.FetchBundleFrame(7, world.berlin.cell_id))
    error = await rome.expect(f.ErrorFrame)
    assert error.code == f.ErrorCode.NOT_PAIRED
    assert error.ref == (7).to_bytes(4, "big")
    # Sending with a valid-looking envelope to an unpaired cell is refused too.
    paris_link = await world.paris.connect(world.relay)
    bundle = await paris_link.fetch_bundle(world.berlin)
    _mid, data = world.paris.seal(world.berlin, "x", bundle=bundle)
    await rome.send(f.SendFrame(data))
    error = await rome.expect(f.ErrorFrame)
    assert error.code == f.ErrorCode.NOT_PAIRED
    await rome.close()
    await paris_link.close()


async def test_queue_quota(world: World) -> None:
    """The 21st queued message for berlin (quota 20) is refused with queue_full."""
    paris = await world.paris.connect(world.relay)
    bundle = await paris.fetch_bundle(world.berlin)
    codes = []
    for i in range(21):
        _mid, data = world.paris.seal(world.berlin, f"q{i}", bundle=bundle)
        await paris.send(f.SendFrame(data))
        frame = await paris.recv()
        while isinstance(frame, f.PrekeysLowFrame):
            frame = await paris.recv()
        codes.append(frame.code if isinstance(frame, f.ErrorFrame) else "accepted")
    assert codes[:20] == ["accepted"] * 20
    assert codes[20] == f.ErrorCode.QUEUE_FULL
    await paris.close()


async def test_bad_expiry_refused(world: World) -> None:
    paris = await world.paris.connect(world.relay)
    bundle = await paris.fetch_bundle(world.berlin)
    _mid, past = world.paris.seal(world.berlin, "late", ttl=-10, bundle=bundle)
    await paris.send(f.SendFrame(past))
    assert (await paris.expect(f.ErrorFrame)).code == f.ErrorCode.BAD_EXPIRY
    _mid, far = world.paris.seal(world.berlin, "far", ttl=10**8)
    await paris.send(f.SendFrame(far))
    assert (await paris.expect(f.ErrorFrame)).code == f.ErrorCode.BAD_EXPIRY
    await paris.close()


async def test_expired_envelopes_purged_and_sender_told(world: World) -> None:
    paris = await world.paris.connect(world.relay)
    bundle = await paris.fetch_bundle(world.berlin)
    message_id, data = world.paris.seal(world.berlin, "short", ttl=1, bundle=bundle)
    await paris.send(f.SendFrame(data))
    await paris.expect(f.AcceptedFrame)
    await asyncio.sleep(1.2)
    await world.relay.relay.sweep_expired()  # the background sweep, run now
    expired = await paris.expect(f.ExpiredFrame)
    assert expired.message_id == message_id
    assert expired.recipient_cell_id == world.berlin.cell_id
    berlin = await world.berlin.connect(world.relay)
    with pytest.raises(TimeoutError):
        await berlin.expect(f.DeliverFrame, timeout=0.5)
    await berlin.close()
    await paris.close()


async def test_prekey_exhaustion_and_low_warning(world: World) -> None:
    """Each fetch consumes one one-time prekey; when none is left the bundle still comes,
    flagged; the owner is warned when its stock runs low."""
    paris = await world.paris.connect(world.relay)
    berlin = await world.berlin.connect(world.relay)
    flags = []
    for _ in range(6):  # berlin enrolled with 5
        request_id = paris.request_id()
        await paris.send(f.FetchBundleFrame(request_id, world.berlin.cell_id))
        flags.append((await paris.expect(f.BundleFrame)).no_one_time_prekey)
    assert flags == [False] * 5 + [True]
    low = await berlin.expect(f.PrekeysLowFrame)
    assert low.remaining < 3
    # Replenish.
    new = [f.OneTimePrekey(500 + i, bytes(X25519KeyPair.generate().public)) for i in range(4)]
    await berlin.send(f.UploadPrekeysFrame(9, tuple(new)))
    uploaded = await berlin.expect(f.UploadedFrame)
    assert (uploaded.request_id, uploaded.stored) == (9, 4)
    await paris.close()
    await berlin.close()


async def test_revocation_mid_connection(world: World) -> None:
    """Revoking disconnects the cell at once, refuses it after, and tells its peers."""
    paris, berlin = await world.paris.connect(world.relay), await world.berlin.connect(world.relay)
    started = time.monotonic()
    await world.admin.action("berlin", "revoke")
    error = await berlin.expect(f.ErrorFrame)
    assert error.code == f.ErrorCode.REVOKED
    assert await berlin.closed_code() == f.CLOSE_CODES[f.ErrorCode.REVOKED]
    assert time.monotonic() - started < 1.0
    revoked = await paris.expect(f.PeerRevokedFrame)
    assert revoked.cell_id == world.berlin.cell_id
    # Refused from then on, with an authenticated ERROR frame before the close.
    again = await world.berlin.connect(world.relay)
    assert (await again.expect(f.ErrorFrame)).code == f.ErrorCode.REVOKED
    assert await again.closed_code() == f.CLOSE_CODES[f.ErrorCode.REVOKED]
    await paris.close()


async def test_new_connection_replaces_old(world: World) -> None:
    first = await world.paris.connect(world.relay)
    second = await world.paris.connect(world.relay)
    error = await first.expect(f.ErrorFrame)
    assert error.code == f.ErrorCode.REPLACED
    assert await first.closed_code() == f.CLOSE_CODES[f.ErrorCode.REPLACED]
    await second.send(f.PingFrame(b"12345678"))
    while (await second.expect(f.PongFrame)).opaque != b"12345678":
        pass
    await second.close()


async def test_replayed_hello_cannot_displace_the_live_connection(world: World) -> None:
    """SPEC.md M-LINK-9: a recorded hello replayed by an attacker completes a handshake the
    attacker cannot use; the cell's live link is not replaced."""
    live = await world.paris.connect(world.relay)
    initiator = LinkInitiator(world.paris.link_key.private_bytes(),
                              bytes(world.relay.relay_key.public))  # fmt: skip
    hello = initiator.write_hello()
    async with websockets.connect(world.relay.ws_url, compression=None) as attacker:
        await attacker.send(hello)  # a replay: the attacker lacks the ephemeral private key
        await attacker.recv()  # the welcome
        await attacker.send(os.urandom(40))  # cannot produce a valid transport message
        await attacker.wait_closed()
        assert attacker.close_code == f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]
    await live.send(f.PingFrame(b"stillme!"))
    while (await live.expect(f.PongFrame)).opaque != b"stillme!":
        pass
    await live.close()


# -- handshake failures -----------------------------------------------------------------------


async def _raw_hello(relay: RunningRelay, hello: bytes) -> int:
    """Send a hello the relay cannot read; it closes without a welcome."""
    async with websockets.connect(relay.ws_url, compression=None) as ws:
        await ws.send(hello)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_handshake_unknown_cell_refused(world: World) -> None:
    """An unknown cell key completes the handshake and gets an authenticated ERROR frame."""
    stranger = RawCell("stranger")
    stranger.cell_id = bytes(16)  # what the relay puts in a refusal's welcome
    link = await stranger.connect(world.relay)
    assert (await link.expect(f.ErrorFrame)).code == f.ErrorCode.NOT_ENROLLED
    assert await link.closed_code() == f.CLOSE_CODES[f.ErrorCode.NOT_ENROLLED]


async def test_handshake_to_wrong_relay_key_refused(world: World) -> None:
    wrong = LinkInitiator(world.paris.link_key.private_bytes(),
                          bytes(X25519KeyPair.generate().public))  # fmt: skip
    code = await _raw_hello(world.relay, wrong.write_hello())
    assert code == f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]


async def test_handshake_garbage_and_truncation_refused(world: World) -> None:
    for garbage in (b"", b"\x00" * 10, os.urandom(200)):
        assert await _raw_hello(world.relay, garbage) == f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]


async def test_suspended_cell_refused_then_resumed(world: World) -> None:
    await world.admin.action("paris", "suspend")
    link = await world.paris.connect(world.relay)
    assert (await link.expect(f.ErrorFrame)).code == f.ErrorCode.SUSPENDED
    assert await link.closed_code() == f.CLOSE_CODES[f.ErrorCode.SUSPENDED]
    await world.admin.action("paris", "resume")
    link = await world.paris.connect(world.relay)
    await link.send(f.PingFrame(b"resumed!"))
    while (await link.expect(f.PongFrame)).opaque != b"resumed!":
        pass
    await link.close()


async def test_handshake_timeout(world: World) -> None:
    async with websockets.connect(world.relay.ws_url, compression=None) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == f.CLOSE_CODES[f.ErrorCode.HANDSHAKE_TIMEOUT]


# -- bad input after the handshake ------------------------------------------------------------


async def test_malformed_frames_get_error_frames_and_the_link_survives(world: World) -> None:
    link = await world.paris.connect(world.relay)
    for bad in (b"\xff", b"\x01", b"\x04\x00", b"\x02" + bytes(24)):
        await link.ws.send(link.transport.encrypt(bad))
        error = await link.expect(f.ErrorFrame)
        assert error.code == f.ErrorCode.MALFORMED_FRAME
    # An envelope that is not a bucket size, and one with a wrong version.
    await link.send(f.SendFrame(b"\x01" * 100))
    assert (await link.expect(f.ErrorFrame)).code == f.ErrorCode.MALFORMED_FRAME
    await link.send(f.SendFrame(b"\x09" + bytes(4095)))
    assert (await link.expect(f.ErrorFrame)).code == f.ErrorCode.MALFORMED_FRAME
    await link.send(f.PingFrame(b"stillok!"))
    assert isinstance(await link.expect(f.PongFrame), f.PongFrame)
    await link.close()


async def test_garbage_transport_message_closes_the_link(world: World) -> None:
    link = await world.paris.connect(world.relay)
    await link.send_raw(os.urandom(64))
    assert await link.closed_code() == f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]
    async with httpx.AsyncClient(base_url=world.relay.url) as http:
        assert (await http.get("/healthz")).status_code == 200


# -- enrollment -------------------------------------------------------------------------------


async def test_enrollment_code_is_single_use(relay: RunningRelay) -> None:
    admin = Admin(relay.url, relay.admin_token)
    _cid, code = await admin.add_cell("lisbon")
    await RawCell("lisbon").enroll(relay, code)
    with pytest.raises(AssertionError, match="code_used"):
        await RawCell("lisbon-2").enroll(relay, code)
    await admin.aclose()


async def test_enrollment_with_unknown_code_refused(relay: RunningRelay) -> None:
    admin = Admin(relay.url, relay.admin_token)
    _cid, code = await admin.add_cell("oslo")
    forged = code[:-4] + ("aaaa" if not code.endswith("aaaa") else "bbba")
    with pytest.raises(AssertionError, match="bad_code"):
        await RawCell("oslo").enroll(relay, forged)
    await admin.aclose()


async def test_health_endpoints(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.url) as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["database"] == "reachable"


async def test_idle_link_is_pinged_then_closed(tmp_path: Path) -> None:
    """SPEC.md §6.3: the relay pings a quiet link and closes one that stays silent."""
    with running_relay(tmp_path, ping_interval_seconds=0.2, idle_timeout_seconds=0.7) as relay:
        admin = Admin(relay.url, relay.admin_token)
        cell = RawCell("quiet")
        await cell.enroll(relay, (await admin.add_cell("quiet"))[1])
        link = await cell.connect(relay)
        assert isinstance(await link.expect(f.PingFrame), f.PingFrame)
        assert (await link.expect(f.ErrorFrame, timeout=3)).code == f.ErrorCode.IDLE_TIMEOUT
        assert await link.closed_code() == f.CLOSE_CODES[f.ErrorCode.IDLE_TIMEOUT]
        await admin.aclose()


async def test_unauthenticated_connection_limit(tmp_path: Path) -> None:
    """Connections that have not finished the handshake are capped; the relay stays up."""
    with running_relay(tmp_path, max_unauthenticated=2, handshake_timeout_seconds=3) as relay:
        idle = [await websockets.connect(relay.ws_url, compression=None) for _ in range(2)]
        await asyncio.sleep(0.2)
        # Refused with the documented rate_limited close code (SPEC.md §11.7), not an HTTP 403.
        async with websockets.connect(relay.ws_url, compression=None) as third:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(third.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == f.CLOSE_CODES[f.ErrorCode.RATE_LIMITED]
        for ws in idle:
            await ws.close()
        async with httpx.AsyncClient(base_url=relay.url) as http:
            assert (await http.get("/healthz")).status_code == 200


async def test_resend_after_delivery_is_acknowledged_not_redelivered(world: World) -> None:
    """SPEC.md M-REL-4: after the recipient ACKed (and the envelope was deleted), a late resend
    of the same message id gets the same ACCEPTED and is neither stored nor delivered again."""
    paris, berlin = await world.paris.connect(world.relay), await world.berlin.connect(world.relay)
    bundle = await paris.fetch_bundle(world.berlin)
    _mid, data = world.paris.seal(world.berlin, "exactly once", bundle=bundle)
    await paris.send(f.SendFrame(data))
    first = await paris.expect(f.AcceptedFrame)
    deliver = await berlin.expect(f.DeliverFrame)
    await berlin.send(f.AckFrame(deliver.relay_seq))
    await berlin.close()
    await asyncio.sleep(0.3)  # the ACK's batch commits
    await paris.send(f.SendFrame(data))  # e.g. the sender never saw ACCEPTED and retries
    assert await paris.expect(f.AcceptedFrame) == first
    berlin = await world.berlin.connect(world.relay)
    with pytest.raises(TimeoutError):
        await berlin.expect(f.DeliverFrame, timeout=0.5)
    await berlin.close()
    await paris.close()


async def test_peer_revoked_while_offline_is_told_on_connect(world: World) -> None:
    """SPEC.md M-REL-16: a peer that was offline when a cell was revoked learns it when it
    next connects."""
    await world.admin.action("berlin", "revoke")
    paris = await world.paris.connect(world.relay)
    revoked = await paris.expect(f.PeerRevokedFrame)
    assert revoked.cell_id == world.berlin.cell_id
    await paris.close()


async def test_list_peers(world: World) -> None:
    """SPEC.md M-REL-19: PEERS lists exactly the paired cells with status and identity."""
    paris = await world.paris.connect(world.relay)
    await paris.send(f.ListPeersFrame(41))
    peers = await paris.expect(f.PeersFrame)
    assert peers.request_id == 41
    assert [(p.name, p.status, p.cell_id, p.identity) for p in peers.peers] == [
        ("berlin", "active", world.berlin.cell_id, bytes(world.berlin.identity.public))
    ]
    rome = await world.rome.connect(world.relay)
    await rome.send(f.ListPeersFrame(1))
    assert (await rome.expect(f.PeersFrame)).peers == ()
    await paris.close()
    await rome.close()


def test_packed_deliver_frame_matches_the_codec() -> None:
    """The relay packs DELIVER frames by hand on the hot path; they must be the codec's bytes."""
    from liaison.server.relay import deliver_frame

    envelope = bytes(range(256)) * 16
    packed = deliver_frame(2**40 + 7, bytes(range(16)), 1_790_000_000_123, envelope)
    assert packed == f.encode_frame(
        f.DeliverFrame(2**40 + 7, bytes(range(16)), 1_790_000_000_123, envelope)
    )


async def test_hello_with_a_payload_is_refused(world: World) -> None:
    """SPEC.md M-LINK-3: a v1 hello carries an empty payload; anything else is refused."""
    initiator = LinkInitiator(world.paris.link_key.private_bytes(),
                              bytes(world.relay.relay_key.public))  # fmt: skip
    code = await _raw_hello(world.relay, initiator.write_hello(b"extra"))
    assert code == f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]


async def _notices(link: Link, count: int) -> dict[bytes, f.ErrorFrame]:
    """The next ``count`` per-message ERROR frames on ``link`` (PEER_REVOKED skipped)."""
    got: dict[bytes, f.ErrorFrame] = {}
    while len(got) < count:
        frame = await link.recv()
        if isinstance(frame, f.ErrorFrame):
            got[frame.ref] = frame
        elif not isinstance(frame, f.PingFrame | f.PongFrame | f.PrekeysLowFrame
                            | f.PeerRevokedFrame):  # fmt: skip
            raise AssertionError(f"expected an ERROR notice, got {frame!r}")
    return got


async def _queue_for_berlin(world: World, paris: Link, count: int) -> list[bytes]:
    bundle = await paris.fetch_bundle(world.berlin)
    ids = []
    for i in range(count):
        message_id, data = world.paris.seal(world.berlin, f"m{i}", bundle=bundle)
        await paris.send(f.SendFrame(data))
        assert (await paris.expect(f.AcceptedFrame)).message_id == message_id
        ids.append(message_id)
    return ids


async def test_a_linked_sender_is_told_at_once_when_its_queued_messages_are_purged(
    world: World,
) -> None:
    """SPEC.md M-REL-20: revoking berlin deletes what was queued for it, and paris, linked,
    gets ERROR revoked with each accepted message's id at once (not only PEER_REVOKED)."""
    paris = await world.paris.connect(world.relay)
    ids = await _queue_for_berlin(world, paris, 3)
    await world.admin.action("berlin", "revoke")
    notices = await _notices(paris, 3)
    assert set(notices) == set(ids)
    assert {n.code for n in notices.values()} == {f.ErrorCode.REVOKED}
    assert all("revoked" in n.reason for n in notices.values())
    await paris.close()
    # Taken once: the next link of paris is not told again.
    again = await world.paris.connect(world.relay)
    assert isinstance(await again.expect(f.PeerRevokedFrame), f.PeerRevokedFrame)
    with pytest.raises(TimeoutError):
        await again.expect(f.ErrorFrame, timeout=0.5)
    await again.close()


async def test_an_offline_sender_is_told_of_purged_messages_when_it_connects(
    world: World,
) -> None:
    """SPEC.md M-REL-20: the notices are stored with the purge and handed over on connect."""
    paris = await world.paris.connect(world.relay)
    ids = await _queue_for_berlin(world, paris, 2)
    await paris.close()
    await world.admin.action("berlin", "revoke")
    paris = await world.paris.connect(world.relay)
    notices = await _notices(paris, 2)
    assert set(notices) == set(ids)
    assert {n.code for n in notices.values()} == {f.ErrorCode.REVOKED}
    await paris.close()
