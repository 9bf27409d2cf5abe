"""The audit log: who did what to which object, written in the same transaction as the change.

Theory of operation
-------------------
Every mutating admin action calls :func:`record` on the connection of the transaction that makes
the change, so the change and its audit row commit (or roll back) together. ``actor`` is the admin
token's ``name#id`` (or ``console`` for the server's own command line), ``action`` a dotted verb
such as ``cell.revoke``, ``target`` the name of the object acted on, and ``detail`` a small JSON
object of non-secret fields.

Never pass an enrollment code, an admin token, a hash of either, or key bytes in ``detail``: the
audit log is meant to be read, exported and shipped to other systems. (A failed admin
authentication, ``admin.auth_failed``, records only 8 hex digits of the SHA-256 of the token
that failed, so that repeated attempts with one token can be told apart.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import audit_log

__all__ = ["AuditEntry", "recent", "record"]

_TARGET_MAX = 128  # the width of audit_log.target
_ACTOR_MAX = 64  # the width of audit_log.actor


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at_ms: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


async def record(
    conn: AsyncConnection,
    *,
    at_ms: int,
    actor: str,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Add one audit row inside the caller's transaction (``detail`` must be JSON-able)."""
    await conn.execute(
        insert(audit_log).values(
            at_ms=at_ms,
            actor=actor[:_ACTOR_MAX],
            action=action,
            # A channel between two 64-character names is 129 characters: ``detail`` keeps both.
            target=target[:_TARGET_MAX],
            detail=json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":")),
        )
    )


async def recent(
    conn: AsyncConnection, limit: int, *, action: str | None = None
) -> list[AuditEntry]:
    """The newest ``limit`` entries, newest first; with ``action``, only that action, or a
    family of actions for ``prefix.*`` (``cell.*``: every ``cell.`` action)."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if action is not None and action.endswith(".*"):
        # "_" is a LIKE wildcard: autoescape makes the prefix match literally.
        query = query.where(audit_log.c.action.startswith(action[:-1], autoescape=True))
    elif action is not None:
        query = query.where(audit_log.c.action == action)
    rows = await conn.execute(query)
    return [
        AuditEntry(
            id=row.id,
            at_ms=row.at_ms,
            actor=row.actor,
            action=row.action,
            target=row.target,
            detail=json.loads(row.detail),
        )
        for row in rows
    ]
