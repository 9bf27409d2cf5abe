"""The directory: who the cells are, what state they are in, and who may talk to whom.

Theory of operation
-------------------
Read-only lookups over the ``cells`` and ``channels`` tables, shared by the admin API and the
relay. Each function takes either an open connection (to read inside the caller's transaction)
or the engine (to read on a short connection of its own).

A cell's lifecycle is the table :data:`TRANSITIONS`: for each status, the events allowed in it
and the status each one leads to::

    pending   --enroll-->  active        pending   --revoke--> revoked
    active    --suspend--> suspended     active    --revoke--> revoked
    suspended --resume-->  active        suspended --revoke--> revoked
    revoked   (final: no event is allowed)

:func:`next_status` is the only way to move along it; an event not in the table raises
:class:`InvalidTransition`. Only ``active`` cells may connect and send.

A channel between cells ``x`` and ``y`` is one row with ``cell_a < cell_b`` (id bytes), so
:func:`channel_pair` orders a pair before any lookup or insert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .schema import cells, channels

__all__ = [
    "TRANSITIONS",
    "CellEvent",
    "CellRecord",
    "CellStatus",
    "InvalidTransition",
    "are_paired",
    "cell_by_id",
    "cell_by_link_key",
    "cell_by_name",
    "channel_pair",
    "next_status",
    "peers_of",
]


class CellStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class CellEvent(StrEnum):
    ENROLL = "enroll"
    SUSPEND = "suspend"
    RESUME = "resume"
    REVOKE = "revoke"


TRANSITIONS: Mapping[CellStatus, Mapping[CellEvent, CellStatus]] = {
    CellStatus.PENDING: {CellEvent.ENROLL: CellStatus.ACTIVE, CellEvent.REVOKE: CellStatus.REVOKED},
    CellStatus.ACTIVE: {
        CellEvent.SUSPEND: CellStatus.SUSPENDED,
        CellEvent.REVOKE: CellStatus.REVOKED,
    },
    CellStatus.SUSPENDED: {
        CellEvent.RESUME: CellStatus.ACTIVE,
        CellEvent.REVOKE: CellStatus.REVOKED,
    },
    CellStatus.REVOKED: {},
}


class InvalidTransition(ValueError):
    """``event`` is not allowed while a cell is ``status``."""

    def __init__(self, status: CellStatus, event: CellEvent) -> None:
        self.status = status
        self.event = event
        allowed = ", ".join(TRANSITIONS[status]) or "nothing (final)"
        article = "an" if status.value[0] in "aeiou" else "a"
        super().__init__(f"cannot {event.value} {article} {status.value} cell (allowed: {allowed})")


def next_status(status: CellStatus | str, event: CellEvent | str) -> CellStatus:
    """The status ``event`` leads to from ``status``; raises :class:`InvalidTransition`."""
    current, happened = CellStatus(status), CellEvent(event)
    try:
        return TRANSITIONS[current][happened]
    except KeyError:
        raise InvalidTransition(current, happened) from None


@dataclass(frozen=True, slots=True)
class CellRecord:
    """One row of ``cells``. Keys are public keys; the relay never holds a cell's private key."""

    id: bytes
    name: str
    status: CellStatus
    identity_key: bytes | None
    link_key: bytes | None
    created_at_ms: int
    enrolled_at_ms: int | None
    status_changed_at_ms: int

    @classmethod
    def from_row(cls, row: Any) -> CellRecord:
        return cls(
            id=bytes(row.id),
            name=row.name,
            status=CellStatus(row.status),
            identity_key=None if row.identity_key is None else bytes(row.identity_key),
            link_key=None if row.link_key is None else bytes(row.link_key),
            created_at_ms=row.created_at_ms,
            enrolled_at_ms=row.enrolled_at_ms,
            status_changed_at_ms=row.status_changed_at_ms,
        )


Executor = AsyncConnection | AsyncEngine


async def _one_cell(db: Executor, query: Select[Any]) -> CellRecord | None:
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            return await _one_cell(conn, query)
    row = (await db.execute(query)).first()
    return None if row is None else CellRecord.from_row(row)


async def cell_by_id(db: Executor, cell_id: bytes) -> CellRecord | None:
    return await _one_cell(db, select(cells).where(cells.c.id == cell_id))


async def cell_by_name(db: Executor, name: str) -> CellRecord | None:
    return await _one_cell(db, select(cells).where(cells.c.name == name))


async def cell_by_link_key(db: Executor, link_key: bytes) -> CellRecord | None:
    """The cell whose link (Noise static) public key is ``link_key``, whatever its status."""
    return await _one_cell(db, select(cells).where(cells.c.link_key == link_key))


def channel_pair(x: bytes, y: bytes) -> tuple[bytes, bytes]:
    """``(cell_a, cell_b)`` as stored: the smaller id first."""
    return (x, y) if x < y else (y, x)


async def are_paired(db: Executor, x: bytes, y: bytes) -> bool:
    """Whether an admin has provisioned a channel between cells ``x`` and ``y``."""
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            return await are_paired(conn, x, y)
    a, b = channel_pair(x, y)
    query = select(channels.c.id).where(channels.c.cell_a == a, channels.c.cell_b == b)
    return (await db.execute(query)).first() is not None


async def peers_of(db: Executor, cell_id: bytes) -> list[bytes]:
    """The ids of every cell sharing a channel with ``cell_id``, in id order."""
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            return await peers_of(conn, cell_id)
    query = select(channels.c.cell_a, channels.c.cell_b).where(
        or_(channels.c.cell_a == cell_id, channels.c.cell_b == cell_id)
    )
    rows = (await db.execute(query)).all()
    return sorted(bytes(row.cell_b if bytes(row.cell_a) == cell_id else row.cell_a) for row in rows)


async def statuses(db: Executor, cell_ids: list[bytes]) -> dict[bytes, CellStatus]:
    """The current status of each of ``cell_ids`` that exists (the fallback poll's check)."""
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            return await statuses(conn, cell_ids)
    found: dict[bytes, CellStatus] = {}
    for start in range(0, len(cell_ids), 500):
        chunk = cell_ids[start : start + 500]
        query = select(cells.c.id, cells.c.status).where(cells.c.id.in_(chunk))
        for row in await db.execute(query):
            found[bytes(row.id)] = CellStatus(row.status)
    return found


async def peer_sets(db: Executor, cell_ids: list[bytes]) -> dict[bytes, frozenset[bytes]]:
    """``{cell: its peers}`` for each of ``cell_ids`` (one query per 250 cells)."""
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            return await peer_sets(conn, cell_ids)
    wanted = set(cell_ids)
    found: dict[bytes, set[bytes]] = {cell: set() for cell in wanted}
    for start in range(0, len(cell_ids), 250):
        chunk = cell_ids[start : start + 250]
        query = select(channels.c.cell_a, channels.c.cell_b).where(
            or_(channels.c.cell_a.in_(chunk), channels.c.cell_b.in_(chunk))
        )
        for row in await db.execute(query):
            a, b = bytes(row.cell_a), bytes(row.cell_b)
            if a in wanted:
                found[a].add(b)
            if b in wanted:
                found[b].add(a)
    return {cell: frozenset(peers) for cell, peers in found.items()}
