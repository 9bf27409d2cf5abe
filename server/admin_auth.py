"""Admin API tokens: issuing, counting and checking them, and throttling failed attempts.

Theory of operation
-------------------
An admin token is 32 random bytes, url-safe base64 without padding (43 characters). It is shown
once, when created; the database keeps only SHA-256 of its text, so a copy of the database does
not grant admin access. A request authenticates with ``Authorization: Bearer <token>``: the
relay hashes the presented text and looks the hash up among tokens that are not revoked. Because
tokens are high-entropy, a plain hash (no salt, no slow KDF) is enough, and an index lookup on
the hash leaks nothing useful through timing.

Each failed guess (a bearer token that is unknown or revoked) is counted against the client
address by a :class:`FailureLimiter`. Once an address has ``max_failures`` failures within
``window_seconds`` every request from it gets 429 with ``Retry-After`` -- even with a valid
token -- until the oldest failure leaves the window. A request with no bearer token at all
(no ``Authorization`` header, or another scheme) is refused with 401 but not counted: it
guesses nothing, and counting it would let anyone lock out the admins who share an address
with plain unauthenticated requests. The limiter is in-process: with several relay nodes each
node counts on its own, which still bounds guessing to ``nodes x max_failures`` per window.
Behind a reverse proxy the address is the proxy's unless uvicorn is told to trust
``X-Forwarded-For`` (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import audit
from .dialect import write_transaction
from .problems import Problem, ProblemCode
from .schema import admin_tokens

__all__ = [
    "TOKEN_NAME_MAX",
    "TOKEN_NAME_PATTERN",
    "AdminAuth",
    "AdminPrincipal",
    "FailureLimiter",
    "count_admin_tokens",
    "create_admin_token",
    "hash_token",
    "insert_admin_token",
    "new_token",
]

log = logging.getLogger("liaison.server.admin")

TOKEN_BYTES = 32
# ``name#id`` must fit the 64-character ``audit_log.actor`` column.
TOKEN_NAME_MAX = 48
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
_TOKEN_NAME_RE = re.compile(TOKEN_NAME_PATTERN)


def new_token() -> str:
    """A fresh token text: 32 random bytes, url-safe base64, no padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode()


def hash_token(token: str) -> bytes:
    """What the database stores for ``token``: SHA-256 of its UTF-8 text."""
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """The admin token a request authenticated with."""

    token_id: int
    name: str

    @property
    def actor(self) -> str:
        """How the audit log names this admin."""
        return f"{self.name}#{self.token_id}"


async def insert_admin_token(conn: AsyncConnection, name: str, now_ms: int) -> tuple[int, str]:
    """Store a new token named ``name`` in the caller's transaction; return ``(id, token)``.

    The token text is returned only here: show it to the admin once and forget it.
    """
    if not (len(name) <= TOKEN_NAME_MAX and _TOKEN_NAME_RE.fullmatch(name)):
        raise ValueError(f"token names are 1-{TOKEN_NAME_MAX} of [A-Za-z0-9._@-], letter first")
    token = new_token()
    result = await conn.execute(
        insert(admin_tokens)
        .values(name=name, token_hash=hash_token(token), created_at_ms=now_ms)
        .returning(admin_tokens.c.id)
    )
    return int(result.scalar_one()), token


async def create_admin_token(
    engine: AsyncEngine,
    name: str,
    *,
    actor: str = "console",
    clock: Callable[[], float] = time.time,
) -> str:
    """Create an admin token outside the API (``liaison server admin-token``, first start).

    Audited as ``token.create`` by ``actor``. Returns the token text, to be shown once.
    """
    now_ms = int(clock() * 1000)
    async with write_transaction(engine) as conn:
        token_id, token = await insert_admin_token(conn, name, now_ms)
        await audit.record(
            conn,
            at_ms=now_ms,
            actor=actor,
            action="token.create",
            target=name,
            detail={"id": token_id},
        )
    return token


async def count_admin_tokens(engine: AsyncEngine, *, include_revoked: bool = False) -> int:
    """How many admin tokens exist (by default only those not revoked)."""
    query = select(func.count()).select_from(admin_tokens)
    if not include_revoked:
        query = query.where(admin_tokens.c.revoked_at_ms.is_(None))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


class FailureLimiter:
    """Counts authentication failures per client address in a sliding window."""

    def __init__(
        self,
        max_failures: int = 10,
        window_seconds: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ) -> None:
        if max_failures < 1 or window_seconds <= 0:
            raise ValueError("max_failures must be >= 1 and window_seconds > 0")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._clock = clock
        self._max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or ``None`` if it may try now."""
        now = self._clock()
        failures = self._recent(address, now)
        if failures is None or len(failures) < self.max_failures:
            return None
        return max(1, math.ceil(failures[0] + self.window_seconds - now))

    def record_failure(self, address: str) -> None:
        now = self._clock()
        failures = self._recent(address, now)
        if failures is None:
            if len(self._failures) >= self._max_addresses:
                # Forget the address tracked longest; bounded memory beats perfect recall.
                del self._failures[next(iter(self._failures))]
            failures = self._failures[address] = deque()
        failures.append(now)
        if len(failures) > self.max_failures:
            failures.popleft()


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="An admin API token: `Authorization: Bearer <token>`.",
)


class AdminAuth:
    """A FastAPI dependency: the :class:`AdminPrincipal` of the request, or a 401/429 problem."""

    def __init__(self, engine: AsyncEngine, limiter: FailureLimiter) -> None:
        self._engine = engine
        self._limiter = limiter

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> AdminPrincipal:
        address = request.client.host if request.client else "unknown"
        wait = self._limiter.retry_after(address)
        if wait is not None:
            raise Problem(
                ProblemCode.RATE_LIMITED,
                f"too many failed authentication attempts; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        principal = None
        if credentials is not None:
            query = select(admin_tokens.c.id, admin_tokens.c.name).where(
                admin_tokens.c.token_hash == hash_token(credentials.credentials),
                admin_tokens.c.revoked_at_ms.is_(None),
            )
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).first()
            if row is not None:
                principal = AdminPrincipal(token_id=row.id, name=row.name)
        if principal is None:
            missing = credentials is None
            if not missing:  # only a presented token is a guess worth throttling
                self._limiter.record_failure(address)
            log.warning("admin authentication failed from %s", address)
            raise Problem(
                ProblemCode.UNAUTHORIZED,
                "an admin token is required" if missing else "unknown or revoked admin token",
                headers={
                    "WWW-Authenticate": 'Bearer realm="liaison-admin"'
                    if missing
                    else 'Bearer realm="liaison-admin", error="invalid_token"'
                },
            )
        return principal
