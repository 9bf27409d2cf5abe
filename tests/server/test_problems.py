"""RFC 9457 problem documents for every kind of error, and the admin API's OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from liaison.server.problems import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    ProblemCode,
    install_problem_handlers,
)

from .adminkit import AdminEnv, admin_env, assert_problem


class Body(BaseModel):
    passphrase: int


def build_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("database password is hunter2")

    @app.get("/teapot")
    async def teapot() -> None:
        raise Problem(
            ProblemCode.CONFLICT, "the pot is full", title="Pot full", headers={"X-Pot": "1"}
        )

    @app.post("/typed")
    async def typed(body: Body) -> int:
        return body.passphrase

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # The ASGI server would log the re-raised exception; here the transport swallows it.
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        yield client


async def test_unhandled_exception_is_500_without_details(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom")
    body = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    assert body["detail"] == "the server hit an unexpected error"


async def test_problem_keeps_status_title_and_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/teapot")
    body = assert_problem(response, 409, "conflict")
    assert (body["title"], body["detail"]) == ("Pot full", "the pot is full")
    assert response.headers["x-pot"] == "1"


async def test_validation_errors_list_loc_and_msg_only(client: httpx.AsyncClient) -> None:
    response = await client.post("/typed", json={"passphrase": "correct horse battery"})
    body = assert_problem(response, 422, "validation_failed")
    assert [set(e) for e in body["errors"]] == [{"loc", "msg"}]
    assert body["errors"][0]["loc"] == ["body", "passphrase"]
    assert "correct horse" not in response.text
    invalid_json = await client.post(
        "/typed", content=b'{"passphrase": "s3cret', headers={"content-type": "application/json"}
    )
    assert_problem(invalid_json, 422, "validation_failed")
    assert "s3cret" not in invalid_json.text


async def test_routing_errors_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not_found")
    assert_problem(await client.delete("/boom"), 405, "method_not_allowed")


async def test_a_405_allows_every_method_of_the_path(env: AdminEnv) -> None:
    """RFC 9110 §15.5.6: ``Allow`` lists every method of the resource, also when two routes
    serve one path (Starlette named only the first route's; found by schemathesis)."""
    response = await env.client.request("OPTIONS", "/admin/cells")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"
    response = await env.client.put("/admin/cells/alpha/suspend")
    assert response.headers["allow"] == "POST"


async def test_an_undecodable_json_body_is_a_documented_400(env: AdminEnv) -> None:
    response = await env.client.post(
        "/admin/cells", content=b'{"name": "\xff"}', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "bad_request")


async def test_an_oversized_body_is_refused_before_it_is_read(env: AdminEnv) -> None:
    """A body above the admin routes' limit is a 413 problem, with or without a token (the
    body would otherwise be buffered whole before authentication)."""
    body = b'{"name": "' + b"a" * 100_000 + b'"}'
    headers = {"content-type": "application/json"}
    response = await env.client.post("/admin/cells", content=body, headers=headers)
    assert_problem(response, 413, "payload_too_large")
    async with env.other_client("10.0.0.3") as anonymous:
        chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))

        async def stream() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for chunk in chunks:
                yield chunk

        response = await anonymous.post("/admin/cells", content=stream(), headers=headers)
    assert_problem(response, 413, "payload_too_large")
    assert (await env.client.get("/admin/cells")).json() == []


def test_problem_defaults() -> None:
    problem = Problem(ProblemCode.RATE_LIMITED, "slow down")
    assert (problem.status, problem.title) == (429, "Too many requests")
    assert problem.to_dict() == {
        "type": "urn:liaison:problem:rate_limited",
        "title": "Too many requests",
        "status": 429,
        "detail": "slow down",
        "code": "rate_limited",
    }


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[AdminEnv]:
    async with admin_env(tmp_path) as environment:
        yield environment


async def test_admin_openapi_documents_models_problems_and_security(env: AdminEnv) -> None:
    spec = (await env.client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths) == {
        "/admin/cells",
        "/admin/cells/{name}",
        "/admin/cells/{name}/codes",
        "/admin/cells/{name}/suspend",
        "/admin/cells/{name}/resume",
        "/admin/cells/{name}/revoke",
        "/admin/channels",
        "/admin/channels/{a}/{b}",
        "/admin/tokens",
        "/admin/tokens/{token_id}",
        "/admin/audit",
    }
    create = paths["/admin/cells"]["post"]
    # 400: a JSON body that cannot even be decoded (not UTF-8; found by schemathesis);
    # 413: a body above the admin routes' limit.
    assert set(create["responses"]) == {"201", "400", "401", "409", "413", "422", "429"}
    assert "400" not in paths["/admin/cells"]["get"]["responses"]  # no body, no 400
    assert PROBLEM_MEDIA_TYPE in create["responses"]["409"]["content"]
    ok = create["responses"]["201"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/CellCreated"}
    assert create["security"] == [{"AdminToken": []}]
    assert spec["components"]["securitySchemes"]["AdminToken"]["scheme"] == "bearer"
    revoke = paths["/admin/cells/{name}/revoke"]["post"]
    assert {"404", "409"} <= set(revoke["responses"])
    assert "Revoke" in revoke["description"]
    for path in paths.values():
        for operation in path.values():
            assert operation.get("summary") or operation.get("description")


async def test_every_admin_error_response_is_documented_as_a_problem(env: AdminEnv) -> None:
    spec = (await env.client.get("/openapi.json")).json()
    for path in spec["paths"].values():
        for operation in path.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["content"][PROBLEM_MEDIA_TYPE]["schema"] == {
                        "$ref": "#/components/schemas/ProblemDetails"
                    }
    assert "HTTPValidationError" not in spec["components"]["schemas"]
