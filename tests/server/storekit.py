"""Small builders shared by the store and writer tests."""

from __future__ import annotations

import itertools
import os
import time

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from liaison.server.schema import cells, envelopes
from liaison.server.store import EnvelopeRow

_names = itertools.count()
FAR_FUTURE = 4_000_000_000  # unix seconds, year 2096


def cell() -> bytes:
    """A fresh 16-byte cell id."""
    return os.urandom(16)


def row(
    recipient: bytes,
    sender: bytes,
    message_id: bytes | None = None,
    *,
    precedence: int = 3,
    expires_at: int = FAR_FUTURE,
    data: bytes = b"\x00" * 64,
) -> EnvelopeRow:
    """An envelope row with sensible defaults (ROUTINE, far expiry, 64 bytes)."""
    return EnvelopeRow(
        recipient=recipient,
        sender=sender,
        message_id=os.urandom(16) if message_id is None else message_id,
        precedence=precedence,
        expires_at=expires_at,
        received_at_ms=int(time.time() * 1000),
        data=data,
    )


async def add_cell(engine: AsyncEngine) -> bytes:
    """Insert an active cell row (prekeys reference cells) and return its id."""
    cell_id = cell()
    now = int(time.time() * 1000)
    async with engine.begin() as conn:
        await conn.execute(
            cells.insert().values(
                id=cell_id,
                name=f"cell-{next(_names)}",
                status="active",
                created_at_ms=now,
                status_changed_at_ms=now,
            )
        )
    return cell_id


async def envelope_count(engine: AsyncEngine, **where: bytes) -> int:
    """How many envelopes are stored (optionally ``recipient=`` / ``sender=`` only)."""
    stmt = select(func.count()).select_from(envelopes)
    for column, value in where.items():
        stmt = stmt.where(envelopes.c[column] == value)
    async with engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())
