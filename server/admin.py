"""The admin REST API: provision cells, pair them into channels, manage admin tokens.

Theory of operation
-------------------
:func:`build_admin_router` returns a router whose paths are relative (``/cells``, ``/channels``
here; ``/tokens``, ``/audit`` from :mod:`.admin_access`). Mount it with
``app.include_router(router, prefix="/admin")`` on an app that has
:func:`~liaison.server.problems.install_problem_handlers`. Every route requires an admin bearer
token (:mod:`.admin_auth`); every error is a problem document.

Each mutating route runs one transaction that makes the change *and* writes its audit row, so
either both happen or neither. Cell status changes follow the table in
:data:`~liaison.server.directory.TRANSITIONS`; the ``UPDATE`` is conditional on the status read,
so two concurrent admins cannot both apply a transition. Revoking a cell also deletes, in the
same transaction, its queued envelopes (leaving each envelope's sender a ``revoked`` notice,
SPEC.md M-REL-20), its prekeys and its unused enrollment codes.

Only *after* the commit does the router tell the relay, through ``hooks.on_cell_status`` (the
relay disconnects a suspended or revoked cell and tells its peers), ``hooks.on_sender_notices``
(hand the purge notices to senders linked now) or ``hooks.on_channels_changed`` (after a
channel is created or deleted). A failing hook is logged and
does not fail the request -- the change is durable, and the relay checks status on every connect.

The router never sees an enrollment code's secret beyond handing it back once: the lead's
``hooks.new_enrollment_code()`` makes the code and its hash, and only the hash is stored.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves route annotations such as
# ``Admin`` (a local of build_admin_router) when the route is defined.

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import audit, store
from .admin_access import add_access_routes
from .admin_auth import (
    AdminAuth,
    AdminPrincipal,
    FailureLimiter,
    count_admin_tokens,
    create_admin_token,
)
from .admin_models import (
    CellCreate,
    CellCreated,
    CellDetail,
    CellListed,
    CellSummary,
    ChannelCreate,
    ChannelInfo,
    EnrollmentCodeIssued,
    ms_to_datetime,
)
from .dialect import write_transaction
from .directory import (
    CellEvent,
    CellRecord,
    CellStatus,
    InvalidTransition,
    are_paired,
    cell_by_name,
    next_status,
    peers_of,
)
from .presence import is_online
from .problems import Problem, ProblemCode, problem_responses, read_bounded_body
from .schema import (
    cells,
    channels,
    enrollment_codes,
    envelopes,
    expiry_notices,
    one_time_prekeys,
    signed_prekeys,
)

__all__ = ["AdminHooks", "build_admin_router", "count_admin_tokens", "create_admin_token"]

log = logging.getLogger("liaison.server.admin")


class AdminHooks(Protocol):
    """What the admin API needs from the rest of the relay."""

    def new_enrollment_code(self) -> tuple[str, bytes]:
        """A fresh enrollment code: ``(text shown to the human, 32-byte secret hash to store)``."""
        ...

    async def on_cell_status(self, cell_id: bytes, status: str, peers: list[bytes]) -> None:
        """Called after a status change commits; ``peers`` are the cell's channel peers."""
        ...

    async def on_channels_changed(self) -> None:
        """Called after a channel is created or deleted (the relay may cache pairings)."""
        ...

    async def on_sender_notices(self, senders: list[bytes]) -> None:
        """Called after a commit stored notices for ``senders`` (a revoked cell's queue was
        purged): the relay hands them to those linked now, on any node."""
        ...


ADMIN_MAX_BODY = 16 * 1024
"""Largest request body an admin route reads (its JSON bodies are a few names): a larger one
is refused with 413 before it is buffered -- and before authentication, which FastAPI runs
only after reading the body."""


class _BoundedBodyRoute(APIRoute):
    """An admin route that reads at most :data:`ADMIN_MAX_BODY` bytes of request body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:  # the route reads no body: nothing to bound
            return handler

        async def bounded(request: Request) -> Response:
            await read_bounded_body(request, ADMIN_MAX_BODY)
            return await handler(request)

        return bounded


def _not_found(what: str) -> Problem:
    return Problem(ProblemCode.NOT_FOUND, what)


async def _cell_or_404(conn: AsyncConnection, name: str) -> CellRecord:
    cell = await cell_by_name(conn, name)
    if cell is None:
        raise _not_found(f"no cell named {name!r}")
    return cell


async def _count(conn: AsyncConnection, table: Table, column: str, value: bytes) -> int:
    query = select(func.count()).select_from(table).where(table.c[column] == value)
    return int((await conn.execute(query)).scalar_one())


async def _peer_names(conn: AsyncConnection, cell_id: bytes) -> list[str]:
    ids = await peers_of(conn, cell_id)
    if not ids:
        return []
    rows = await conn.execute(select(cells.c.name).where(cells.c.id.in_(ids)))
    return sorted(row.name for row in rows)


async def _code_expiries(conn: AsyncConnection, cell_id: bytes | None) -> dict[bytes, int]:
    """``{cell id: expiry of its newest unused code}`` for pending cells (one, or all)."""
    query = (
        select(enrollment_codes.c.cell_id, func.max(enrollment_codes.c.expires_at_ms))
        .join(cells, cells.c.id == enrollment_codes.c.cell_id)
        .where(
            enrollment_codes.c.used_at_ms.is_(None),
            cells.c.status == CellStatus.PENDING.value,
        )
        .group_by(enrollment_codes.c.cell_id)
    )
    if cell_id is not None:
        query = query.where(enrollment_codes.c.cell_id == cell_id)
    return {bytes(c): int(ms) for c, ms in await conn.execute(query)}


async def _purge_revoked(
    conn: AsyncConnection, cell_id: bytes, at_ms: int
) -> tuple[dict[str, int], list[bytes]]:
    """Delete what a revoked cell leaves behind, leaving each sender of a queued envelope a
    ``revoked`` notice (M-REL-20); the counts go to the audit row, the senders to the relay."""
    await conn.execute(delete(expiry_notices).where(expiry_notices.c.sender == cell_id))
    notices = await store.drop_queue(conn, cell_id, "revoked", at_ms)
    otpks = await conn.execute(
        delete(one_time_prekeys).where(one_time_prekeys.c.cell_id == cell_id)
    )
    await conn.execute(delete(signed_prekeys).where(signed_prekeys.c.cell_id == cell_id))
    await conn.execute(
        delete(enrollment_codes).where(
            enrollment_codes.c.cell_id == cell_id, enrollment_codes.c.used_at_ms.is_(None)
        )
    )
    senders = sorted({n.sender for n in notices})
    counts = {
        "purged_envelopes": len(notices),
        "purged_one_time_prekeys": otpks.rowcount,
        "senders_notified": len(senders),
    }
    return counts, senders


def build_admin_router(
    engine: AsyncEngine,
    hooks: AdminHooks,
    *,
    code_ttl_seconds: int = 24 * 3600,
    limiter: FailureLimiter | None = None,
    clock: Callable[[], float] = time.time,
    presence_refresh_seconds: float = 60.0,
) -> APIRouter:
    """The admin API over ``engine``. Mount it under ``/admin`` (see the module docstring).

    ``code_ttl_seconds`` is ``Settings.enrollment_code_ttl_seconds``; ``limiter`` throttles
    failed authentication (default: 10 failures a minute per address and per token
    fingerprint; a valid token always passes); ``clock`` gives unix seconds, for tests;
    ``presence_refresh_seconds`` is ``Settings.presence_refresh_seconds`` (when a linked cell's
    ``last_seen`` counts as stale, :mod:`.presence`).
    """
    auth = AdminAuth(engine, limiter or FailureLimiter(), clock=clock)
    Admin = Annotated[AdminPrincipal, Depends(auth)]
    router = APIRouter(
        tags=["admin"],
        dependencies=[Depends(auth)],
        responses=problem_responses(401, 422, 429),
        route_class=_BoundedBodyRoute,
    )

    def now_ms() -> int:
        return int(clock() * 1000)

    async def issue_code(conn: AsyncConnection, cell_id: bytes, at_ms: int) -> tuple[str, int]:
        code, secret_hash = hooks.new_enrollment_code()
        if len(secret_hash) != 32:
            raise ValueError("hooks.new_enrollment_code() must return a 32-byte hash")
        expires_ms = at_ms + code_ttl_seconds * 1000
        await conn.execute(
            insert(enrollment_codes).values(
                cell_id=cell_id,
                secret_hash=secret_hash,
                expires_at_ms=expires_ms,
                created_at_ms=at_ms,
            )
        )
        return code, expires_ms

    # -- cells -------------------------------------------------------------------------------

    @router.post("/cells", status_code=201, responses=problem_responses(409))
    async def create_cell(body: CellCreate, admin: Admin) -> CellCreated:
        """Create a pending cell and its first one-time enrollment code."""
        at_ms, cell_id = now_ms(), secrets.token_bytes(16)
        try:
            async with write_transaction(engine) as conn:
                if await cell_by_name(conn, body.name) is not None:
                    raise Problem(ProblemCode.CONFLICT, f"a cell named {body.name!r} exists")
                await conn.execute(
                    insert(cells).values(
                        id=cell_id,
                        name=body.name,
                        status=CellStatus.PENDING.value,
                        created_at_ms=at_ms,
                        status_changed_at_ms=at_ms,
                    )
                )
                code, expires_ms = await issue_code(conn, cell_id, at_ms)
                await audit.record(
                    conn,
                    at_ms=at_ms,
                    actor=admin.actor,
                    action="cell.create",
                    target=body.name,
                    detail={"id": cell_id.hex(), "code_expires_at_ms": expires_ms},
                )
        except IntegrityError:
            raise Problem(ProblemCode.CONFLICT, f"a cell named {body.name!r} exists") from None
        return CellCreated(
            id=cell_id.hex(),
            name=body.name,
            status=CellStatus.PENDING,
            enrollment_code=code,
            code_expires_at=ms_to_datetime(expires_ms),
        )

    def presence(row: Any, codes: dict[bytes, int]) -> dict[str, Any]:
        code_ms = codes.get(bytes(row.id))
        return {
            "online": is_online(
                row.linked_at_ms, row.last_seen_at_ms, now_ms(), presence_refresh_seconds
            ),
            "last_seen_at": None
            if row.last_seen_at_ms is None
            else ms_to_datetime(row.last_seen_at_ms),
            "code_expires_at": None if code_ms is None else ms_to_datetime(code_ms),
        }

    @router.get("/cells")
    async def list_cells() -> list[CellListed]:
        """Every cell, by name, with online / last seen and, if pending, its code's expiry."""
        async with engine.connect() as conn:
            rows = (await conn.execute(select(cells).order_by(cells.c.name))).all()
            codes = await _code_expiries(conn, None)
        return [
            CellListed(
                **CellSummary.of(CellRecord.from_row(row)).model_dump(), **presence(row, codes)
            )
            for row in rows
        ]

    @router.get("/cells/{name}", responses=problem_responses(404))
    async def show_cell(name: str) -> CellDetail:
        """One cell, with its channels, queue depth and prekey stock."""
        async with engine.connect() as conn:
            row = (await conn.execute(select(cells).where(cells.c.name == name))).first()
            if row is None:
                raise _not_found(f"no cell named {name!r}")
            cell = CellRecord.from_row(row)
            key = cell.identity_key
            return CellDetail(
                **CellSummary.of(cell).model_dump(),
                **presence(row, await _code_expiries(conn, cell.id)),
                identity_fingerprint=None if key is None else hashlib.sha256(key).hexdigest()[:16],
                channels=await _peer_names(conn, cell.id),
                queue_depth=await _count(conn, envelopes, "recipient", cell.id),
                one_time_prekeys=await _count(conn, one_time_prekeys, "cell_id", cell.id),
            )

    @router.post("/cells/{name}/codes", status_code=201, responses=problem_responses(404, 409))
    async def new_code(name: str, admin: Admin) -> EnrollmentCodeIssued:
        """Issue a fresh enrollment code for a pending cell; earlier unused codes stop working."""
        at_ms = now_ms()
        async with write_transaction(engine) as conn:
            cell = await _cell_or_404(conn, name)
            if cell.status is not CellStatus.PENDING:
                raise Problem(
                    ProblemCode.INVALID_STATE, f"cell {name!r} is {cell.status}, not pending"
                )
            await conn.execute(
                delete(enrollment_codes).where(
                    enrollment_codes.c.cell_id == cell.id, enrollment_codes.c.used_at_ms.is_(None)
                )
            )
            code, expires_ms = await issue_code(conn, cell.id, at_ms)
            await audit.record(
                conn,
                at_ms=at_ms,
                actor=admin.actor,
                action="cell.code",
                target=name,
                detail={"code_expires_at_ms": expires_ms},
            )
        return EnrollmentCodeIssued(
            name=name, enrollment_code=code, code_expires_at=ms_to_datetime(expires_ms)
        )

    async def change_status(name: str, event: CellEvent, admin: AdminPrincipal) -> CellSummary:
        at_ms = now_ms()
        async with write_transaction(engine) as conn:
            cell = await _cell_or_404(conn, name)
            try:
                status = next_status(cell.status, event)
            except InvalidTransition as exc:
                raise Problem(ProblemCode.INVALID_STATE, str(exc)) from None
            changed = await conn.execute(
                update(cells)
                .where(cells.c.id == cell.id, cells.c.status == cell.status.value)
                .values(status=status.value, status_changed_at_ms=at_ms)
            )
            if changed.rowcount != 1:
                raise Problem(ProblemCode.INVALID_STATE, f"cell {name!r} changed meanwhile")
            detail: dict[str, object] = {"from": cell.status.value, "to": status.value}
            senders: list[bytes] = []
            if status is CellStatus.REVOKED:
                counts, senders = await _purge_revoked(conn, cell.id, at_ms)
                detail.update(counts)
            peers = await peers_of(conn, cell.id)
            await audit.record(
                conn,
                at_ms=at_ms,
                actor=admin.actor,
                action=f"cell.{event.value}",
                target=name,
                detail=detail,
            )
        try:
            await hooks.on_cell_status(cell.id, status.value, peers)
        except Exception:
            log.exception("on_cell_status hook failed for cell %s -> %s", name, status.value)
        if senders:
            try:
                await hooks.on_sender_notices(senders)
            except Exception:  # stored: each sender still gets them when it next connects
                log.exception("on_sender_notices hook failed after revoking %s", name)
        return CellSummary.of(replace(cell, status=status, status_changed_at_ms=at_ms))

    def add_status_route(event: CellEvent, description: str) -> None:
        async def endpoint(name: str, admin: Admin) -> CellSummary:
            return await change_status(name, event, admin)

        router.add_api_route(
            f"/cells/{{name}}/{event.value}",
            endpoint,
            methods=["POST"],
            name=f"{event.value}_cell",
            summary=f"{event.value.capitalize()} Cell",
            description=description,
            responses=problem_responses(404, 409),
        )

    add_status_route(CellEvent.SUSPEND, "Suspend an active cell: it is disconnected and refused.")
    add_status_route(CellEvent.RESUME, "Let a suspended cell connect again.")
    add_status_route(
        CellEvent.REVOKE,
        "Revoke a cell for good: disconnect it, tell its peers, delete its queued envelopes "
        "(telling each sender that its message will not be delivered), prekeys and unused "
        "enrollment codes.",
    )

    # -- channels ----------------------------------------------------------------------------

    async def channels_changed() -> None:
        try:
            await hooks.on_channels_changed()
        except Exception:
            log.exception("on_channels_changed hook failed")

    async def pair_or_404(conn: AsyncConnection, x: str, y: str) -> tuple[CellRecord, CellRecord]:
        first, second = await _cell_or_404(conn, x), await _cell_or_404(conn, y)
        return (first, second) if first.id < second.id else (second, first)

    @router.post("/channels", status_code=201, responses=problem_responses(404, 409))
    async def create_channel(body: ChannelCreate, admin: Admin) -> ChannelInfo:
        """Pair two cells so they may exchange messages. Revoked cells cannot be paired."""
        if body.a == body.b:
            raise Problem(ProblemCode.VALIDATION_FAILED, "a channel joins two different cells")
        at_ms = now_ms()
        target = f"{body.a}/{body.b}"
        try:
            async with write_transaction(engine) as conn:
                a, b = await pair_or_404(conn, body.a, body.b)
                for cell in (a, b):
                    if cell.status is CellStatus.REVOKED:
                        raise Problem(ProblemCode.INVALID_STATE, f"cell {cell.name!r} is revoked")
                if await are_paired(conn, a.id, b.id):
                    raise Problem(ProblemCode.CONFLICT, f"{a.name!r} and {b.name!r} are paired")
                await conn.execute(
                    insert(channels).values(cell_a=a.id, cell_b=b.id, created_at_ms=at_ms)
                )
                await audit.record(
                    conn,
                    at_ms=at_ms,
                    actor=admin.actor,
                    action="channel.create",
                    target=target,
                    detail={"a": a.name, "b": b.name},
                )
        except IntegrityError:
            raise Problem(ProblemCode.CONFLICT, f"{body.a!r} and {body.b!r} are paired") from None
        await channels_changed()
        return ChannelInfo(a=a.name, b=b.name, created_at=ms_to_datetime(at_ms))

    @router.get("/channels")
    async def list_channels() -> list[ChannelInfo]:
        """Every channel, by the names of its cells."""
        cell_a, cell_b = cells.alias("cell_a"), cells.alias("cell_b")
        query = (
            select(cell_a.c.name.label("a"), cell_b.c.name.label("b"), channels.c.created_at_ms)
            .join(cell_a, cell_a.c.id == channels.c.cell_a)
            .join(cell_b, cell_b.c.id == channels.c.cell_b)
            .order_by(cell_a.c.name, cell_b.c.name)
        )
        async with engine.connect() as conn:
            rows = await conn.execute(query)
            return [
                ChannelInfo(a=row.a, b=row.b, created_at=ms_to_datetime(row.created_at_ms))
                for row in rows
            ]

    @router.delete(
        "/channels/{a}/{b}",
        status_code=204,
        response_class=Response,
        responses=problem_responses(404),
    )
    async def delete_channel(a: str, b: str, admin: Admin) -> None:
        """Unpair two cells (in either order). Envelopes already queued stay queued."""
        at_ms = now_ms()
        async with write_transaction(engine) as conn:
            first, second = await pair_or_404(conn, a, b)
            gone = await conn.execute(
                delete(channels).where(
                    channels.c.cell_a == first.id, channels.c.cell_b == second.id
                )
            )
            if gone.rowcount != 1:
                raise _not_found(f"no channel between {a!r} and {b!r}")
            await audit.record(
                conn,
                at_ms=at_ms,
                actor=admin.actor,
                action="channel.delete",
                target=f"{a}/{b}",
                detail={"a": first.name, "b": second.name},
            )
        await channels_changed()

    add_access_routes(router, engine, auth, now_ms)
    return router
