"""The HTTP side of ``liaison admin``: one request to the relay's admin API, errors mapped.

Theory of operation
-------------------
:class:`AdminContext` holds the relay URL and admin token (checked only when a request is about
to be made, so ``--help`` always works) and makes each request with httpx. A 2xx answer is
decoded from JSON. Anything else raises an :class:`AdminCliError`, which the ``admin`` group
prints as one line, ``error: <title>: <detail> (<code>)``, before exiting with the status
:data:`EXIT_CODES` gives the server's stable problem code (RFC 9457), or ``unreachable`` /
``usage`` for failures that never reached the server.

This module must not import ``liaison.server`` (the client installs without server
dependencies), so problem codes are matched as plain strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import click
import httpx

__all__ = [
    "EXIT_CODES",
    "EXIT_CONFLICT",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_OTHER",
    "EXIT_UNAUTHORIZED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "AdminCliError",
    "AdminContext",
]

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAUTHORIZED = 5
EXIT_UNREACHABLE = 6

# Problem code (from the server) -> exit status.
EXIT_CODES: Mapping[str, int] = {
    "validation_failed": EXIT_USAGE,
    "bad_request": EXIT_USAGE,
    "usage": EXIT_USAGE,
    "not_found": EXIT_NOT_FOUND,
    "conflict": EXIT_CONFLICT,
    "invalid_state": EXIT_CONFLICT,
    "unauthorized": EXIT_UNAUTHORIZED,
    "forbidden": EXIT_UNAUTHORIZED,
    "unavailable": EXIT_UNREACHABLE,
    "unreachable": EXIT_UNREACHABLE,
}
_EXIT_FOR_STATUS: Mapping[int, int] = {
    400: EXIT_USAGE,
    401: EXIT_UNAUTHORIZED,
    403: EXIT_UNAUTHORIZED,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    422: EXIT_USAGE,
    502: EXIT_UNREACHABLE,
    503: EXIT_UNREACHABLE,
    504: EXIT_UNREACHABLE,
}


class AdminCliError(Exception):
    """A failure to report as one line, ``error: <title>: <detail> (<code>)``, then exit."""

    def __init__(self, title: str, detail: str, code: str, exit_code: int) -> None:
        super().__init__(f"{title}: {detail} ({code})")
        self.title = title
        self.detail = detail
        self.code = code
        self.exit_code = exit_code

    @property
    def line(self) -> str:
        return f"error: {self}"


@dataclass
class AdminContext:
    server: str | None
    token: str | None
    timeout: float
    json: bool = False
    _client: httpx.Client | None = field(default=None, repr=False)

    def client(self) -> httpx.Client:
        if self._client is None:
            if not self.server:
                raise AdminCliError(
                    "usage",
                    "no relay URL: pass --server or set LIAISON_SERVER",
                    "usage",
                    EXIT_USAGE,
                )
            if not self.token:
                raise AdminCliError(
                    "usage",
                    "no admin token: pass --token or set LIAISON_ADMIN_TOKEN",
                    "usage",
                    EXIT_USAGE,
                )
            self._client = click.get_current_context().with_resource(
                httpx.Client(
                    base_url=self.server.rstrip("/"),
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=self.timeout,
                )
            )
        return self._client

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Send one request to ``/admin<path>``; the decoded JSON answer (None if empty)."""
        client = self.client()
        url = f"/admin{path}"
        try:
            response = client.request(method, url, json=body)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise AdminCliError(
                "usage", f"bad relay URL {self.server!r}: {exc}", "usage", EXIT_USAGE
            ) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise AdminCliError(
                "relay unreachable", f"{self.server}: {reason}", "unreachable", EXIT_UNREACHABLE
            ) from None
        if not response.is_success:
            raise _problem_error(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise AdminCliError(
                "bad response", f"{url} did not answer JSON", "bad_response", EXIT_OTHER
            ) from None


def _problem_error(response: httpx.Response) -> AdminCliError:
    """Turn an error response into the CLI's one-line error and exit status."""
    problem: Any = None
    if "json" in response.headers.get("content-type", ""):
        try:
            problem = response.json()
        except ValueError:
            problem = None
    if not isinstance(problem, dict) or "code" not in problem:
        code = f"http_{response.status_code}"
        detail = f"unexpected answer from {response.request.url}"
        exit_code = _EXIT_FOR_STATUS.get(response.status_code, EXIT_OTHER)
        return AdminCliError(response.reason_phrase or "HTTP error", detail, code, exit_code)
    code = str(problem["code"])
    detail = str(problem.get("detail", ""))
    errors = problem.get("errors")
    if isinstance(errors, list) and errors:
        detail = "; ".join(_describe_validation(error) for error in errors)
    exit_code = EXIT_CODES.get(code, _EXIT_FOR_STATUS.get(response.status_code, EXIT_OTHER))
    return AdminCliError(str(problem.get("title", "error")), detail, code, exit_code)


def _describe_validation(error: Any) -> str:
    loc = [str(p) for p in error.get("loc", [])] if isinstance(error, dict) else []
    where = ".".join(loc[1:] if loc[:1] in (["body"], ["path"], ["query"]) else loc)
    msg = error.get("msg", "invalid") if isinstance(error, dict) else "invalid"
    return f"{where or 'request'}: {msg}"
