"""Cell presence in the store: online / last seen, for ``liaison admin cell list/show``.

Theory of operation
-------------------
Two columns of ``cells``: ``linked_at_ms`` (when the cell's live link started; NULL while it
has none) and ``last_seen_at_ms`` (when a relay node last saw it linked). Nothing is written
per frame: :class:`Presence` collects link ups and downs in memory and writes them together
at most once a second (:meth:`Presence.flush`), and every ``refresh_seconds`` it moves
``last_seen_at_ms`` of every cell linked to this node to now, in one ``UPDATE ... IN`` per 500
cells. A link down clears ``linked_at_ms`` only if it still holds that link's start, so the
older link of a cell that moved to another node never marks the newer one offline.

Reading (:func:`is_online`): a cell is online when ``linked_at_ms`` is set and
``last_seen_at_ms`` is younger than ``STALE_FACTOR`` refresh intervals -- so a link left
marked by a node that died reads as offline within 2.5 intervals (150 s by default).
Precision: link up/down reach the store within about a second; while linked, ``last seen``
is at most one refresh interval old. Presence is best effort: a failed write is logged and
the next refresh repairs ``last_seen_at_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncEngine

from .dialect import write_transaction
from .schema import cells

__all__ = ["STALE_FACTOR", "Presence", "is_online"]

log = logging.getLogger("liaison.relay")

STALE_FACTOR = 2.5
"""A linked cell whose ``last_seen_at_ms`` is older than this many refresh intervals counts as
offline (its node stopped refreshing: it died)."""
FLUSH_SECONDS = 1.0
_CHUNK = 500

_UP = (
    update(cells)
    .where(cells.c.id == bindparam("b_id"))
    .values(linked_at_ms=bindparam("b_linked"), last_seen_at_ms=bindparam("b_now"))
)
_SEEN = (
    update(cells).where(cells.c.id == bindparam("b_id")).values(last_seen_at_ms=bindparam("b_now"))
)
_DOWN = (
    update(cells)
    .where(cells.c.id == bindparam("b_id"), cells.c.linked_at_ms == bindparam("b_linked"))
    .values(linked_at_ms=None)
)


def is_online(
    linked_at_ms: int | None, last_seen_at_ms: int | None, now_ms: int, refresh_seconds: float
) -> bool:
    """What the store says about a cell's link (see the module docstring)."""
    if linked_at_ms is None or last_seen_at_ms is None:
        return False
    return now_ms - last_seen_at_ms <= STALE_FACTOR * refresh_seconds * 1000


class Presence:
    """Link ups and downs of this node, written to ``cells`` in batches."""

    def __init__(
        self,
        engine: AsyncEngine,
        refresh_seconds: float = 60.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._ups: dict[bytes, tuple[int, int]] = {}  # cell -> (linked_at_ms, seen_ms)
        self._downs: dict[tuple[bytes, int], int] = {}  # (cell, linked_at_ms) -> seen_ms
        self._due = asyncio.Event()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def up(self, cell_id: bytes, linked_at_ms: int) -> None:
        self._ups[cell_id] = (linked_at_ms, self._now_ms())
        self._due.set()

    def down(self, cell_id: bytes, linked_at_ms: int) -> None:
        if self._ups.get(cell_id, (None, 0))[0] == linked_at_ms:
            del self._ups[cell_id]  # never written: nothing to mark online
        self._downs[(cell_id, linked_at_ms)] = self._now_ms()
        self._due.set()

    async def flush(self, linked: Sequence[bytes] = ()) -> None:
        """Write the pending ups and downs (downs first), and ``last_seen`` of ``linked``."""
        ups, downs = self._ups, self._downs
        self._ups, self._downs = {}, {}
        if not (ups or downs or linked):
            return
        now = self._now_ms()
        async with write_transaction(self._engine) as conn:
            if downs:
                seen = [{"b_id": c, "b_now": t} for (c, _linked), t in downs.items()]
                await conn.execute(_SEEN, seen)
                gone = [{"b_id": c, "b_linked": linked_ms} for c, linked_ms in downs]
                await conn.execute(_DOWN, gone)
            if ups:
                rows = [{"b_id": c, "b_linked": lk, "b_now": t} for c, (lk, t) in ups.items()]
                await conn.execute(_UP, rows)
            for start in range(0, len(linked), _CHUNK):
                chunk = list(linked[start : start + _CHUNK])
                await conn.execute(
                    update(cells).where(cells.c.id.in_(chunk)).values(last_seen_at_ms=now)
                )

    async def run(self, stop: asyncio.Event, linked: Callable[[], Sequence[bytes]]) -> None:
        """Flush at most every second while there is something to write, and refresh the
        cells ``linked()`` returns every ``refresh_seconds``; a last flush when stopped."""
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.refresh_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), max(0.0, next_refresh - loop.time()))
            self._due.clear()
            refresh = loop.time() >= next_refresh
            if refresh:
                next_refresh = loop.time() + self.refresh_seconds
            try:
                await self.flush(linked() if refresh else ())
            except Exception as exc:  # best effort: the next refresh repairs last_seen
                log.warning("presence write failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_SECONDS)
        with contextlib.suppress(Exception):
            await self.flush()
