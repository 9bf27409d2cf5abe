"""The SDK end to end: the real relay under uvicorn on a free port, real WebSockets, real HTTP.

Two (or three) cell homes enroll with codes from the admin API and talk through the relay
exactly as deployed cells do (``tests.server.harness.running_relay``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from liaison.client import (
    BadCode,
    Cell,
    CellRevoked,
    CorruptState,
    KeyChanged,
    NotPaired,
    PeerRevoked,
    RelayUnreachable,
    UnknownPeer,
    WebSocketTransport,
    WrongPassphrase,
)
from liaison.client.state import STATE_FILE
from liaison.protocol import frames as f
from liaison.protocol.envelope import EnvelopeKind, Precedence, Routing
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from tests.cells import take
from tests.server.harness import Admin, RunningRelay, free_port, running_relay

from .faults import CutBeforeAck, cell_keys, expect, impersonate


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    with running_relay(tmp_path, expiry_sweep_seconds=0.5) as running:
        yield running


@dataclass
class Net:
    relay: RunningRelay
    admin: Admin
    root: Path
    restarted: list[RunningRelay] = field(default_factory=list)

    async def cell(self, name: str, *, pair_with: tuple[str, ...] = (),
                   passphrase: str | None = None) -> Path:  # fmt: skip
        _cell_id, code = await self.admin.add_cell(name)
        for other in pair_with:
            await self.admin.pair(name, other)
        home = self.root / name
        await Cell.enroll(home, server=self.relay.url, code=code, passphrase=passphrase)
        return home

    def open(self, home: Path, **options: Any) -> Cell:
        options.setdefault("backoff", (0.05, 0.5))
        return Cell.open(home, **options)

    def restart_relay(self) -> None:
        self.relay = self.relay.restarted()
        self.restarted.append(self.relay)


@pytest.fixture
async def net(relay: RunningRelay, tmp_path: Path) -> AsyncIterator[Net]:
    admin = Admin(relay.url, relay.admin_token)
    state = Net(relay, admin, tmp_path / "homes")
    try:
        yield state
    finally:
        await admin.aclose()
        for again in state.restarted:
            again.stop()


async def test_offline_precedences_receipts_and_restarts(net: Net) -> None:
    """Four precedences sent while berlin is offline arrive FLASH first; delivery and read
    receipts move paris's statuses; both cells restart mid-conversation and carry on."""
    paris_home = await net.cell("paris")
    berlin_home = await net.cell("berlin", pair_with=("paris",))
    sent: dict[str, str] = {}
    async with net.open(paris_home) as paris:
        for precedence in ("routine", "priority", "immediate", "flash"):
            sent[precedence] = await paris.send("berlin", f"{precedence} traffic",
                                                precedence=precedence, ttl=600)  # fmt: skip
        for message_id in sent.values():
            assert await paris.wait_status(message_id, "accepted", timeout=5) == "accepted"
    async with net.open(berlin_home) as berlin:
        messages = await take(berlin, 4)
        assert [m.precedence for m in messages] == ["flash", "immediate", "priority", "routine"]
        assert [m.body for m in messages] == [f"{m.precedence} traffic" for m in messages]
        assert {m.id for m in messages} == set(sent.values())
        assert {m.sender for m in messages} == {"paris"}
        for message in messages[:2]:
            await message.mark_read()
    async with net.open(paris_home) as paris:
        statuses = {p: await paris.wait_status(m, "delivered", timeout=5) for p, m in sent.items()}
        assert statuses == {"flash": "read", "immediate": "read", "priority": "delivered",
                            "routine": "delivered"}  # fmt: skip
        assert paris.safety_number("berlin") != ""
    # Mid-conversation restarts, both directions, with statuses all the way to read.
    for round_ in range(2):
        async with net.open(paris_home) as paris, net.open(berlin_home) as berlin:
            assert paris.safety_number("berlin") == berlin.safety_number("paris")
            question = await paris.send("berlin", f"question {round_}")
            [got] = await take(berlin, 1)
            assert got.body == f"question {round_}"
            await got.mark_read()
            answer = await berlin.send("paris", f"answer {round_}", precedence="flash")
            [back] = await take(paris, 1)
            assert (back.body, back.precedence) == (f"answer {round_}", "flash")
            assert await paris.wait_status(question, "read", timeout=5) == "read"
            assert await berlin.wait_status(answer, "delivered", timeout=5) == "delivered"


async def test_duplicate_delivery_is_yielded_once(net: Net) -> None:
    """The connection drops between storing a message and sending its ACK; the relay delivers
    it again on the next link; the cell yields it once."""
    paris_home = await net.cell("paris")
    berlin_home = await net.cell("berlin", pair_with=("paris",))
    async with net.open(paris_home) as paris:
        message_id = await paris.send("berlin", "once")
        await paris.wait_status(message_id, "accepted", timeout=5)
    cutting = CutBeforeAck(WebSocketTransport.for_server(net.relay.url))
    async with net.open(berlin_home, transport=cutting) as berlin:
        [message] = await take(berlin, 1)
        assert message.id == message_id
        deadline = time.monotonic() + 10
        while cutting.connects < 2 or not berlin.online:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await take(berlin, 1, timeout=0.5)
        assert cutting.cuts == 0
        assert [m.id for m in berlin.inbox()] == [message_id]
    async with net.open(paris_home) as paris:
        assert await paris.wait_status(message_id, "delivered", timeout=5) == "delivered"


async def test_key_change_raises_until_accepted(net: Net, tmp_path: Path) -> None:
    """The relay starts serving another identity for berlin: paris refuses to send
    (KeyChanged) until its operator accepts the new key."""
    paris_home = await net.cell("paris")
    berlin_home = await net.cell("berlin", pair_with=("paris",))
    async with net.open(paris_home) as paris:
        await paris.send("berlin", "hello")
        old_number = paris.safety_number("berlin")
    identity = IdentityKeyPair.generate()
    spk, kem = X25519KeyPair.generate(), KemKeyPair.generate()
    berlin_id = cell_keys(berlin_home)[1]
    with sqlite3.connect(tmp_path / "relay.db", timeout=10) as db:
        db.execute("UPDATE cells SET identity_key = ? WHERE id = ?",
                   (bytes(identity.public), berlin_id))  # fmt: skip
        db.execute(
            "UPDATE signed_prekeys SET spk_public = ?, spk_signature = ?, kem_public = ?, "
            "kem_signature = ? WHERE cell_id = ?",
            (bytes(spk.public), SignedPrekey.create(identity, 1, spk).signature,
             bytes(kem.public), SignedKemPrekey.create(identity, 1, kem).signature, berlin_id),
        )  # fmt: skip
    db.close()
    async with net.open(paris_home) as paris:
        assert paris.peer("berlin").key_changed
        with pytest.raises(KeyChanged):
            await paris.send("berlin", "blocked")
        with pytest.raises(KeyChanged):
            await paris.verify("berlin")
        assert paris.safety_number("berlin", new_key=True) != old_number
        await paris.verify("berlin", accept_new_key=True)
        assert paris.peer("berlin").verified
        message_id = await paris.send("berlin", "to the accepted key")
        assert await paris.wait_status(message_id, "accepted", timeout=5) == "accepted"


async def test_unknown_unpaired_and_revoked_peers(net: Net) -> None:
    paris_home = await net.cell("paris")
    berlin_home = await net.cell("berlin", pair_with=("paris",))
    rome_home = await net.cell("rome")
    async with net.open(paris_home) as paris, net.open(berlin_home) as berlin:
        with pytest.raises(UnknownPeer):
            await paris.send("madrid", "hello")
        with pytest.raises(UnknownPeer):
            await paris.send("rome", "hello")  # exists, but the relay does not say so
        with pytest.raises(NotPaired):
            await paris.send(cell_keys(rome_home)[1].hex(), "hello")
        await paris.send("berlin", "last words")
        await take(berlin, 1)
        await net.admin.action("berlin", "revoke")
        with pytest.raises(CellRevoked):
            await take(berlin, 1)
        deadline = time.monotonic() + 5
        while paris.peer("berlin").status != "revoked":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        with pytest.raises(PeerRevoked):
            await paris.send("berlin", "anyone there?")


async def test_relay_down(net: Net, tmp_path: Path) -> None:
    """Enrolling against a dead address is RelayUnreachable; sends while the relay is down are
    queued and delivered once it is back."""
    dead = f"http://127.0.0.1:{free_port()}"
    _cell_id, code = await net.admin.add_cell("lisbon")
    with pytest.raises(RelayUnreachable):
        await Cell.enroll(tmp_path / "lisbon", server=dead, code=code)
    paris_home = await net.cell("paris")
    berlin_home = await net.cell("berlin", pair_with=("paris",))
    async with net.open(paris_home) as paris:
        await paris.send("berlin", "while up")
        await asyncio.to_thread(net.relay.stop)
        while paris.online:
            await asyncio.sleep(0.05)
        queued = await paris.send("berlin", "while down", precedence="flash")
        assert await paris.status(queued) == "queued"
        await asyncio.to_thread(net.restart_relay)
        assert await paris.wait_status(queued, "accepted", timeout=10) == "accepted"
    async with net.open(berlin_home) as berlin:
        assert [m.body for m in await take(berlin, 2)] == ["while down", "while up"]


async def test_wrong_passphrase_and_corrupted_state(net: Net) -> None:
    home = await net.cell("paris", passphrase="correct horse")
    with pytest.raises(WrongPassphrase):
        async with net.open(home, passphrase="wrong"):
            pass
    async with net.open(home, passphrase="correct horse") as paris:
        assert paris.online
    state = home / STATE_FILE
    data = bytearray(state.read_bytes())
    data[:100] = os.urandom(100)
    state.write_bytes(bytes(data))
    with pytest.raises(CorruptState):
        async with net.open(home, passphrase="correct horse"):
            pass
    with pytest.raises(BadCode) as refused:
        await Cell.enroll(net.root / "x", server=net.relay.url, code="ln1-aaaaaa")
    assert refused.value.reason == "malformed"


async def test_an_envelope_that_does_not_open_is_acked_and_reported(net: Net) -> None:
    """Garbage from a paired cell is recorded as a failure and acknowledged (M-CLI-4); the
    channel keeps working."""
    paris_home = await net.cell("paris")
    berlin_home = await net.cell("berlin", pair_with=("paris",))
    berlin_id = cell_keys(berlin_home)[1]
    routing = Routing(EnvelopeKind.MESSAGE, berlin_id, os.urandom(16), Precedence.FLASH,
                      int(time.time()) + 60)  # fmt: skip
    link = await impersonate(WebSocketTransport.for_server(net.relay.url), paris_home)
    try:
        head = routing.encode()
        await link.send(f.SendFrame(head + os.urandom(4096 - len(head))))
        await expect(link, f.AcceptedFrame)
    finally:
        await link.close()
    async with net.open(paris_home) as paris, net.open(berlin_home) as berlin:
        await paris.send("berlin", "after the garbage")
        failed, good = await take(berlin, 2)
        assert (failed.id, failed.error, failed.body) == (
            routing.message_id.hex(), "decrypt_failed", None,
        )  # fmt: skip
        assert good.body == "after the garbage"
