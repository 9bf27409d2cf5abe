"""Admin API tokens: issuing, counting and checking them, and throttling failed attempts.

Theory of operation
-------------------
An admin token is 32 random bytes, url-safe base64 without padding (43 characters). It is shown
once, when created; the database keeps only SHA-256 of its text, so a copy of the database does
not grant admin access. A request authenticates with ``Authorization: Bearer <token>``: the
relay hashes the presented text and looks the hash up among tokens that are not revoked. Because
tokens are high-entropy, a plain hash (no salt, no slow KDF) is enough, and an index lookup on
the hash leaks nothing useful through timing.

A token that authenticates is always accepted, whatever happened before: failed attempts are
throttled, never the admins. Each failed guess (a bearer token that is unknown or revoked) is
counted by a :class:`FailureLimiter` against the client address *and* against the presented
token's fingerprint (the first 8 hex digits of its SHA-256: a script retrying a revoked token
from many addresses is throttled too). Once either has ``max_failures`` (10) failures within
``window_seconds`` (60 s), further *failures* get 429 with ``Retry-After`` instead of 401; a
request whose token is valid still passes, so anyone behind the same NAT or proxy cannot lock
the admins out by guessing. A request with no bearer token at all (no ``Authorization``
header, or another scheme) is refused with 401 and not counted: it guesses nothing.

What makes guessing infeasible is the token, not the limiter: a token is 256 random bits, so
even at a million guesses a second (far beyond what one relay answers) finding one of ``n``
live tokens takes about 2^256 / n / 10^6 seconds -- around 10^63 years per live token. The
limiter bounds what a flood costs: per address or fingerprint, at most 10 failures a minute
are answered 401 (the rest 429), and at most :data:`AUDIT_FAILURES_PER_MINUTE` failures a
minute, relay-wide, are written to the audit log (``admin.auth_failed``: address, method,
path and the fingerprint, never the token), each row counting the failures not recorded
since the row before. The limiter is in-process: with several relay nodes each node counts on
its own. Behind a reverse proxy the address is the proxy's unless uvicorn is told to trust
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
    "AUDIT_FAILURES_PER_MINUTE",
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
    "token_fingerprint",
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
    """Counts authentication failures per key (a client address, a token fingerprint) in a
    sliding window."""

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
        self.clock = clock
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
        """Whole seconds until failures of ``address`` (any key) are answered 401 again, or
        ``None`` if it is under the limit."""
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


AUDIT_FAILURES_PER_MINUTE = 10
"""Failed authentications written to the audit log per minute, relay-node-wide (a flood
cannot fill the database: at most 14,400 rows a day)."""


def token_fingerprint(token: str) -> str:
    """What logs, limits and the audit log know of a presented token: 8 hex digits of its
    SHA-256 (32 bits: enough to tell tokens apart, nothing towards finding one)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


class _AuditBudget:
    """A token bucket of audit rows for failed authentications; counts what it suppresses."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._tokens = float(per_minute)
        self._at = clock()
        self.suppressed = 0

    def take(self) -> bool:
        now = self._clock()
        elapsed, self._at = max(0.0, now - self._at), now
        self._tokens = min(self._per_minute, self._tokens + elapsed * self._per_minute / 60)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False


class AdminAuth:
    """A FastAPI dependency: the :class:`AdminPrincipal` of the request, or a 401/429 problem."""

    def __init__(
        self,
        engine: AsyncEngine,
        limiter: FailureLimiter,
        *,
        clock: Callable[[], float] = time.time,
        audit_per_minute: int = AUDIT_FAILURES_PER_MINUTE,
    ) -> None:
        self._engine = engine
        self._limiter = limiter
        self._clock = clock
        self._audit = _AuditBudget(audit_per_minute, limiter.clock)

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> AdminPrincipal:
        if credentials is None:  # guesses nothing: refused, not counted
            raise Problem(
                ProblemCode.UNAUTHORIZED,
                "an admin token is required",
                headers={"WWW-Authenticate": 'Bearer realm="liaison-admin"'},
            )
        query = select(admin_tokens.c.id, admin_tokens.c.name).where(
            admin_tokens.c.token_hash == hash_token(credentials.credentials),
            admin_tokens.c.revoked_at_ms.is_(None),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is not None:  # a valid token always passes (no lock-out of admins)
            return AdminPrincipal(token_id=row.id, name=row.name)
        address = request.client.host if request.client else "unknown"
        fingerprint = token_fingerprint(credentials.credentials)
        keys = (f"address:{address}", f"token:{fingerprint}")
        waits = [w for w in map(self._limiter.retry_after, keys) if w is not None]
        for key in keys:
            self._limiter.record_failure(key)
        log.warning("admin authentication failed from %s (token %s)", address, fingerprint)
        await self._record(request, address, fingerprint, limited=bool(waits))
        if waits:
            wait = max(waits)
            raise Problem(
                ProblemCode.RATE_LIMITED,
                f"too many failed authentication attempts; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        raise Problem(
            ProblemCode.UNAUTHORIZED,
            "unknown or revoked admin token",
            headers={"WWW-Authenticate": 'Bearer realm="liaison-admin", error="invalid_token"'},
        )

    async def _record(
        self, request: Request, address: str, fingerprint: str, *, limited: bool
    ) -> None:
        """An ``admin.auth_failed`` audit row, within the audit budget (never the token)."""
        if not self._audit.take():
            return
        suppressed, self._audit.suppressed = self._audit.suppressed, 0
        detail = {
            "method": request.method,
            "path": request.url.path[:128],
            "token_sha256": fingerprint,
            "rate_limited": limited,
            "unrecorded_before": suppressed,
        }
        try:
            async with write_transaction(self._engine) as conn:
                await audit.record(
                    conn,
                    at_ms=int(self._clock() * 1000),
                    actor="unauthenticated",
                    action="admin.auth_failed",
                    target=address,
                    detail=detail,
                )
        except Exception as exc:  # the refusal stands without its audit row
            log.error("could not audit a failed admin authentication: %s", type(exc).__name__)
