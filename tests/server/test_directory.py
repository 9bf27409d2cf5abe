"""The directory: the cell lifecycle table and cell/channel lookups on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert

from liaison.server import schema
from liaison.server.db import create_engine
from liaison.server.directory import (
    CellStatus,
    InvalidTransition,
    are_paired,
    cell_by_id,
    cell_by_link_key,
    cell_by_name,
    channel_pair,
    next_status,
    peers_of,
)


@pytest.mark.parametrize(
    ("status", "event", "expected"),
    [
        ("pending", "enroll", "active"),
        ("pending", "revoke", "revoked"),
        ("active", "suspend", "suspended"),
        ("active", "revoke", "revoked"),
        ("suspended", "resume", "active"),
        ("suspended", "revoke", "revoked"),
    ],
)
def test_allowed_transitions(status: str, event: str, expected: str) -> None:
    assert next_status(status, event) is CellStatus(expected)


@pytest.mark.parametrize(
    ("status", "event"),
    [
        ("pending", "suspend"),
        ("pending", "resume"),
        ("active", "enroll"),
        ("active", "resume"),
        ("suspended", "enroll"),
        ("suspended", "suspend"),
        ("revoked", "enroll"),
        ("revoked", "resume"),
        ("revoked", "revoke"),
    ],
)
def test_illegal_transitions(status: str, event: str) -> None:
    article = "an" if status == "active" else "a"  # "cannot resume an active cell"
    with pytest.raises(InvalidTransition, match=f"^cannot {event} {article} {status} cell"):
        next_status(status, event)


async def test_lookups(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
            base = {
                "created_at_ms": 1,
                "status_changed_at_ms": 1,
                "link_key": None,
                "identity_key": None,
                "enrolled_at_ms": None,
            }
            await conn.execute(
                insert(schema.cells),
                [
                    {
                        **base,
                        "id": b"\x02" * 16,
                        "name": "two",
                        "status": "active",
                        "link_key": b"L" * 32,
                        "identity_key": b"I" * 32,
                        "enrolled_at_ms": 2,
                    },
                    {**base, "id": b"\x01" * 16, "name": "one", "status": "pending"},
                    {**base, "id": b"\x03" * 16, "name": "three", "status": "suspended"},
                ],
            )
            for x, y in ((b"\x02" * 16, b"\x01" * 16), (b"\x02" * 16, b"\x03" * 16)):
                a, b = channel_pair(x, y)
                await conn.execute(
                    insert(schema.channels).values(cell_a=a, cell_b=b, created_at_ms=1)
                )
            # Inside a transaction, on its connection:
            assert await are_paired(conn, b"\x01" * 16, b"\x02" * 16)
        two = await cell_by_link_key(engine, b"L" * 32)
        assert two is not None
        assert (two.name, two.status, two.identity_key, two.enrolled_at_ms) == (
            "two",
            CellStatus.ACTIVE,
            b"I" * 32,
            2,
        )
        assert await cell_by_id(engine, b"\x02" * 16) == two
        assert await cell_by_name(engine, "two") == two
        assert await cell_by_name(engine, "nobody") is None
        assert await cell_by_link_key(engine, b"X" * 32) is None
        assert await peers_of(engine, b"\x02" * 16) == [b"\x01" * 16, b"\x03" * 16]
        assert await peers_of(engine, b"\x01" * 16) == [b"\x02" * 16]
        assert await are_paired(engine, b"\x03" * 16, b"\x02" * 16)
        assert not await are_paired(engine, b"\x01" * 16, b"\x03" * 16)
        assert channel_pair(b"\x09", b"\x01") == (b"\x01", b"\x09")
    finally:
        await engine.dispose()
