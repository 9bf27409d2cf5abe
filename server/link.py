"""HTTP and WebSocket routes of the link layer: ``/v1/link``, ``/v1/enroll``, ``/v1/relay``.

Theory of operation: these routes only translate between the network and the sans-I/O
protocol objects. ``/v1/link`` runs the Noise IK handshake (the relay learns the cell's static
key from the hello and accepts only active, enrolled cells) and then hands the socket to a
:class:`~liaison.server.relay.Connection`. ``/v1/enroll`` runs the one-round-trip enrollment
handshake over a plain POST (SPEC.md §5.4): the request body is Noise message 1 and the
response body is message 2, so neither the code's secret nor the answer can be read or
forged on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from liaison.protocol import frames as f
from liaison.protocol.enrollment import (
    EnrollError,
    EnrollmentResponder,
    EnrollRequest,
    EnrollResponse,
    secret_hash,
)
from liaison.protocol.errors import BadSignature, LiaisonError
from liaison.protocol.keys import X25519KeyPair
from liaison.protocol.link import LinkResponder

from . import audit, directory
from .dialect import write_transaction
from .handshake_guard import source_of
from .problems import Problem, ProblemCode, problem_responses, read_bounded_body
from .relay import Connection, Relay, SocketLike
from .relay_key import fingerprint_text
from .schema import audit_log, cells, enrollment_codes, one_time_prekeys, signed_prekeys

__all__ = ["FailedEnrollments", "StarletteSocket", "build_link_router"]

log = logging.getLogger("liaison.link")
MAX_ENROLL_BODY = 96 + 16 + 4096 + 200 * 36
_BINARY: dict[str, Any] = {"type": "string", "format": "binary"}


class StarletteSocket(SocketLike):
    """``SocketLike`` over a Starlette WebSocket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._closed = False

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def receive_message(self) -> bytes | None:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            self._closed = True
            return None
        data = message.get("bytes")
        return data if data is not None else b""  # a text message fails to decrypt

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # already closed by the peer
            await self.ws.close(code, reason)


def build_link_router(relay: Relay, relay_key: X25519KeyPair) -> APIRouter:
    router = APIRouter()
    failures = FailedEnrollments()

    @router.get("/v1/relay", tags=["link"], summary="The relay's static link key")
    async def relay_info() -> dict[str, Any]:
        """The relay's Noise static public key. Cells accept it only if it matches the
        fingerprint in their enrollment code."""
        return {
            "static_key": bytes(relay_key.public).hex(),
            "fingerprint": fingerprint_text(relay_key),
            "protocol_version": 1,
        }

    @router.post(
        "/v1/enroll",
        tags=["link"],
        summary="Enroll a cell (Noise IK message 1 in, message 2 out)",
        response_class=Response,
        responses={
            200: {
                "description": "Enrollment message 2: the relay's answer, encrypted to the cell",
                "content": {"application/octet-stream": {"schema": _BINARY}},
            },
            **problem_responses(400, 413),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "Enrollment message 1 (SPEC.md §5.4), encrypted to the relay key",
                "content": {
                    "application/octet-stream": {
                        "schema": {**_BINARY, "minLength": 96, "maxLength": MAX_ENROLL_BODY}
                    }
                },
            }
        },
    )
    async def enroll(request: Request) -> Response:
        body = await read_bounded_body(request, MAX_ENROLL_BODY)
        if len(body) < 96:
            raise Problem(
                ProblemCode.BAD_REQUEST,
                "the body must be one enrollment handshake message",
                title="Bad enrollment message",
            )
        responder = EnrollmentResponder(relay_key.private_bytes())
        try:
            link_key, enroll_request = responder.read(body)
        except LiaisonError as exc:
            raise Problem(
                ProblemCode.BAD_REQUEST,
                "the message was not encrypted to this relay's key, or is "
                "malformed: check the enrollment code",
                title="Enrollment handshake failed",
            ) from exc
        answer = await _enroll(relay, link_key, enroll_request, failures)
        return Response(responder.answer(answer), media_type="application/octet-stream")

    @router.websocket("/v1/link")
    async def link(ws: WebSocket) -> None:
        guard = relay.handshakes
        source = source_of(ws.client.host if ws.client else None)
        known = guard.is_known(source)
        # Decided before the first await, so a burst of connections cannot all pass the checks
        # while none is counted yet (server/handshake_guard.py).
        refusal = guard.admit(source)
        if refusal is not None:
            # Refused with the documented close code (SPEC.md §11.7 rate_limited, 4201), which
            # needs an accepted socket: closing before accept() reaches the client only as an
            # HTTP 403, which says nothing about retrying later.
            relay.metrics.refuse(f.ErrorCode.RATE_LIMITED)
            await ws.accept()
            await StarletteSocket(ws).close(
                f.CLOSE_CODES[f.ErrorCode.RATE_LIMITED], _REFUSALS[refusal]
            )
            return
        try:
            await ws.accept()
            conn = await _handshake(relay, relay_key, StarletteSocket(ws))
        finally:
            guard.release(source, was_known=known)
        if conn is None:
            return
        guard.authenticated(source)
        relay.hub.register(conn)
        relay.metrics.connections += 1
        await conn.run()

    return router


async def _handshake(
    relay: Relay, relay_key: X25519KeyPair, socket: StarletteSocket
) -> Connection | None:
    settings = relay.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.handshake_timeout_seconds
    step = settings.hello_timeout_seconds
    try:
        hello = await asyncio.wait_for(socket.receive_message(), min(step, deadline - loop.time()))
    except TimeoutError:
        await socket.close(f.CLOSE_CODES[f.ErrorCode.HANDSHAKE_TIMEOUT], "handshake timeout")
        return None
    if hello is None:
        return None
    # A replayed hello is refused before any Diffie-Hellman or database work: an honest cell
    # draws a fresh ephemeral key for every attempt (SPEC.md §6.4).
    if len(hello) >= HELLO_EPHEMERAL_LEN and relay.handshakes.replayed(
        bytes(hello[:HELLO_EPHEMERAL_LEN])
    ):
        relay.metrics.refuse(f.ErrorCode.MALFORMED_FRAME)
        await socket.close(f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME], "handshake failed")
        return None
    responder = LinkResponder(relay_key.private_bytes())
    try:
        cell_key, payload = responder.read_hello(hello)
    except LiaisonError:
        await socket.close(f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME], "handshake failed")
        return None
    if payload:  # v1 hellos carry nothing: a replayable payload must not mean anything
        await socket.close(f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME], "hello payload not empty")
        return None
    cell = await directory.cell_by_link_key(relay.engine, cell_key)
    refusal = _refusal(cell)
    # Complete the handshake even to refuse: the ERROR frame is then authenticated, where a
    # bare close code could be forged by anyone on the path (SPEC.md M-LINK-4).
    cell_id = cell.id if cell is not None else bytes(16)
    welcome = responder.write_welcome(cell_id + int(time.time() * 1000).to_bytes(8, "big"))
    await socket.send_bytes(welcome)
    transport = responder.transport()
    if refusal is not None or cell is None:
        code = refusal or f.ErrorCode.NOT_ENROLLED
        relay.metrics.refuse(code)
        error = f.ErrorFrame(code, reason=f"this cell is {code.value.replace('_', ' ')}")
        await socket.send_bytes(transport.encrypt(f.encode_frame(error)))
        await socket.close(f.CLOSE_CODES[code], code.value)
        return None
    # A hello can be replayed by anyone who recorded it, so the link only counts as the cell's
    # once the cell proves it holds the session keys: its first transport message must
    # decrypt (SPEC.md M-LINK-9). The PING invites one.
    await socket.send_bytes(transport.encrypt(f.encode_frame(f.PingFrame(os.urandom(8)))))
    try:
        first = await asyncio.wait_for(
            socket.receive_message(), max(0.0, min(step, deadline - loop.time()))
        )
    except TimeoutError:
        await socket.close(f.CLOSE_CODES[f.ErrorCode.HANDSHAKE_TIMEOUT], "no first frame")
        return None
    if first is None:
        return None
    try:
        first_frame = f.decode_frame(transport.decrypt(first))
    except LiaisonError:
        await socket.close(f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME], "bad first frame")
        return None
    await relay.load_cell(cell.id)
    return Connection(relay, socket, transport, cell, first_frame=first_frame)


HELLO_EPHEMERAL_LEN = 32
"""The hello starts with the initiator's ephemeral public key in clear (Noise IK ``e``)."""

_REFUSALS = {
    "global": "too many unauthenticated connections",
    "source": "too many unauthenticated connections from this address",
    "unknown_pool": "too many unauthenticated connections",
    "rate": "too many handshakes from this address",
}


def _refusal(cell: directory.CellRecord | None) -> f.ErrorCode | None:
    if cell is None or cell.status == directory.CellStatus.PENDING:
        return f.ErrorCode.NOT_ENROLLED
    return {
        directory.CellStatus.SUSPENDED: f.ErrorCode.SUSPENDED,
        directory.CellStatus.REVOKED: f.ErrorCode.REVOKED,
    }.get(cell.status)


class FailedEnrollments:
    """How many refused enrollments the audit log records (SPEC.md M-ENR-11): at most
    ``per_window`` rows per ``window_seconds`` per relay process. Attempts beyond that are only
    counted, and the next row written says how many were left out (``"not_recorded"``), so a
    flood of bad codes costs the database at most ``per_window`` small rows a window."""

    def __init__(
        self, per_window: int = 10, window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.per_window = per_window
        self.window_seconds = window_seconds
        self._clock = clock
        self._window_start = -window_seconds
        self._written = 0
        self.not_recorded = 0

    def admit(self) -> int | None:
        """None if this failure is only counted; else the attempts left out before it."""
        now = self._clock()
        if now - self._window_start >= self.window_seconds:
            self._window_start, self._written = now, 0
        if self._written >= self.per_window:
            self.not_recorded += 1
            return None
        self._written += 1
        left_out, self.not_recorded = self.not_recorded, 0
        return left_out


async def _enroll(
    relay: Relay, link_key: bytes, request: EnrollRequest, failures: FailedEnrollments
) -> EnrollResponse:
    target = ""
    try:
        request.verify(link_key)
    except BadSignature:
        answer = EnrollResponse(error=EnrollError.BAD_SIGNATURE)
    else:
        now_ms = int(time.time() * 1000)
        try:
            async with write_transaction(relay.engine) as conn:
                answer, target = await _redeem(conn, link_key, request, now_ms)
        except IntegrityError:
            answer = EnrollResponse(error=EnrollError.LINK_KEY_IN_USE)
    if answer.error is not None:
        await _audit_failure(relay, failures, answer.error, target)
    return answer


async def _audit_failure(
    relay: Relay, failures: FailedEnrollments, reason: str, target: str
) -> None:
    """One ``cell.enroll_failed`` row: the reason and, when the code was valid, the cell's
    name; never the code, its hash or a key. Bounded by ``failures``."""
    left_out = failures.admit()
    if left_out is None:
        return
    detail: dict[str, object] = {"reason": reason}
    if left_out:
        detail["not_recorded"] = left_out
    async with write_transaction(relay.engine) as conn:
        await audit.record(
            conn, at_ms=int(time.time() * 1000), actor="enrollment",
            action="cell.enroll_failed", target=target, detail=detail,
        )  # fmt: skip
    log.info("enrollment refused: %s%s", reason, f" ({target})" if target else "")


async def _redeem(
    conn: AsyncConnection, link_key: bytes, request: EnrollRequest, now_ms: int
) -> tuple[EnrollResponse, str]:
    """The answer, and the name of the code's cell once the code is known to be valid."""
    code = (
        await conn.execute(
            select(enrollment_codes).where(
                enrollment_codes.c.secret_hash == secret_hash(request.secret)
            )
        )
    ).first()
    if code is None:
        return EnrollResponse(error=EnrollError.BAD_CODE), ""
    if code.used_at_ms is not None:
        return EnrollResponse(error=EnrollError.CODE_USED), ""
    if code.expires_at_ms <= now_ms:
        return EnrollResponse(error=EnrollError.CODE_EXPIRED), ""
    cell = await directory.cell_by_id(conn, bytes(code.cell_id))
    if cell is None or cell.status != directory.CellStatus.PENDING:
        return EnrollResponse(error=EnrollError.CELL_NOT_PENDING), ""
    # Checked before the code is burned (M-ENR-10): a wrong --name leaves the code usable.
    if request.expected_name is not None and request.expected_name != cell.name:
        return EnrollResponse(error=EnrollError.NAME_MISMATCH), cell.name
    # Burn the code first, guarded so two concurrent redemptions cannot both succeed.
    burned = await conn.execute(
        update(enrollment_codes)
        .where(enrollment_codes.c.id == code.id, enrollment_codes.c.used_at_ms.is_(None))
        .values(used_at_ms=now_ms)
    )
    if burned.rowcount != 1:
        return EnrollResponse(error=EnrollError.CODE_USED), cell.name
    await conn.execute(
        update(cells)
        .where(cells.c.id == cell.id)
        .values(
            status="active",
            identity_key=bytes(request.identity),
            link_key=link_key,
            enrolled_at_ms=now_ms,
            status_changed_at_ms=now_ms,
        )
    )
    spk, kem = request.signed_prekey, request.kem_prekey
    await conn.execute(
        insert(signed_prekeys).values(
            cell_id=cell.id,
            spk_id=spk.prekey_id,
            spk_public=bytes(spk.public),
            spk_signature=spk.signature,
            kem_id=kem.prekey_id,
            kem_public=bytes(kem.public),
            kem_signature=kem.signature,
            updated_at_ms=now_ms,
        )
    )
    if request.one_time_prekeys:
        await conn.execute(
            insert(one_time_prekeys),
            [
                {"cell_id": cell.id, "prekey_id": k.prekey_id, "public": bytes(k.public)}
                for k in request.one_time_prekeys
            ],
        )
    await conn.execute(
        insert(audit_log).values(
            at_ms=now_ms,
            actor="enrollment",
            action="cell.enroll",
            target=cell.name,
            detail=f'{{"one_time_prekeys": {len(request.one_time_prekeys)}}}',
        )
    )
    log.info("cell enrolled: %s", cell.name)
    return EnrollResponse(cell_id=cell.id, name=cell.name), cell.name
