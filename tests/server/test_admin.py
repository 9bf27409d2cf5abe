"""The admin API end to end: a real FastAPI app, real HTTP (ASGI), a real SQLite file."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Table, func, select

from liaison.server import schema
from liaison.server.directory import are_paired, peers_of

from .adminkit import (
    CODE_TTL,
    WALL_START,
    AdminEnv,
    add_rows,
    admin_env,
    assert_problem,
    audit_rows,
    cell_id,
    set_cell,
)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[AdminEnv]:
    async with admin_env(tmp_path) as environment:
        yield environment


async def add_cell(env: AdminEnv, name: str) -> dict[str, object]:
    response = await env.client.post("/admin/cells", json={"name": name})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def count(env: AdminEnv, table: Table, **where: bytes) -> int:
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    async with env.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


# -- cells -------------------------------------------------------------------------------------


async def test_create_cell_returns_a_one_time_code_and_stores_only_its_hash(env: AdminEnv) -> None:
    body = await add_cell(env, "attache-paris")
    assert re.fullmatch(r"[0-9a-f]{32}", str(body["id"]))
    assert body["name"] == "attache-paris"
    assert body["status"] == "pending"
    assert body["enrollment_code"] == env.hooks.codes[-1]
    expires = datetime.fromisoformat(str(body["code_expires_at"]))
    assert expires.timestamp() == WALL_START + CODE_TTL
    async with env.engine.connect() as conn:
        rows = (await conn.execute(select(schema.enrollment_codes))).all()
    assert len(rows) == 1
    assert rows[0].cell_id == bytes.fromhex(str(body["id"]))
    assert rows[0].secret_hash == hashlib.sha256(env.hooks.codes[-1].encode()).digest()
    assert rows[0].expires_at_ms == int((WALL_START + CODE_TTL) * 1000)
    assert rows[0].used_at_ms is None


@pytest.mark.parametrize("name", ["a", "0", "a.b_c-d", "x" * 64])
async def test_valid_cell_names(env: AdminEnv, name: str) -> None:
    assert (await add_cell(env, name))["name"] == name


@pytest.mark.parametrize(
    "name", ["", "Alpha", "-lead", ".lead", "_lead", "x" * 65, "a b", "bad\n", "é", "a/b"]
)
async def test_invalid_cell_names_are_422_without_echoing_input(env: AdminEnv, name: str) -> None:
    response = await env.client.post("/admin/cells", json={"name": name})
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["loc"] == ["body", "name"]
    assert set(body["errors"][0]) == {"loc", "msg"}
    if len(name) > 1:
        assert name not in response.text


@pytest.mark.parametrize(
    "payload", [{}, {"name": 7}, {"name": "ok", "extra": "S3CRET-VALUE"}, ["ok"]]
)
async def test_malformed_bodies_are_422(env: AdminEnv, payload: object) -> None:
    response = await env.client.post("/admin/cells", json=payload)
    assert_problem(response, 422, "validation_failed")
    assert "S3CRET-VALUE" not in response.text


async def test_duplicate_cell_is_409(env: AdminEnv) -> None:
    await add_cell(env, "alpha")
    response = await env.client.post("/admin/cells", json={"name": "alpha"})
    assert_problem(response, 409, "conflict")
    assert await count(env, schema.cells) == 1


async def test_list_and_show_cells(env: AdminEnv) -> None:
    for name in ("bravo", "alpha", "charlie"):
        await add_cell(env, name)
    listed = (await env.client.get("/admin/cells")).json()
    assert [cell["name"] for cell in listed] == ["alpha", "bravo", "charlie"]
    assert {cell["status"] for cell in listed} == {"pending"}

    shown = (await env.client.get("/admin/cells/alpha")).json()
    assert shown["identity_fingerprint"] is None
    assert shown["enrolled_at"] is None
    assert (shown["channels"], shown["queue_depth"], shown["one_time_prekeys"]) == ([], 0, 0)

    alpha, bravo = await cell_id(env.engine, "alpha"), await cell_id(env.engine, "bravo")
    identity = bytes(range(32))
    await set_cell(env.engine, "alpha", status="active", identity_key=identity, enrolled_at_ms=5)
    for peer in ("bravo", "charlie"):
        await env.client.post("/admin/channels", json={"a": "alpha", "b": peer})
    envelope = {"sender": bravo, "precedence": 3, "expires_at": 2**40, "received_at_ms": 1}
    await add_rows(
        env.engine,
        schema.envelopes,
        [
            {**envelope, "recipient": alpha, "message_id": bytes([i]) * 16, "size": 1, "data": b"x"}
            for i in range(3)
        ],
    )
    await add_rows(
        env.engine,
        schema.one_time_prekeys,
        [{"cell_id": alpha, "prekey_id": i, "public": bytes(32)} for i in range(5)],
    )

    shown = (await env.client.get("/admin/cells/alpha")).json()
    assert shown["status"] == "active"
    assert shown["identity_fingerprint"] == hashlib.sha256(identity).hexdigest()[:16]
    assert shown["channels"] == ["bravo", "charlie"]
    assert (shown["queue_depth"], shown["one_time_prekeys"]) == (3, 5)
    assert shown["enrolled_at"] is not None
    assert (await env.client.get("/admin/cells/bravo")).json()["channels"] == ["alpha"]


async def test_show_unknown_cell_is_404(env: AdminEnv) -> None:
    assert_problem(await env.client.get("/admin/cells/nobody"), 404, "not_found")


async def test_new_code_replaces_unused_codes_of_a_pending_cell(env: AdminEnv) -> None:
    await add_cell(env, "alpha")
    response = await env.client.post("/admin/cells/alpha/codes")
    assert response.status_code == 201
    assert response.json()["enrollment_code"] == env.hooks.codes[-1] != env.hooks.codes[0]
    async with env.engine.connect() as conn:
        hashes = (await conn.execute(select(schema.enrollment_codes.c.secret_hash))).scalars()
        assert list(hashes) == [hashlib.sha256(env.hooks.codes[-1].encode()).digest()]

    assert_problem(await env.client.post("/admin/cells/nobody/codes"), 404, "not_found")
    await set_cell(env.engine, "alpha", status="active")
    assert_problem(await env.client.post("/admin/cells/alpha/codes"), 409, "invalid_state")


# The whole lifecycle table, written out by hand (not derived from the code under test).
LIFECYCLE = [
    ("pending", "suspend", None),
    ("pending", "resume", None),
    ("pending", "revoke", "revoked"),
    ("active", "suspend", "suspended"),
    ("active", "resume", None),
    ("active", "revoke", "revoked"),
    ("suspended", "suspend", None),
    ("suspended", "resume", "active"),
    ("suspended", "revoke", "revoked"),
    ("revoked", "suspend", None),
    ("revoked", "resume", None),
    ("revoked", "revoke", None),
]


@pytest.mark.parametrize(("start", "action", "result"), LIFECYCLE)
async def test_cell_lifecycle(env: AdminEnv, start: str, action: str, result: str | None) -> None:
    await add_cell(env, "alpha")
    await set_cell(env.engine, "alpha", status=start)
    before = len(await audit_rows(env.engine))
    env.wall.advance(10)
    response = await env.client.post(f"/admin/cells/alpha/{action}")
    alpha = await cell_id(env.engine, "alpha")
    if result is None:
        assert_problem(response, 409, "invalid_state")
        assert env.hooks.calls == []
        assert len(await audit_rows(env.engine)) == before
        assert (await env.client.get("/admin/cells/alpha")).json()["status"] == start
        return
    assert response.status_code == 200, response.text
    assert response.json()["status"] == result
    assert datetime.fromisoformat(response.json()["status_changed_at"]).timestamp() == (
        WALL_START + 10
    )
    assert (await env.client.get("/admin/cells/alpha")).json()["status"] == result
    assert env.hooks.calls == [(alpha, result, [])]
    last = (await audit_rows(env.engine))[-1]
    assert (last["action"], last["target"], last["actor"]) == (f"cell.{action}", "alpha", "root#1")
    assert f'"from":"{start}"' in last["detail"]


async def test_status_change_of_unknown_cell_is_404(env: AdminEnv) -> None:
    for action in ("suspend", "resume", "revoke"):
        assert_problem(await env.client.post(f"/admin/cells/ghost/{action}"), 404, "not_found")


async def test_revoke_purges_queue_and_prekeys_and_tells_peers(env: AdminEnv) -> None:
    for name in ("alpha", "bravo", "charlie", "delta"):
        await add_cell(env, name)
        await set_cell(env.engine, name, status="active")
    alpha, bravo, charlie = [await cell_id(env.engine, n) for n in ("alpha", "bravo", "charlie")]
    for peer in ("bravo", "charlie"):
        await env.client.post("/admin/channels", json={"a": peer, "b": "alpha"})
    await env.client.post("/admin/channels", json={"a": "bravo", "b": "delta"})
    common = {"precedence": 3, "expires_at": 2**40, "received_at_ms": 1, "size": 1, "data": b"x"}
    await add_rows(
        env.engine,
        schema.envelopes,
        [
            {**common, "recipient": alpha, "sender": bravo, "message_id": b"a" * 16},
            {**common, "recipient": alpha, "sender": charlie, "message_id": b"b" * 16},
            {**common, "recipient": bravo, "sender": alpha, "message_id": b"c" * 16},
        ],
    )
    await add_rows(
        env.engine,
        schema.one_time_prekeys,
        [
            {"cell_id": cell, "prekey_id": i, "public": bytes(32)}
            for cell in (alpha, bravo)
            for i in range(4)
        ],
    )

    response = await env.client.post("/admin/cells/alpha/revoke")
    assert response.json()["status"] == "revoked"
    assert await count(env, schema.envelopes, recipient=alpha) == 0
    assert await count(env, schema.envelopes, recipient=bravo) == 1
    assert await count(env, schema.one_time_prekeys, cell_id=alpha) == 0
    assert await count(env, schema.one_time_prekeys, cell_id=bravo) == 4
    assert env.hooks.calls == [(alpha, "revoked", sorted([bravo, charlie]))]
    last = (await audit_rows(env.engine))[-1]
    assert '"purged_envelopes":2' in last["detail"]
    assert '"purged_one_time_prekeys":4' in last["detail"]


async def test_a_failing_hook_does_not_undo_the_change(env: AdminEnv) -> None:
    await add_cell(env, "alpha")
    await add_cell(env, "bravo")
    env.hooks.fail = True
    response = await env.client.post("/admin/channels", json={"a": "alpha", "b": "bravo"})
    assert response.status_code == 201
    response = await env.client.post("/admin/cells/alpha/revoke")
    assert response.status_code == 200
    assert (await env.client.get("/admin/cells/alpha")).json()["status"] == "revoked"
    assert len(env.hooks.calls) == 1
    assert len((await env.client.get("/admin/channels")).json()) == 1


# -- channels ----------------------------------------------------------------------------------


async def test_channels_create_list_delete(env: AdminEnv) -> None:
    for name in ("alpha", "bravo", "charlie"):
        await add_cell(env, name)
    alpha, bravo = await cell_id(env.engine, "alpha"), await cell_id(env.engine, "bravo")
    response = await env.client.post("/admin/channels", json={"a": "bravo", "b": "alpha"})
    assert response.status_code == 201
    assert env.hooks.channel_changes == 1
    first, second = sorted([(alpha, "alpha"), (bravo, "bravo")])
    assert (response.json()["a"], response.json()["b"]) == (first[1], second[1])
    async with env.engine.connect() as conn:
        row = (await conn.execute(select(schema.channels))).one()
    assert (row.cell_a, row.cell_b) == (first[0], second[0])
    assert await are_paired(env.engine, alpha, bravo)
    assert await are_paired(env.engine, bravo, alpha)
    assert await peers_of(env.engine, alpha) == [bravo]

    await env.client.post("/admin/channels", json={"a": "alpha", "b": "charlie"})
    listed = (await env.client.get("/admin/channels")).json()
    assert len(listed) == 2
    assert {frozenset((c["a"], c["b"])) for c in listed} == {
        frozenset(("alpha", "bravo")),
        frozenset(("alpha", "charlie")),
    }

    response = await env.client.delete("/admin/channels/alpha/bravo")
    assert response.status_code == 204
    assert response.content == b""
    assert env.hooks.channel_changes == 3
    assert not await are_paired(env.engine, alpha, bravo)
    assert_problem(await env.client.delete("/admin/channels/bravo/alpha"), 404, "not_found")
    assert_problem(await env.client.delete("/admin/channels/alpha/ghost"), 404, "not_found")
    response = await env.client.delete("/admin/channels/charlie/alpha")  # either order
    assert response.status_code == 204
    assert (await env.client.get("/admin/channels")).json() == []


async def test_channel_errors(env: AdminEnv) -> None:
    for name in ("alpha", "bravo", "charlie"):
        await add_cell(env, name)
    await env.client.post("/admin/channels", json={"a": "alpha", "b": "bravo"})
    cases = [
        ({"a": "bravo", "b": "alpha"}, 409, "conflict"),
        ({"a": "alpha", "b": "bravo"}, 409, "conflict"),
        ({"a": "alpha", "b": "alpha"}, 422, "validation_failed"),
        ({"a": "alpha", "b": "ghost"}, 404, "not_found"),
        ({"a": "ghost", "b": "alpha"}, 404, "not_found"),
        ({"a": "alpha"}, 422, "validation_failed"),
    ]
    for payload, status, code in cases:
        assert_problem(await env.client.post("/admin/channels", json=payload), status, code)
    assert env.hooks.channel_changes == 1  # failures change nothing
    await env.client.post("/admin/cells/charlie/revoke")
    for a, b in (("alpha", "charlie"), ("charlie", "bravo")):
        response = await env.client.post("/admin/channels", json={"a": a, "b": b})
        assert_problem(response, 409, "invalid_state")
    assert await count(env, schema.channels) == 1
