"""Several relay nodes on one PostgreSQL database, with Redis or NATS as the bus (issue #6).

Every test starts real ``liaison server run`` processes (two or three) on the machine's
PostgreSQL and the machine's Redis or NATS (each test on a channel of its own), or on a bus
server of the test's own where the test restarts the bus. Cells are the real SDK (or raw
protocol cells where a test must forge what the SDK never does). Skipped, with the reason,
when PostgreSQL or the bus server is not there.

Where a test proves that the *bus* carried a hint, the fallback poll is set to 30 s, so only
the bus can explain a delivery within the test's timeout; where it proves the *fallback*, the
bus is dead and the poll runs every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from liaison.client import Cell, Message, WebSocketTransport
from liaison.client.transport import Transport
from liaison.protocol import frames as f
from tests.cells import take
from tests.server.harness import Admin, RawCell

from .clusterkit import (
    Cluster,
    FailoverTransport,
    Node,
    PrivateBus,
    bus_reason,
    metric,
    postgres_database,
    running_cluster,
)

pytestmark = pytest.mark.postgres

PRECEDENCES = ("flash", "immediate", "priority", "routine")
NO_FALLBACK = {"bus_fallback_seconds": "30"}


@pytest.fixture(params=["redis", "nats"])
def bus_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    reason = bus_reason(kind)
    if reason is not None:
        pytest.skip(reason)
    return kind


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


BUS_URLS = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}


@dataclass
class World:
    cluster: Cluster
    admin: Admin
    root: Path

    def node(self, index: int) -> Node:
        return self.cluster.nodes[index]

    async def enroll(self, name: str, node: int, *, pair_with: tuple[str, ...] = ()) -> Path:
        _cell_id, code = await self.admin.add_cell(name)
        for other in pair_with:
            await self.admin.pair(name, other)
        home = self.root / name
        url = self.node(node).url
        await Cell.enroll(home, server=url, code=code,
                          transport=WebSocketTransport.for_server(url))  # fmt: skip
        return home

    def open(self, home: Path, node: int | None = None, *, transport: Transport | None = None
             ) -> Cell:  # fmt: skip
        if transport is None:
            assert node is not None
            transport = WebSocketTransport.for_server(self.node(node).url)
        return Cell.open(home, transport=transport, backoff=(0.05, 0.5))


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path, pg_url: str, bus_url: str, size: int, **settings: str
) -> AsyncIterator[World]:
    with running_cluster(tmp_path / "cluster", pg_url, bus_url, size, **settings) as cluster:
        admin = Admin(cluster.nodes[0].url, cluster.admin_token)
        try:
            yield World(cluster, admin, tmp_path / "homes")
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            await admin.aclose()


def in_order(messages: list[Message]) -> None:
    """Per precedence, bodies ``<precedence> <i>`` arrive with ``i`` increasing."""
    last: dict[str, int] = {}
    for message in messages:
        assert isinstance(message.body, str)
        precedence, number = message.body.split()
        assert int(number) > last.get(precedence, -1), f"{message.body} out of order"
        last[precedence] = int(number)


# ---------------------------------------------------------------------------- cross-node


async def test_three_nodes_exchange_all_precedences_over_the_bus(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    """A ring of cells on three nodes: every message crosses nodes, in every precedence, and
    arrives well within the (disabled) fallback poll: the bus carried it to the recipient's
    node."""
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 3, **NO_FALLBACK) as w:
        names = ["alpha", "bravo", "charlie"]
        homes = [await w.enroll(n, i) for i, n in enumerate(names)]
        for i, name in enumerate(names):
            await w.admin.pair(name, names[(i + 1) % 3])
        cells = [w.open(home, i) for i, home in enumerate(homes)]
        async with contextlib.AsyncExitStack() as stack:
            for cell in cells:
                await stack.enter_async_context(cell)
            for cell in cells:
                await cell.refresh_peers()
            per_precedence = 3
            for i, cell in enumerate(cells):
                for n in range(per_precedence):
                    for precedence in PRECEDENCES:
                        await cell.send(names[(i + 1) % 3], f"{precedence} {n}",
                                        precedence=precedence, ttl=600)  # fmt: skip
            started = time.monotonic()
            for i, cell in enumerate(cells):
                got = await take(cell, per_precedence * 4, timeout=20)
                assert {m.sender for m in got} == {names[(i - 1) % 3]}
                assert len({m.id for m in got}) == len(got)
                in_order(got)
            assert time.monotonic() - started < 20
            # Each hint went through the bus server: every node both published and received.
            for node in w.cluster.nodes:
                assert metric(node, "liaison_bus_published_total") > 0
                assert metric(node, "liaison_bus_received_total") > 0


async def test_offline_queue_drained_by_another_node_in_precedence_order(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 2) as w:
        paris_home = await w.enroll("paris", 0)
        berlin_home = await w.enroll("berlin", 1, pair_with=("paris",))
        async with w.open(paris_home, 0) as paris:
            for n in range(2):
                for precedence in reversed(PRECEDENCES):
                    message_id = await paris.send("berlin", f"{precedence} {n}",
                                                  precedence=precedence, ttl=600)  # fmt: skip
                    await paris.wait_status(message_id, "accepted", timeout=10)
        async with w.open(berlin_home, 1) as berlin:
            got = await take(berlin, 8)
        assert [m.precedence for m in got] == [p for p in PRECEDENCES for _ in range(2)]
        in_order(got)


async def test_a_duplicate_sent_through_two_nodes_is_stored_once(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 2) as w:
        node0, node1 = w.node(0), w.node(1)
        sender, recipient = RawCell("sender"), RawCell("recipient")
        for cell, node in ((sender, node0), (recipient, node1)):
            _id, code = await w.admin.add_cell(cell.name)
            await cell.enroll(node, code)
        await w.admin.pair("sender", "recipient")
        link0 = await sender.connect(node0)
        bundle = await link0.fetch_bundle(recipient)
        message_id, envelope = sender.seal(recipient, "once", bundle=bundle)
        await link0.send(f.SendFrame(envelope))
        first = await link0.expect(f.AcceptedFrame)
        await link0.close()
        link1 = await sender.connect(node1)  # the same cell, now on the other node
        await link1.send(f.SendFrame(envelope))
        second = await link1.expect(f.AcceptedFrame)
        assert (first.message_id, second.message_id) == (message_id, message_id)
        assert first.relay_seq == second.relay_seq  # stored once, acknowledged twice
        inbound = await recipient.connect(node0)
        deliver = await inbound.expect(f.DeliverFrame, timeout=10)
        assert recipient.open(sender, deliver.envelope) == "once"
        await inbound.send(f.AckFrame(deliver.relay_seq))
        with pytest.raises(TimeoutError):
            await inbound.expect(f.DeliverFrame, timeout=1.5)  # nothing else, ever
        for link in (link1, inbound):
            await link.close()


async def test_a_newer_link_on_another_node_replaces_the_older_one(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 2, **NO_FALLBACK) as w:
        cell = RawCell("roamer")
        _id, code = await w.admin.add_cell("roamer")
        await cell.enroll(w.node(0), code)
        old = await cell.connect(w.node(0))
        new = await cell.connect(w.node(1))
        error = await old.expect(f.ErrorFrame, timeout=5)
        assert error.code == f.ErrorCode.REPLACED
        assert await old.closed_code() == f.CLOSE_CODES[f.ErrorCode.REPLACED]
        await new.send(f.PingFrame(b"still-up"))
        assert isinstance(await new.expect(f.PongFrame), f.PongFrame)
        await new.close()


async def test_revocation_through_any_node_disconnects_the_cell_within_a_second(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 2, **NO_FALLBACK) as w:
        victim, peer = RawCell("victim"), RawCell("peer")
        for cell in (victim, peer):
            _id, code = await w.admin.add_cell(cell.name)
            await cell.enroll(w.node(1), code)
        await w.admin.pair("victim", "peer")
        victim_link = await victim.connect(w.node(1))  # held by node 1 ...
        peer_link = await peer.connect(w.node(1))
        started = time.monotonic()
        await w.admin.action("victim", "revoke")  # ... revoked through node 0
        error = await victim_link.expect(f.ErrorFrame, timeout=5)
        assert error.code == f.ErrorCode.REVOKED
        assert time.monotonic() - started < 1.0
        told = await peer_link.expect(f.PeerRevokedFrame, timeout=5)
        assert told.cell_id == victim.cell_id
        again = await victim.connect(w.node(0))
        refused = await again.expect(f.ErrorFrame)
        assert refused.code == f.ErrorCode.REVOKED
        await peer_link.close()


async def test_a_revocation_through_one_node_tells_senders_linked_to_another(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    """SPEC.md M-REL-20 across nodes: the admin revokes the recipient through node 0; the
    sender, linked to node 1, is told of each purged envelope at once (the bus hint; the
    fallback poll is slowed to 30 s so it cannot be what delivers the notice)."""
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 2, **NO_FALLBACK) as w:
        sender, recipient = RawCell("sender"), RawCell("recipient")
        for cell in (sender, recipient):
            _id, code = await w.admin.add_cell(cell.name)
            await cell.enroll(w.node(1), code)
        await w.admin.pair("sender", "recipient")
        link = await sender.connect(w.node(1))
        bundle = await link.fetch_bundle(recipient)
        ids = set()
        for i in range(3):
            message_id, envelope = sender.seal(recipient, f"queued {i}", bundle=bundle)
            await link.send(f.SendFrame(envelope))
            await link.expect(f.AcceptedFrame)
            ids.add(message_id)
        await w.admin.action("recipient", "revoke")
        told: set[bytes] = set()
        async with asyncio.timeout(10):
            while len(told) < len(ids):
                frame = await link.recv(10)
                if isinstance(frame, f.ErrorFrame):
                    assert frame.code == f.ErrorCode.REVOKED
                    told.add(frame.ref)
        assert told == ids
        await link.close()


async def test_expiry_is_swept_by_one_node_and_the_sender_told_on_its_node(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    settings = {"expiry_sweep_seconds": "0.3"}
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 2, **settings) as w:
        sender, recipient = RawCell("sender"), RawCell("recipient")
        for cell in (sender, recipient):
            _id, code = await w.admin.add_cell(cell.name)
            await cell.enroll(w.node(0), code)
        await w.admin.pair("sender", "recipient")
        sweepers = [metric(n, "liaison_expiry_sweeper") for n in w.cluster.nodes]
        assert sorted(sweepers) == [0.0, 1.0], "exactly one node sweeps"
        other = w.node(sweepers.index(0.0))  # the sender sits on the node that does not sweep
        link = await sender.connect(other)
        bundle = await link.fetch_bundle(recipient)
        count = 5
        ids = set()
        for i in range(count):
            message_id, envelope = sender.seal(recipient, f"short {i}", ttl=2, bundle=bundle)
            await link.send(f.SendFrame(envelope))
            await link.expect(f.AcceptedFrame)
            ids.add(message_id)
        told: set[bytes] = set()
        while len(told) < count:
            frame = await link.expect(f.ExpiredFrame, timeout=10)
            assert frame.recipient_cell_id == recipient.cell_id
            told.add(frame.message_id)
        assert told == ids
        expired = [metric(n, "liaison_envelopes_expired_total") for n in w.cluster.nodes]
        assert sorted(expired) == [0.0, float(count)], "purged once, by the sweeper alone"
        await link.close()


async def test_sweeper_role_passes_on_when_its_node_dies(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    settings = {"expiry_sweep_seconds": "0.2"}
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 2, **settings) as w:
        sweepers = [metric(n, "liaison_expiry_sweeper") for n in w.cluster.nodes]
        assert sorted(sweepers) == [0.0, 1.0]
        w.cluster.kill(sweepers.index(1.0))
        survivor = w.node(sweepers.index(0.0))
        deadline = time.monotonic() + 10
        while metric(survivor, "liaison_expiry_sweeper") != 1.0:
            assert time.monotonic() < deadline, "the surviving node never became the sweeper"
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------- failures


async def _stream(sender: Cell, to: str, count: int, pause: float) -> list[str]:
    sent = []
    for n in range(count):
        precedence = PRECEDENCES[n % 4]
        sent.append(await sender.send(to, f"{precedence} {n}", precedence=precedence, ttl=600))
        await asyncio.sleep(pause)
    return sent


async def test_killed_node_cells_reconnect_elsewhere_and_nothing_is_lost_or_doubled(
    tmp_path: Path, pg_url: str, bus_kind: str
) -> None:
    async with world(tmp_path, pg_url, BUS_URLS[bus_kind], 3) as w:
        paris_home = await w.enroll("paris", 0)
        berlin_home = await w.enroll("berlin", 0, pair_with=("paris",))
        nodes = w.cluster.nodes
        paris_lb, berlin_lb = FailoverTransport(nodes), FailoverTransport(nodes)
        count = 120
        async with w.open(paris_home, transport=paris_lb) as paris, \
                w.open(berlin_home, transport=berlin_lb) as berlin:  # fmt: skip
            await paris.refresh_peers()
            stream = asyncio.create_task(_stream(paris, "berlin", count, 0.01))
            received: list[Message] = []

            async def receive() -> None:
                async with contextlib.aclosing(berlin.messages()) as messages:
                    async for message in messages:
                        received.append(message)
                        if len(received) == count:
                            return

            reader = asyncio.create_task(receive())
            while len(received) < count // 3:
                await asyncio.sleep(0.01)
            assert (paris_lb.used[-1], berlin_lb.used[-1]) == (0, 0)
            w.cluster.kill(0)  # mid-stream, with no warning
            sent = await asyncio.wait_for(stream, 60)
            await asyncio.wait_for(reader, 60)
            for message_id in sent:
                await paris.wait_status(message_id, "delivered", timeout=30)
        assert 0 not in (paris_lb.used[-1], berlin_lb.used[-1]), "both moved to another node"
        assert len(received) == count
        assert sorted(m.id for m in received) == sorted(sent)  # nothing lost, nothing doubled
        in_order(received)


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_bus_restart_mid_stream_falls_back_to_polling(
    tmp_path: Path, pg_url: str, kind: str
) -> None:
    """Senders on node 0, recipients on node 1; the bus server is killed mid-stream and comes
    back later: delivery never stops (the fallback poll), hints resume after the restart."""
    (tmp_path / "bus").mkdir()
    bus = PrivateBus(kind, tmp_path / "bus")
    bus.start()
    try:
        async with world(tmp_path, pg_url, bus.url, 2, bus_fallback_seconds="0.5") as w:
            paris_home = await w.enroll("paris", 0)
            berlin_home = await w.enroll("berlin", 1, pair_with=("paris",))
            async with w.open(paris_home, 0) as paris, w.open(berlin_home, 1) as berlin:
                await paris.refresh_peers()
                first = await paris.send("berlin", "flash 0", precedence="flash", ttl=600)
                [got] = await take(berlin, 1)
                assert got.id == first
                bus.kill()
                downtime = []
                for n in range(1, 11):
                    started = time.monotonic()
                    await paris.send("berlin", f"flash {n}", precedence="flash", ttl=600)
                    [got] = await take(berlin, 1, timeout=15)
                    assert got.body == f"flash {n}"
                    downtime.append(time.monotonic() - started)
                assert max(downtime) < 5.0  # the poll delivers: about one interval each
                bus.start()
                node1 = w.node(1)
                deadline = time.monotonic() + 20
                while httpx.get(f"{node1.url}/readyz", timeout=5).json()["bus"] != "connected":
                    assert time.monotonic() < deadline, "the bus never reconnected"
                    await asyncio.sleep(0.2)
                received_before = metric(node1, "liaison_bus_received_total")
                for n in range(11, 16):
                    await paris.send("berlin", f"flash {n}", precedence="flash", ttl=600)
                    [got] = await take(berlin, 1, timeout=15)
                    assert got.body == f"flash {n}"
                deadline = time.monotonic() + 10
                while metric(node1, "liaison_bus_received_total") <= received_before:
                    assert time.monotonic() < deadline, "no hint arrived after the bus restart"
                    await asyncio.sleep(0.2)
    finally:
        bus.kill()


async def test_bus_hints_that_name_unknown_or_malformed_things_are_ignored(
    tmp_path: Path, pg_url: str
) -> None:
    """Anyone who can publish on the bus cannot make a node do what the store does not say: a
    forged ``status`` hint makes the node re-read the store (the cell stays linked), garbage
    is dropped, and the node stays healthy."""
    reason = bus_reason("redis")
    if reason is not None:
        pytest.skip(reason)
    import redis.asyncio as aioredis

    async with world(tmp_path, pg_url, BUS_URLS["redis"], 1) as w:
        cell = RawCell("steady")
        _id, code = await w.admin.add_cell("steady")
        await cell.enroll(w.node(0), code)
        link = await cell.connect(w.node(0))
        client = aioredis.Redis.from_url(BUS_URLS["redis"])
        try:
            channel = w.cluster.channel
            forged = b'{"k":"status","n":"x","s":"revoked","c":"%s"}' % cell.cell_id.hex().encode()
            junks = [b"not json", b"[]", b'{"k":"status","n":"x"}', forged,
                     b'{"k":"link","n":"x","c":[1,2]}', b'{"k":"nonsense","n":"x"}',
                     b"D" + bytes(8) + b"a truncated delivery batch"]  # fmt: skip
            for junk in junks:
                await client.publish(channel, junk)
            await asyncio.sleep(1.0)  # time for the node to act on them
            await link.send(f.PingFrame(b"alive?!!"))
            assert isinstance(await link.expect(f.PongFrame, timeout=5), f.PongFrame)
            assert metric(w.node(0), "liaison_bus_received_total") >= 6
        finally:
            await client.aclose()
        assert httpx.get(f"{w.node(0).url}/healthz", timeout=5).status_code == 200
        await link.close()
