"""The bus choice, ``/metrics`` and ``/readyz`` on a single node (the cluster itself is tested
in ``tests/cluster`` against real PostgreSQL, Redis and NATS)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from liaison.protocol import frames as f
from liaison.protocol.envelope import Precedence
from liaison.server.bus import BusError, MemoryBus, NatsBus, RedisBus, bus_kind, create_bus
from tests.client.clikit import LIAISON
from tests.server.harness import Admin, RawCell, running_relay


@pytest.mark.parametrize(
    ("url", "kind"),
    [("memory://", "memory"), ("redis://127.0.0.1:6379/0", "redis"),
     ("rediss://h:1", "redis"), ("nats://127.0.0.1:4222", "nats")],
)  # fmt: skip
def test_bus_kind_by_scheme(url: str, kind: str) -> None:
    assert bus_kind(url) == kind


@pytest.mark.parametrize("url", ["", "memory", "http://x", "kafka://x:1", "redis:/x"])
def test_unknown_bus_urls_are_refused(url: str) -> None:
    with pytest.raises(BusError, match="LIAISON_BUS_URL must start with"):
        bus_kind(url)


async def test_create_bus_builds_the_named_kind() -> None:
    assert isinstance(create_bus("memory://"), MemoryBus)
    assert isinstance(create_bus("nats://127.0.0.1:1", "x"), NatsBus)
    redis_bus = create_bus("redis://127.0.0.1:1/0", "chan")
    assert isinstance(redis_bus, RedisBus)
    assert redis_bus.channel == "chan"
    await redis_bus.close()


def test_relay_refuses_to_start_with_a_bad_bus_url(tmp_path: Path) -> None:
    result = subprocess.run(
        [LIAISON, "server", "run", "--database", f"sqlite+aiosqlite:///{tmp_path}/r.db",
         "--key-file", str(tmp_path / "k"), "--bus", "kafka://x:1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "LIAISON_BUS_URL must start with" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "k").exists()  # refused before anything was created


async def test_metrics_and_readyz_on_one_node(tmp_path: Path) -> None:
    """``/metrics`` counts what happened (a stored envelope shows in the queue depth and the
    commit histograms; a delivered one in the wait histogram) and names nobody."""
    with running_relay(tmp_path) as relay:
        admin = Admin(relay.url, relay.admin_token)
        try:
            cell_id, code_a = await admin.add_cell("secret-name")
            _other, code_b = await admin.add_cell("other")
            await admin.pair("secret-name", "other")
        finally:
            await admin.aclose()
        sender, recipient = RawCell("secret-name"), RawCell("other")
        await sender.enroll(relay, code_a)
        await recipient.enroll(relay, code_b)
        link = await sender.connect(relay)
        bundle = await link.fetch_bundle(recipient)
        _mid, envelope = sender.seal(recipient, "hello", precedence=Precedence.FLASH,
                                     bundle=bundle)  # fmt: skip
        await link.send(f.SendFrame(envelope))
        await link.expect(f.AcceptedFrame)
        async with httpx.AsyncClient(base_url=relay.url) as http:
            queued = (await http.get("/metrics")).text
        assert 'liaison_queue_depth{precedence="flash"} 1' in queued
        assert 'liaison_queue_depth{precedence="routine"} 0' in queued
        inbound = await recipient.connect(relay)
        deliver = await inbound.expect(f.DeliverFrame)
        await inbound.send(f.AckFrame(deliver.relay_seq))
        await inbound.close()
        await link.close()
        async with httpx.AsyncClient(base_url=relay.url) as http:
            ready = (await http.get("/readyz")).json()
            assert ready == {"status": "ok", "database": "reachable", "bus": "connected"}
            response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.text
        series = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        assert series["liaison_envelopes_delivered_total"] == 1
        assert series["liaison_delivery_wait_seconds_count"] == 1
        assert series['liaison_delivery_wait_seconds_bucket{le="+Inf"}'] == 1
        assert series["liaison_commit_batch_items_count"] >= 1
        assert series["liaison_commit_seconds_count"] >= 1
        assert series["liaison_expiry_sweeper"] == 1  # the only node sweeps
        assert series["liaison_bus_connected"] == 1
        assert "liaison_writer_batches_total" in series
        # Nothing that names or identifies a cell.
        assert "secret-name" not in text
        assert cell_id.hex() not in text
