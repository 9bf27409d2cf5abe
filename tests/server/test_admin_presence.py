"""``GET /admin/cells`` and ``/admin/cells/{name}``: online / last seen from real links, and the
enrollment code's expiry for pending cells (issue #10, "expected": admin cell list/show)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from liaison.server.presence import STALE_FACTOR, is_online
from tests.server.harness import Admin, RawCell, RunningRelay, running_relay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    with running_relay(tmp_path, presence_refresh_seconds=0.5) as running:
        yield running


@pytest.fixture
async def admin(relay: RunningRelay) -> AsyncIterator[Admin]:
    client = Admin(relay.url, relay.admin_token)
    try:
        yield client
    finally:
        await client.aclose()


async def _shown(admin: Admin, name: str) -> dict[str, Any]:
    response = await admin.client.get(f"/admin/cells/{name}")
    response.raise_for_status()
    shown: dict[str, Any] = response.json()
    return shown


async def _until(admin: Admin, name: str, online: bool) -> dict[str, Any]:
    """The cell's detail once ``online`` is as asked (a generous deadline, no fixed sleep)."""
    async with asyncio.timeout(20):
        while True:
            shown = await _shown(admin, name)
            if shown["online"] is online:
                return shown
            await asyncio.sleep(0.05)


async def test_online_and_last_seen_follow_the_link(relay: RunningRelay, admin: Admin) -> None:
    created = (await admin.client.post("/admin/cells", json={"name": "paris"})).json()
    pending = await _shown(admin, "paris")
    assert (pending["online"], pending["last_seen_at"]) == (False, None)
    assert pending["code_expires_at"] == created["code_expires_at"]

    paris = RawCell("paris")
    await paris.enroll(relay, created["enrollment_code"])
    enrolled = await _shown(admin, "paris")
    assert enrolled["code_expires_at"] is None  # used: nothing pending any more

    link = await paris.connect(relay)
    linked = await _until(admin, "paris", True)
    first_seen = datetime.fromisoformat(linked["last_seen_at"])
    # While linked, the node refreshes last_seen (here every 0.5 s).
    async with asyncio.timeout(20):
        while datetime.fromisoformat((await _shown(admin, "paris"))["last_seen_at"]) <= first_seen:
            await asyncio.sleep(0.05)
    [listed] = (await admin.client.get("/admin/cells")).json()
    assert (listed["name"], listed["online"]) == ("paris", True)

    await link.close()
    gone = await _until(admin, "paris", False)
    assert datetime.fromisoformat(gone["last_seen_at"]) > first_seen


async def test_a_replaced_link_does_not_mark_the_cell_offline(
    relay: RunningRelay, admin: Admin
) -> None:
    """The older link's close clears only its own mark: the newer link stays online."""
    _cell_id, code = await admin.add_cell("berlin")
    berlin = RawCell("berlin")
    await berlin.enroll(relay, code)
    first = await berlin.connect(relay)
    await _until(admin, "berlin", True)
    second = await berlin.connect(relay)
    assert await first.closed_code() > 0  # replaced
    for _ in range(3):  # a few flushes later it is still online
        await asyncio.sleep(0.6)
        assert (await _shown(admin, "berlin"))["online"] is True
    await second.close()
    await _until(admin, "berlin", False)


def test_a_link_its_node_stopped_refreshing_reads_offline() -> None:
    refresh = 60.0
    stale_after_ms = int(STALE_FACTOR * refresh * 1000)
    assert is_online(1_000, 5_000, 5_000 + stale_after_ms, refresh)
    assert not is_online(1_000, 5_000, 5_001 + stale_after_ms, refresh)
    assert not is_online(None, 5_000, 5_000, refresh)
    assert not is_online(1_000, None, 5_000, refresh)
