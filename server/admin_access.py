"""Admin routes for accountability: admin tokens and the audit log.

Theory of operation
-------------------
Admin tokens are created here (or by :func:`~liaison.server.admin_auth.create_admin_token` from
the server's console), listed without their text or hash, and revoked by id. Revocation takes
effect on the next request: every request looks its token up afresh. A token may revoke itself.

The audit log is read-only over HTTP; rows are written by each mutating route, in its own
transaction (see :mod:`.audit`).
"""

# No ``from __future__ import annotations``: FastAPI resolves ``Admin`` (a local) at definition.

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from . import audit
from .admin_auth import AdminAuth, AdminPrincipal, insert_admin_token
from .admin_models import AuditEntryOut, TokenCreate, TokenCreated, TokenInfo, ms_to_datetime
from .dialect import write_transaction
from .problems import Problem, ProblemCode, problem_responses
from .schema import admin_tokens

__all__ = ["add_access_routes"]


def add_access_routes(
    router: APIRouter, engine: AsyncEngine, auth: AdminAuth, now_ms: Callable[[], int]
) -> None:
    """Add ``/tokens`` and ``/audit`` to ``router`` (which already requires authentication)."""
    Admin = Annotated[AdminPrincipal, Depends(auth)]

    # -- admin tokens ------------------------------------------------------------------------

    @router.post("/tokens", status_code=201)
    async def create_token(body: TokenCreate, admin: Admin) -> TokenCreated:
        """Create an admin token. Its text is in this response only."""
        at_ms = now_ms()
        async with write_transaction(engine) as conn:
            token_id, token = await insert_admin_token(conn, body.name, at_ms)
            await audit.record(
                conn,
                at_ms=at_ms,
                actor=admin.actor,
                action="token.create",
                target=body.name,
                detail={"id": token_id},
            )
        return TokenCreated(
            id=token_id, name=body.name, token=token, created_at=ms_to_datetime(at_ms)
        )

    @router.get("/tokens")
    async def list_tokens() -> list[TokenInfo]:
        """Every admin token ever created (never the token text or its hash)."""
        query = select(
            admin_tokens.c.id,
            admin_tokens.c.name,
            admin_tokens.c.created_at_ms,
            admin_tokens.c.revoked_at_ms,
        ).order_by(admin_tokens.c.id)
        async with engine.connect() as conn:
            return [TokenInfo.of(row) for row in await conn.execute(query)]

    @router.delete("/tokens/{token_id}", responses=problem_responses(404, 409))
    async def revoke_token(
        token_id: int,
        admin: Admin,
        force: Annotated[
            bool,
            Query(description="Revoke it even if it is the last active admin token."),
        ] = False,
    ) -> TokenInfo:
        """Revoke an admin token at once. A token may revoke itself; it then stops working.
        The last active token is revoked only with ``force=true`` (409 otherwise): without
        one, only ``liaison server admin-token`` on the relay's host can make a new one."""
        at_ms = now_ms()
        async with write_transaction(engine) as conn:
            row = (
                await conn.execute(
                    select(admin_tokens.c.name, admin_tokens.c.revoked_at_ms).where(
                        admin_tokens.c.id == token_id
                    )
                )
            ).first()
            if row is None:
                raise Problem(ProblemCode.NOT_FOUND, f"no admin token with id {token_id}")
            if row.revoked_at_ms is not None:
                raise Problem(ProblemCode.INVALID_STATE, f"admin token {token_id} is revoked")
            active = (
                await conn.execute(
                    select(func.count())
                    .select_from(admin_tokens)
                    .where(admin_tokens.c.revoked_at_ms.is_(None))
                )
            ).scalar_one()
            if active <= 1 and not force:
                raise Problem(
                    ProblemCode.INVALID_STATE,
                    f"admin token {token_id} is the last active admin token: revoking it locks "
                    "every admin out of the API (a new token then needs `liaison server "
                    "admin-token` on the relay's host); repeat with --force (API: force=true)",
                    title="Last admin token",
                )
            await conn.execute(
                update(admin_tokens)
                .where(admin_tokens.c.id == token_id)
                .values(revoked_at_ms=at_ms)
            )
            await audit.record(
                conn,
                at_ms=at_ms,
                actor=admin.actor,
                action="token.revoke",
                target=row.name,
                detail={"id": token_id, "last": active <= 1},
            )
            revoked = (
                await conn.execute(select(admin_tokens).where(admin_tokens.c.id == token_id))
            ).one()
        return TokenInfo.of(revoked)

    # -- audit log ---------------------------------------------------------------------------

    @router.get("/audit")
    async def list_audit(
        limit: Annotated[int, Query(ge=1, le=1000, description="How many entries.")] = 50,
        action: Annotated[
            str | None,
            Query(
                max_length=64,
                pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?$",
                description="Only this action (`cell.revoke`), or a family (`cell.*`).",
                examples=["cell.revoke", "admin.*"],
            ),
        ] = None,
    ) -> list[AuditEntryOut]:
        """The newest audit entries, newest first (only those of ``action`` if given)."""
        async with engine.connect() as conn:
            entries = await audit.recent(conn, limit, action=action)
        return [
            AuditEntryOut(
                id=e.id,
                at=ms_to_datetime(e.at_ms),
                actor=e.actor,
                action=e.action,
                target=e.target,
                detail=e.detail,
            )
            for e in entries
        ]
