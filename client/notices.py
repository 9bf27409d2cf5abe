"""What an operator must be told while a cell runs, other than messages: :class:`Notice`.

:func:`watch` follows an open :class:`~liaison.client.Cell` and yields a notice whenever

* a gap in a peer's channel numbers becomes *missing* (``gap``: later messages arrived and
  these did not within the grace period — dropped or withheld by the relay, SPEC.md §9.3),
  and again when numbers of a reported gap arrive after all (``gap_filled``);
* one of this cell's sends reaches a final failure (``failed`` with the relay's reason,
  ``expired``) or is reported missing by its recipient (``send_missing``);
* a peer's identity key changes (``key_changed``) or a peer is revoked (``peer_revoked``).

It starts from the state at the time it is called (what was already so is not repeated) and
compares the state after every change the cell signals; a gap's grace period is waited out
with a timer, not by polling. Notices are derived from local state only, so they are as
trustworthy as that state: a relay can cause a ``gap`` (by dropping), never hide one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .cell import Cell
    from .models import Gap

__all__ = ["Notice", "NoticeKind", "watch"]

NoticeKind = Literal["gap", "gap_filled", "failed", "expired", "send_missing", "key_changed",
                     "peer_revoked"]  # fmt: skip

_OUTBOX_WINDOW = 500
"""How many of the most recent sends are followed for status changes."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One event for the operator. ``peer`` is the peer's name (untrusted text: render it
    with :func:`liaison.client.render.safe_text`); ``message_id`` is set for send notices,
    ``first_seq``/``last_seq`` for gaps; ``reason`` is the relay's code for ``failed``."""

    kind: NoticeKind
    peer: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    message_id: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    reason: str | None = None


_FINAL = {"failed", "expired"}


async def watch(cell: Cell) -> AsyncIterator[Notice]:
    """Yield notices for ``cell`` until it closes (see the module docstring)."""
    gaps = {(g.peer, g.first_seq, g.last_seq) for g in cell.gaps() if g.missing}
    sends = {e.message_id: e.status for e in cell.outbox(limit=_OUTBOX_WINDOW)}
    peers = {p.cell_id: (p.key_changed, p.status) for p in cell.peers()}
    while cell.is_open:
        waiter = cell.change_waiter()
        current = cell.gaps()
        now_missing = {(g.peer, g.first_seq, g.last_seq) for g in current if g.missing}
        for peer, first, last in sorted(now_missing - gaps):
            yield Notice("gap", peer, first_seq=first, last_seq=last)
        still_open = {(g.peer, seq) for g in current for seq in range(g.first_seq, g.last_seq + 1)}
        for peer, first, last in sorted(gaps - now_missing):
            arrived = [s for s in range(first, last + 1) if (peer, s) not in still_open]
            if arrived:
                yield Notice("gap_filled", peer, first_seq=min(arrived), last_seq=max(arrived))
        gaps = now_missing
        for entry in cell.outbox(limit=_OUTBOX_WINDOW):
            before = sends.get(entry.message_id)
            sends[entry.message_id] = entry.status
            if entry.status == before or before in _FINAL:
                continue
            if entry.status == "failed":
                yield Notice("failed", entry.peer, message_id=entry.message_id,
                             reason=entry.error)  # fmt: skip
            elif entry.status == "expired":
                yield Notice("expired", entry.peer, message_id=entry.message_id)
            elif entry.status == "missing":
                yield Notice("send_missing", entry.peer, message_id=entry.message_id)
        for p in cell.peers():
            was_changed, was_status = peers.get(p.cell_id, (False, p.status))
            peers[p.cell_id] = (p.key_changed, p.status)
            if p.key_changed and not was_changed:
                yield Notice("key_changed", p.name)
            if p.status == "revoked" and was_status != "revoked":
                yield Notice("peer_revoked", p.name)
        await cell.wait_change(waiter, _next_gap_deadline(current, cell.gap_grace))


def _next_gap_deadline(gaps: list[Gap], grace: float) -> float | None:
    """Seconds until the next of ``gaps`` still open becomes missing (``None``: none)."""
    pending = [g for g in gaps if not g.missing]
    if not pending:
        return None
    due = min(g.noticed_at.timestamp() + grace for g in pending)
    return max(0.05, due - time.time() + 0.05)
