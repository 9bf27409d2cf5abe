"""Admin authentication, rate limiting, admin tokens and the audit log, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from liaison.server import schema
from liaison.server.admin import count_admin_tokens, create_admin_token
from liaison.server.admin_auth import FailureLimiter, hash_token

from .adminkit import AdminEnv, ManualClock, admin_env, assert_problem, audit_rows


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[AdminEnv]:
    async with admin_env(tmp_path) as environment:
        yield environment


EVERY_ROUTE = [
    ("POST", "/admin/cells"),
    ("GET", "/admin/cells"),
    ("GET", "/admin/cells/alpha"),
    ("POST", "/admin/cells/alpha/codes"),
    ("POST", "/admin/cells/alpha/suspend"),
    ("POST", "/admin/cells/alpha/resume"),
    ("POST", "/admin/cells/alpha/revoke"),
    ("POST", "/admin/channels"),
    ("GET", "/admin/channels"),
    ("DELETE", "/admin/channels/alpha/bravo"),
    ("POST", "/admin/tokens"),
    ("GET", "/admin/tokens"),
    ("DELETE", "/admin/tokens/1"),
    ("GET", "/admin/audit"),
]


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), EVERY_ROUTE)
async def test_every_route_needs_a_token(env: AdminEnv, method: str, path: str) -> None:
    async with env.other_client("10.0.0.1") as anonymous:
        response = await anonymous.request(method, path, json={"name": "x"})
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "required" in body["detail"]


@pytest.mark.parametrize(
    "authorization", ["Bearer wrong", "Basic cm9vdDpyb290", "Bearer", "bearer  ", "Token abc"]
)
async def test_bad_credentials_are_401(env: AdminEnv, authorization: str) -> None:
    headers = {"Authorization": authorization}
    response = await env.client.get("/admin/cells", headers=headers)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_valid_token_passes_after_50_failures_from_its_address(env: AdminEnv) -> None:
    """Item 11 of issue #10: guesses from behind the admins' NAT slow the guesser down (429
    after ten failures a minute) but never refuse a token that authenticates."""
    async with (
        env.other_client("10.0.0.9", token="guess") as guesser,
        env.other_client("10.0.0.9", token=env.token) as same_address,
        env.other_client("10.0.0.10", token=env.token) as elsewhere,
    ):
        statuses = []
        for i in range(50):
            statuses.append((await guesser.get(f"/admin/cells?try={i}")).status_code)
            env.monotonic.advance(0.5)
        assert statuses == [401] * 10 + [429] * 40
        response = await guesser.get("/admin/cells")
        assert_problem(response, 429, "rate_limited")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert (await same_address.get("/admin/cells")).status_code == 200
        assert (await elsewhere.get("/admin/cells")).status_code == 200
        env.monotonic.advance(60)  # the failures leave the window
        assert_problem(await guesser.get("/admin/cells"), 401, "unauthorized")


async def test_one_wrong_token_is_throttled_from_every_address(env: AdminEnv) -> None:
    """Failures count per token fingerprint too: a revoked token retried by a fleet of
    scripts is slowed down wherever it comes from."""
    for i in range(10):
        async with env.other_client(f"10.1.0.{i}", token="stale-token") as script:
            assert_problem(await script.get("/admin/cells"), 401, "unauthorized")
    async with env.other_client("10.1.0.99", token="stale-token") as script:
        assert_problem(await script.get("/admin/cells"), 429, "rate_limited")
    async with env.other_client("10.1.0.99", token=env.token) as admin:
        assert (await admin.get("/admin/cells")).status_code == 200


async def test_failed_authentications_are_audited_within_a_budget(env: AdminEnv) -> None:
    """Each failure is an ``admin.auth_failed`` row (address, path, 8 hex digits of the
    token's SHA-256, never the token), at most 10 a minute: a flood cannot fill the log."""
    guess = "not-a-token-" + "x" * 31
    async with env.other_client("10.0.0.7", token=guess) as guesser:
        for _ in range(50):
            await guesser.get("/admin/channels")
        rows = [r for r in await audit_rows(env.engine) if r["action"] == "admin.auth_failed"]
        assert len(rows) == 10
        first = json.loads(rows[0]["detail"])
        assert (rows[0]["actor"], rows[0]["target"]) == ("unauthenticated", "10.0.0.7")
        assert first == {
            "method": "GET",
            "path": "/admin/channels",
            "token_sha256": hashlib.sha256(guess.encode()).hexdigest()[:8],
            "rate_limited": False,
            "unrecorded_before": 0,
        }
        env.monotonic.advance(6)  # one row's worth of budget comes back
        await guesser.get("/admin/channels")
    rows = [r for r in await audit_rows(env.engine) if r["action"] == "admin.auth_failed"]
    assert len(rows) == 11
    last = json.loads(rows[-1]["detail"])
    assert (last["rate_limited"], last["unrecorded_before"]) == (True, 40)
    dumped = repr(rows) + (await env.client.get("/admin/audit?limit=1000")).text
    assert guess not in dumped
    assert hash_token(guess).hex() not in dumped


async def test_requests_without_a_token_are_refused_but_not_throttled(env: AdminEnv) -> None:
    """A request with no bearer token guesses nothing: 401, but it does not count towards the
    limit, so anonymous requests cannot lock out the admins who share an address."""
    async with (
        env.other_client("10.0.0.11") as anonymous,
        env.other_client("10.0.0.11", token=env.token) as admin,
    ):
        for _ in range(25):
            assert_problem(await anonymous.get("/admin/cells"), 401, "unauthorized")
            headers = {"Authorization": "Basic cm9vdDpyb290"}
            assert_problem(
                await anonymous.get("/admin/cells", headers=headers), 401, "unauthorized"
            )
        assert (await admin.get("/admin/cells")).status_code == 200


def test_failure_limiter_window() -> None:
    clock = ManualClock(0.0)
    limiter = FailureLimiter(3, 10.0, clock=clock, max_addresses=2)
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.record_failure("a")
    assert limiter.retry_after("a") == 10
    clock.advance(9.5)
    assert limiter.retry_after("a") == 1
    clock.advance(0.5)
    assert limiter.retry_after("a") is None
    for address in ("b", "c"):  # at most two addresses are tracked: "a" is forgotten first
        limiter.record_failure(address)
    assert limiter.retry_after("b") is None
    with pytest.raises(ValueError, match="max_failures"):
        FailureLimiter(0, 1.0)


# -- admin tokens ------------------------------------------------------------------------------


async def test_tokens_create_list_revoke(env: AdminEnv) -> None:
    response = await env.client.post("/admin/tokens", json={"name": "ops"})
    assert response.status_code == 201
    created = response.json()
    token = created["token"]
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert (created["id"], created["name"]) == (2, "ops")
    async with env.engine.connect() as conn:
        stored = (await conn.execute(select(schema.admin_tokens.c.token_hash))).scalars().all()
    assert hashlib.sha256(token.encode()).digest() in stored
    assert token.encode() not in stored

    async with env.other_client("10.0.0.2", token=token) as ops:
        assert (await ops.get("/admin/cells")).status_code == 200
        listed = (await env.client.get("/admin/tokens")).json()
        assert [(t["id"], t["name"], t["revoked_at"]) for t in listed] == [
            (1, "root", None),
            (2, "ops", None),
        ]
        assert all(set(t) == {"id", "name", "created_at", "revoked_at"} for t in listed)

        revoked = await env.client.delete("/admin/tokens/2")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        assert_problem(await ops.get("/admin/cells"), 401, "unauthorized")
    assert_problem(await env.client.delete("/admin/tokens/2"), 409, "invalid_state")
    assert_problem(await env.client.delete("/admin/tokens/99"), 404, "not_found")
    assert_problem(await env.client.delete("/admin/tokens/x"), 422, "validation_failed")
    assert await count_admin_tokens(env.engine) == 1
    assert await count_admin_tokens(env.engine, include_revoked=True) == 2


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 49, "ops\n"])
async def test_bad_token_names_are_422(env: AdminEnv, name: str) -> None:
    response = await env.client.post("/admin/tokens", json={"name": name})
    assert_problem(response, 422, "validation_failed")
    with pytest.raises(ValueError, match="token names"):
        await create_admin_token(env.engine, name)


async def test_a_token_may_revoke_itself_but_the_last_one_only_with_force(env: AdminEnv) -> None:
    body = assert_problem(await env.client.delete("/admin/tokens/1"), 409, "invalid_state")
    assert "last active admin token" in body["detail"]
    assert "force" in body["detail"]
    assert (await env.client.get("/admin/tokens")).status_code == 200  # still valid
    ops = (await env.client.post("/admin/tokens", json={"name": "ops"})).json()
    assert (await env.client.delete("/admin/tokens/1")).status_code == 200  # not the last
    assert_problem(await env.client.get("/admin/tokens"), 401, "unauthorized")
    async with env.other_client("10.0.0.3", token=ops["token"]) as last:
        assert_problem(await last.delete(f"/admin/tokens/{ops['id']}"), 409, "invalid_state")
        response = await last.delete(f"/admin/tokens/{ops['id']}", params={"force": "true"})
        assert response.status_code == 200
        assert_problem(await last.get("/admin/tokens"), 401, "unauthorized")
    assert await count_admin_tokens(env.engine) == 0


# -- audit log ---------------------------------------------------------------------------------


async def test_every_mutation_is_audited_without_secrets(env: AdminEnv) -> None:
    client = env.client
    codes = [(await client.post("/admin/cells", json={"name": n})).json() for n in ("a1", "b2")]
    await client.post("/admin/cells/a1/codes")
    await client.post("/admin/channels", json={"a": "a1", "b": "b2"})
    await client.delete("/admin/channels/a1/b2")
    new_token = (await client.post("/admin/tokens", json={"name": "ops"})).json()["token"]
    await client.delete("/admin/tokens/2")
    await client.post("/admin/cells/b2/revoke")
    # Failed or read-only requests leave no trace.
    await client.post("/admin/cells", json={"name": "a1"})
    await client.post("/admin/cells/b2/resume")
    await client.get("/admin/cells/a1")

    rows = await audit_rows(env.engine)
    assert [(r["actor"], r["action"], r["target"]) for r in rows] == [
        ("console", "token.create", "root"),
        ("root#1", "cell.create", "a1"),
        ("root#1", "cell.create", "b2"),
        ("root#1", "cell.code", "a1"),
        ("root#1", "channel.create", "a1/b2"),
        ("root#1", "channel.delete", "a1/b2"),
        ("root#1", "token.create", "ops"),
        ("root#1", "token.revoke", "ops"),
        ("root#1", "cell.revoke", "b2"),
    ]
    assert all(isinstance(json.loads(r["detail"]), dict) for r in rows)

    secrets = [env.token, new_token, *env.hooks.codes]
    assert {c["enrollment_code"] for c in codes} <= set(env.hooks.codes)
    forbidden = [
        *secrets,
        *(hashlib.sha256(s.encode()).hexdigest() for s in secrets),
        *(hash_token(s).hex() for s in secrets),
    ]
    dumped = repr(rows) + (await client.get("/admin/audit?limit=1000")).text
    for secret in forbidden:
        assert secret not in dumped


async def test_audit_listing_newest_first_with_limit(env: AdminEnv) -> None:
    for name in ("a1", "b2", "c3"):
        await env.client.post("/admin/cells", json={"name": name})
    entries = (await env.client.get("/admin/audit", params={"limit": 2})).json()
    assert [(e["action"], e["target"]) for e in entries] == [
        ("cell.create", "c3"),
        ("cell.create", "b2"),
    ]
    assert entries[0]["actor"] == "root#1"
    assert entries[0]["detail"]["id"] == (await env.client.get("/admin/cells/c3")).json()["id"]
    assert len((await env.client.get("/admin/audit")).json()) == 4
    for bad in ("0", "1001", "many"):
        response = await env.client.get("/admin/audit", params={"limit": bad})
        assert_problem(response, 422, "validation_failed")


async def test_audit_filters_by_action_or_family(env: AdminEnv) -> None:
    for name in ("a1", "b2"):
        await env.client.post("/admin/cells", json={"name": name})
    await env.client.post("/admin/cells/a1/codes")
    await env.client.post("/admin/tokens", json={"name": "ops"})

    async def actions(action: str) -> list[tuple[str, str]]:
        response = await env.client.get("/admin/audit", params={"action": action})
        assert response.status_code == 200, response.text
        return [(e["action"], e["target"]) for e in response.json()]

    assert await actions("cell.create") == [("cell.create", "b2"), ("cell.create", "a1")]
    assert await actions("cell.*") == [
        ("cell.code", "a1"),
        ("cell.create", "b2"),
        ("cell.create", "a1"),
    ]
    assert await actions("token.*") == [("token.create", "ops"), ("token.create", "root")]
    assert await actions("cell.revoke") == []
    assert await actions("cell") == []  # exact: no family without ".*"
    for bad in ("cell%", "*", "cell.*.x", "Cell.create", "x" * 65):
        response = await env.client.get("/admin/audit", params={"action": bad})
        assert_problem(response, 422, "validation_failed")
