"""HTTP errors as RFC 9457 problem details (``application/problem+json``).

Theory of operation
-------------------
Every error the relay's HTTP side returns has one shape::

    {"type": "urn:liaison:problem:not_found", "title": "Not found", "status": 404,
     "detail": "no cell named 'alpha'", "code": "not_found"}

``code`` is the stable, machine-readable part (a :class:`ProblemCode`); scripts and the
``liaison admin`` CLI branch on it, never on ``title`` or ``detail``, which are for humans and may
change. ``type`` is derived from ``code`` so the two never disagree.

Route code raises :class:`Problem`; :func:`install_problem_handlers` maps it, FastAPI's request
validation errors, Starlette's own HTTP errors (unknown route, wrong method) and any unhandled
exception to that shape in one place:

* ``Problem`` -> its own status, code, title, detail and headers (e.g. ``WWW-Authenticate``).
* ``RequestValidationError`` -> 422 ``validation_failed`` with ``errors: [{loc, msg}]``. The
  offending input is never echoed back: a mistyped field may hold a secret.
* ``HTTPException`` -> the same status, the code for that status.
* anything else -> 500 ``internal_error`` with a fixed detail. The traceback goes to the server
  log (Starlette re-raises after responding, so the ASGI server logs it), never to the client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "Problem",
    "ProblemCode",
    "ProblemDetails",
    "ValidationItem",
    "install_problem_handlers",
    "problem_responses",
    "problem_type",
    "read_bounded_body",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})

log = logging.getLogger("liaison.server.problems")


class ProblemCode(StrEnum):
    """Stable error codes. Never rename a member: clients match on the value."""

    BAD_REQUEST = "bad_request"
    VALIDATION_FAILED = "validation_failed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    INVALID_STATE = "invalid_state"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"
    UNAVAILABLE = "unavailable"


# The default status and title of each code; a Problem may override the title.
_DEFAULTS: Mapping[ProblemCode, tuple[int, str]] = {
    ProblemCode.BAD_REQUEST: (400, "Bad request"),
    ProblemCode.VALIDATION_FAILED: (422, "Validation failed"),
    ProblemCode.UNAUTHORIZED: (401, "Unauthorized"),
    ProblemCode.FORBIDDEN: (403, "Forbidden"),
    ProblemCode.NOT_FOUND: (404, "Not found"),
    ProblemCode.METHOD_NOT_ALLOWED: (405, "Method not allowed"),
    ProblemCode.CONFLICT: (409, "Conflict"),
    ProblemCode.INVALID_STATE: (409, "Invalid state"),
    ProblemCode.PAYLOAD_TOO_LARGE: (413, "Payload too large"),
    ProblemCode.RATE_LIMITED: (429, "Too many requests"),
    ProblemCode.INTERNAL_ERROR: (500, "Internal error"),
    ProblemCode.UNAVAILABLE: (503, "Service unavailable"),
}

# The code used for an HTTP status raised outside our own Problem (Starlette's 404/405 ...).
_CODE_FOR_STATUS: Mapping[int, ProblemCode] = {
    401: ProblemCode.UNAUTHORIZED,
    403: ProblemCode.FORBIDDEN,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    409: ProblemCode.CONFLICT,
    413: ProblemCode.PAYLOAD_TOO_LARGE,
    422: ProblemCode.VALIDATION_FAILED,
    429: ProblemCode.RATE_LIMITED,
    503: ProblemCode.UNAVAILABLE,
}


def problem_type(code: ProblemCode) -> str:
    """The RFC 9457 ``type`` URI of ``code`` (a stable identifier, not a web page)."""
    return f"urn:liaison:problem:{code.value}"


class Problem(Exception):
    """Raise this from route code to answer with a problem document.

    ``status`` defaults to the usual status of ``code`` and ``title`` to its usual title.
    ``detail`` is shown to the human on the other end: it must never hold a secret.
    """

    def __init__(
        self,
        code: ProblemCode,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        default_status, default_title = _DEFAULTS[code]
        self.code = code
        self.status = status if status is not None else default_status
        self.title = title if title is not None else default_title
        self.detail = detail
        self.headers = dict(headers or {})
        super().__init__(f"{self.status} {code.value}: {detail}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": problem_type(self.code),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code.value,
        }


class ValidationItem(BaseModel):
    """One rejected input: where it was (``["body", "name"]``) and why."""

    loc: list[str | int]
    msg: str


class ProblemDetails(BaseModel):
    """The body of every error response (RFC 9457)."""

    type: str = Field(examples=["urn:liaison:problem:not_found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no cell named 'alpha'"])
    code: ProblemCode
    errors: list[ValidationItem] | None = Field(
        default=None, description="Only for validation_failed: each rejected input."
    )


_STATUS_DESCRIPTIONS: Mapping[int, str] = {
    400: "The request body could not be decoded",
    413: "The request body is larger than this endpoint accepts",
    401: "Missing, unknown or revoked admin token",
    404: "No such object",
    409: "Conflicts with an existing object or the object's state",
    422: "The request failed validation",
    429: "Too many failed authentication attempts from this address",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting problem documents for ``statuses``."""
    return {
        status: {
            "model": ProblemDetails,
            "description": _STATUS_DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for status in statuses
    }


async def read_bounded_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 ``payload_too_large`` problem as soon as it exceeds
    ``limit`` bytes: a declared ``Content-Length`` above it is refused before anything is
    read, and a body without one is counted as it streams in, so no client can make the
    server buffer more than ``limit`` bytes. Later ``request.body()`` / ``request.json()``
    calls are served from what was read (Starlette caches the body on the request)."""
    too_large = Problem(
        ProblemCode.PAYLOAD_TOO_LARGE, f"the request body may be at most {limit} bytes"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    request._body = bytes(body)  # what Request.body() returns from now on
    return request._body


def _response(
    body: dict[str, Any], status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE
    )


def _validation_items(errors: Iterable[Any]) -> list[dict[str, Any]]:
    items = []
    for error in errors:
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        # Only ``loc`` and ``msg``: pydantic's ``input`` and ``ctx`` can echo what was sent.
        items.append({"loc": loc, "msg": str(error.get("msg", "invalid value"))})
    return items


async def _on_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return _response(exc.to_dict(), exc.status, exc.headers)


async def _on_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = _validation_items(exc.errors())
    where = ", ".join(".".join(str(p) for p in item["loc"]) for item in items) or "request"
    problem = Problem(ProblemCode.VALIDATION_FAILED, f"invalid input: {where}")
    return _response({**problem.to_dict(), "errors": items}, problem.status)


def _allowed_methods(request: Request) -> str | None:
    """Every documented method at the request's path, for the ``Allow`` header of a 405 (RFC
    9110 §15.5.6: it lists them all). Starlette names only the methods of the first route
    whose path matched, so a path served by two routes (``GET`` and ``POST /admin/cells``)
    would advertise just one. ``None`` for a path the OpenAPI document does not describe."""
    app = request.app
    if not isinstance(app, FastAPI):
        return None
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        parts = re.split(r"(\{[^/}]+\})", template)  # "/cells/{name}" -> a regex
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        if re.fullmatch(pattern, path):
            methods.update(method.upper() for method in operations if method in _HTTP_METHODS)
    return ", ".join(sorted(methods)) or None


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_FOR_STATUS.get(exc.status_code)
    if code is None:
        code = ProblemCode.BAD_REQUEST if exc.status_code < 500 else ProblemCode.INTERNAL_ERROR
    detail = exc.detail if isinstance(exc.detail, str) else _DEFAULTS[code][1]
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allow = _allowed_methods(request)
        if allow is not None:
            headers["Allow"] = allow
    problem = Problem(code, detail, status=exc.status_code, headers=headers)
    return _response(problem.to_dict(), problem.status, problem.headers)


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    problem = Problem(ProblemCode.INTERNAL_ERROR, "the server hit an unexpected error")
    return _response(problem.to_dict(), problem.status)


def _document_problems_as_problem_json(app: FastAPI) -> None:
    """FastAPI files a ``responses=`` model under the route's media type (application/json);
    move it to ``application/problem+json`` wherever :func:`problem_responses` asked for that.

    Also document, on every operation that takes a JSON body, the 400 ``bad_request`` FastAPI
    answers when the body cannot be decoded at all (e.g. it is not UTF-8; JSON syntax errors
    are 422 ``validation_failed``) and the 413 ``payload_too_large`` of a body above the
    route's limit (:func:`read_bounded_body`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        spec = generate()  # FastAPI caches it; the changes below are idempotent
        schemas = spec.get("components", {}).get("schemas", {})
        problem_schema = {"$ref": "#/components/schemas/ProblemDetails"}
        for path in spec.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                for response in responses.values():
                    content = response.get("content", {})
                    if PROBLEM_MEDIA_TYPE in content and "application/json" in content:
                        content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
                body = operation.get("requestBody", {}).get("content", {})
                if "application/json" not in body or "ProblemDetails" not in schemas:
                    continue
                for status in (400, 413):
                    responses.setdefault(
                        str(status),
                        {
                            "description": _STATUS_DESCRIPTIONS[status],
                            "content": {PROBLEM_MEDIA_TYPE: {"schema": problem_schema}},
                        },
                    )
        return spec

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error raised while handling a request of ``app`` as a problem document,
    and document error responses declared with :func:`problem_responses` as such.

    Call this once, before the app serves its first request.
    """
    _document_problems_as_problem_json(app)
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unhandled)
