"""A sender learns that the relay dropped its accepted messages (SPEC.md M-REL-20, M-CLI-7).

Real relay under uvicorn (``tests.server.harness.running_relay``), real cells through the SDK:
paris sends to berlin while berlin is offline (the relay accepts and queues), then the admin
revokes berlin, which deletes berlin's queue. paris's outbox must not stay ``accepted``: it
shows ``failed`` with ``revoked``, whether paris was linked at the revocation (told at once)
or away (told when it next connects). The human ``outbox`` line says "recipient revoked".
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from liaison.client import Cell
from tests.server.harness import Admin, RunningRelay, running_relay

from .clikit import LIAISON


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    with running_relay(tmp_path) as running:
        yield running


@pytest.fixture
async def admin(relay: RunningRelay) -> AsyncIterator[Admin]:
    client = Admin(relay.url, relay.admin_token)
    try:
        yield client
    finally:
        await client.aclose()


async def _cells(relay: RunningRelay, admin: Admin, root: Path) -> tuple[Path, Path]:
    homes = []
    for name in ("paris", "berlin"):
        _cell_id, code = await admin.add_cell(name)
        home = root / name
        await Cell.enroll(home, server=relay.url, code=code)
        homes.append(home)
    await admin.pair("paris", "berlin")
    return homes[0], homes[1]


async def _queue(paris: Cell, count: int) -> list[str]:
    sent = [await paris.send("berlin", f"queued {i}") for i in range(count)]
    for message_id in sent:
        assert await paris.wait_status(message_id, "accepted", timeout=10) == "accepted"
    return sent


async def test_a_linked_sender_sees_its_queued_messages_failed_when_the_recipient_is_revoked(
    relay: RunningRelay, admin: Admin, tmp_path: Path
) -> None:
    paris_home, _berlin_home = await _cells(relay, admin, tmp_path)
    async with Cell.open(paris_home, backoff=(0.05, 0.5)) as paris:
        sent = await _queue(paris, 2)
        await admin.action("berlin", "revoke")
        for message_id in sent:
            assert await paris.wait_status(message_id, "failed", timeout=10) == "failed"
        entries = {e.message_id: e for e in paris.outbox()}
        assert [(entries[m].status, entries[m].error) for m in sent] == [("failed", "revoked")] * 2
        assert paris.peer("berlin").status == "revoked"


async def test_an_offline_sender_learns_it_on_its_next_connect_and_the_cli_says_so(
    relay: RunningRelay, admin: Admin, tmp_path: Path
) -> None:
    paris_home, _berlin_home = await _cells(relay, admin, tmp_path)
    async with Cell.open(paris_home, backoff=(0.05, 0.5)) as paris:
        [message_id] = await _queue(paris, 1)
    await admin.action("berlin", "revoke")
    async with Cell.open(paris_home, backoff=(0.05, 0.5)) as paris:
        assert await paris.wait_status(message_id, "failed", timeout=10) == "failed"
    shown = subprocess.run(
        [LIAISON, "cell", "--home", str(paris_home), "outbox"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr
    [line] = [line for line in shown.stdout.splitlines() if message_id in line]
    assert line.endswith("failed (recipient revoked)")
