"""``liaison admin`` against a real relay (uvicorn on a free port): output and exit statuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from liaison.client.admin_http import _problem_error
from liaison.client.cli import main

from .live_relay import LiveRelay, running_relay, unused_port_url


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[LiveRelay]:
    with running_relay(tmp_path) as live:
        yield live


def run(relay: LiveRelay, *args: str, token: str | None = None) -> Result:
    """``liaison admin --server URL --token T <args>``, in process."""
    flags = ["--server", relay.url, "--token", relay.token if token is None else token]
    return CliRunner().invoke(main, ["admin", *flags, *args])


def ok(relay: LiveRelay, *args: str) -> str:
    result = run(relay, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def as_json(relay: LiveRelay, *args: str) -> Any:
    return json.loads(ok(relay, "--json", *args))


def fields(text: str) -> dict[str, str]:
    """Parse ``label  value`` lines (labels may hold single spaces)."""
    parsed = {}
    for line in text.splitlines():
        label, value = re.split(r"\s{2,}", line, maxsplit=1)
        parsed[label] = value
    return parsed


def fails(result: Result, exit_code: int, code: str) -> str:
    """The command failed with ``exit_code`` and exactly one ``error: ... (<code>)`` line."""
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert lines[0].endswith(f"({code})")
    assert "Traceback" not in result.output
    return lines[0]


def test_cells_and_channels_in_human_form(relay: LiveRelay) -> None:
    added = run(relay, "cell", "add", "alpha")
    assert added.exit_code == 0
    assert "alpha (pending)" in added.stdout
    code_line = next(line for line in added.stdout.splitlines() if line.startswith("enrollment"))
    assert code_line.split()[-1] == relay.hooks.codes[-1]
    assert "shown only once" in added.stderr
    ok(relay, "cell", "add", "bravo-2")

    listing = ok(relay, "cell", "list").splitlines()
    assert listing[0].split() == [
        "NAME", "STATUS", "ONLINE", "LAST-SEEN", "ID", "CREATED", "ENROLLED", "CODE-EXPIRES"
    ]  # fmt: skip
    assert [line.split()[0] for line in listing[1:]] == ["alpha", "bravo-2"]
    status_column = listing[0].index("STATUS")
    assert all(line[status_column:].startswith("pending") for line in listing[1:])
    online_column = listing[0].index("ONLINE")
    assert all(line[online_column:].startswith("no ") for line in listing[1:])
    assert all(line.endswith(" UTC") for line in listing[1:])  # the pending codes' expiry

    paired = ok(relay, "channel", "add", "alpha", "bravo-2")
    assert paired.startswith("paired ")
    assert {"alpha", "bravo-2"} <= set(paired.split())
    channels = ok(relay, "channel", "list").splitlines()
    assert channels[0].split() == ["A", "B", "CREATED"]
    assert len(channels) == 2

    shown = fields(ok(relay, "cell", "show", "alpha"))
    assert shown["status"] == "pending"
    assert shown["identity key"] == "-"
    assert shown["channels"] == "bravo-2"
    assert (shown["queued envelopes"], shown["one-time prekeys"]) == ("0", "0")
    assert (shown["online"], shown["last seen"]) == ("no", "-")
    assert shown["code expires"].endswith(" UTC")

    fresh = ok(relay, "cell", "code", "alpha")
    assert relay.hooks.codes[-1] in fresh
    assert ok(relay, "cell", "revoke", "alpha") == "cell alpha is revoked\n"
    assert relay.hooks.calls[-1][1:] == (
        "revoked",
        [bytes.fromhex(as_json(relay, "cell", "show", "bravo-2")["id"])],
    )

    assert ok(relay, "channel", "remove", "alpha", "bravo-2") == "unpaired alpha <-> bravo-2\n"
    empty = run(relay, "channel", "list")
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "", "no channels\n")


def test_suspend_and_resume(relay: LiveRelay) -> None:
    created = as_json(relay, "cell", "add", "alpha")
    assert created["status"] == "pending"
    fails(run(relay, "cell", "suspend", "alpha"), 4, "invalid_state")
    fails(run(relay, "cell", "resume", "alpha"), 4, "invalid_state")


def test_json_output_parses_before_or_after_the_command(relay: LiveRelay) -> None:
    created = as_json(relay, "cell", "add", "alpha")
    assert set(created) == {"id", "name", "status", "enrollment_code", "code_expires_at"}
    ok(relay, "cell", "add", "bravo")
    after = json.loads(ok(relay, "cell", "list", "--json"))
    assert [cell["name"] for cell in after] == ["alpha", "bravo"]
    assert as_json(relay, "cell", "show", "alpha")["channels"] == []
    assert set(as_json(relay, "channel", "add", "alpha", "bravo")) == {"a", "b", "created_at"}
    assert len(as_json(relay, "channel", "list")) == 1
    assert as_json(relay, "channel", "remove", "bravo", "alpha")["removed"] is True
    assert as_json(relay, "cell", "revoke", "bravo")["status"] == "revoked"
    entries = as_json(relay, "audit", "--limit", "3")
    assert [e["action"] for e in entries] == ["cell.revoke", "channel.delete", "channel.create"]


def test_tokens_and_audit(relay: LiveRelay) -> None:
    made = as_json(relay, "token", "add", "ops")
    assert made["name"] == "ops"
    listing = ok(relay, "token", "list").splitlines()
    assert [line.split()[:2] for line in listing] == [["ID", "NAME"], ["1", "root"], ["2", "ops"]]
    assert ok(relay, "cell", "list", "--json") == "[]\n"
    assert run(relay, "cell", "list", token=made["token"]).exit_code == 0
    assert ok(relay, "token", "revoke", "2") == "revoked admin token 2 (ops)\n"
    fails(run(relay, "cell", "list", token=made["token"]), 5, "unauthorized")
    fails(run(relay, "token", "revoke", "2"), 4, "invalid_state")
    fails(run(relay, "token", "revoke", "9"), 3, "not_found")
    audit = ok(relay, "audit", "--action", "token.*").splitlines()
    assert audit[0].split() == ["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"]
    assert "token.revoke" in audit[1]
    assert "id=2" in audit[1]
    assert made["token"] not in "\n".join(audit)


def test_audit_renders_times_and_filters_by_action(relay: LiveRelay) -> None:
    ok(relay, "cell", "add", "alpha")
    ok(relay, "cell", "add", "bravo")
    ok(relay, "cell", "code", "alpha")
    fails(run(relay, "cell", "list", token="not-a-token"), 5, "unauthorized")
    shown = ok(relay, "audit", "--action", "cell.create").splitlines()
    assert len(shown) == 3
    assert all("cell.create" in line for line in shown[1:])
    assert all(re.search(r" code_expires_at=20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", line)
               for line in shown[1:])  # fmt: skip
    assert "_ms=" not in "\n".join(shown)
    family = as_json(relay, "audit", "--action", "cell.*")
    assert [(e["action"], e["target"]) for e in family] == [
        ("cell.code", "alpha"),
        ("cell.create", "bravo"),
        ("cell.create", "alpha"),
    ]
    assert isinstance(family[0]["detail"]["code_expires_at_ms"], int)  # JSON keeps the raw ms
    [failed] = as_json(relay, "audit", "--action", "admin.auth_failed")
    assert failed["actor"] == "unauthenticated"
    assert "not-a-token" not in json.dumps(failed)
    fails(run(relay, "audit", "--action", "cell.%"), 2, "validation_failed")


def test_revoking_the_last_admin_token_needs_force(relay: LiveRelay) -> None:
    line = fails(run(relay, "token", "revoke", "1"), 4, "invalid_state")
    assert "last active admin token" in line
    assert "--force" in line
    ok(relay, "cell", "list")  # still works
    result = run(relay, "token", "revoke", "1", "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout == "revoked admin token 1 (root)\n"
    assert result.stderr.startswith("warning: ")
    fails(run(relay, "cell", "list"), 5, "unauthorized")


def test_error_exit_statuses(relay: LiveRelay) -> None:
    line = fails(run(relay, "cell", "show", "ghost"), 3, "not_found")
    assert line == "error: Not found: no cell named 'ghost' (not_found)"
    fails(run(relay, "cell", "revoke", "ghost"), 3, "not_found")
    ok(relay, "cell", "add", "alpha")
    fails(run(relay, "cell", "add", "alpha"), 4, "conflict")
    fails(run(relay, "channel", "add", "alpha", "ghost"), 3, "not_found")
    fails(run(relay, "channel", "remove", "alpha", "alpha"), 3, "not_found")
    line = fails(run(relay, "cell", "add", "Not Valid"), 2, "validation_failed")
    assert "name: String should match pattern" in line
    fails(run(relay, "channel", "add", "alpha", "alpha"), 2, "validation_failed")
    fails(run(relay, "cell", "list", token="not-a-token"), 5, "unauthorized")


def test_unreachable_relay_is_exit_6() -> None:
    result = CliRunner().invoke(
        main, ["admin", "--server", unused_port_url(), "--token", "t", "cell", "list"]
    )
    line = fails(result, 6, "unreachable")
    assert line.startswith("error: relay unreachable: http://127.0.0.1:")


def test_environment_replaces_flags(relay: LiveRelay) -> None:
    env = {"LIAISON_SERVER": relay.url, "LIAISON_ADMIN_TOKEN": relay.token}
    result = CliRunner(env=env).invoke(main, ["admin", "cell", "add", "alpha"])
    assert result.exit_code == 0, result.output
    missing = CliRunner(env={"LIAISON_SERVER": relay.url, "LIAISON_ADMIN_TOKEN": None})
    fails(missing.invoke(main, ["admin", "cell", "list"]), 2, "usage")
    nowhere = CliRunner(env={"LIAISON_SERVER": None, "LIAISON_ADMIN_TOKEN": "t"})
    fails(nowhere.invoke(main, ["admin", "cell", "list"]), 2, "usage")
    bad_url = CliRunner(env={"LIAISON_SERVER": "relay.example", "LIAISON_ADMIN_TOKEN": "t"})
    fails(bad_url.invoke(main, ["admin", "cell", "list"]), 2, "usage")


def test_usage_errors_and_help() -> None:
    runner = CliRunner(env={"LIAISON_SERVER": None, "LIAISON_ADMIN_TOKEN": None})
    help_text = runner.invoke(main, ["admin", "--help"])
    assert help_text.exit_code == 0
    for status in ("2  usage", "3  not found", "4  conflict", "5  unauthorized", "6  relay"):
        assert status in help_text.stdout
    assert runner.invoke(main, ["admin", "cell", "list", "--help"]).exit_code == 0
    assert runner.invoke(main, ["admin", "token", "revoke", "abc"]).exit_code == 2
    assert runner.invoke(main, ["admin", "audit", "--limit", "0"]).exit_code == 2


@pytest.mark.parametrize(
    ("status", "content_type", "body", "exit_code", "code"),
    [
        (502, "text/html", b"<h1>Bad Gateway</h1>", 6, "http_502"),
        (504, "text/plain", b"timeout", 6, "http_504"),
        (500, "text/plain", b"oops", 1, "http_500"),
        (404, "text/html", b"<h1>no</h1>", 3, "http_404"),
        (
            429,
            "application/problem+json",
            b'{"code": "rate_limited", "title": "Too many requests", "detail": "retry in 5 s"}',
            1,
            "rate_limited",
        ),
        (
            418,
            "application/json",
            b'{"code": "some_new_code", "title": "T", "detail": "D"}',
            1,
            "some_new_code",
        ),
    ],
)
def test_answers_map_to_exit_statuses(
    status: int, content_type: str, body: bytes, exit_code: int, code: str
) -> None:
    request = httpx.Request("GET", "http://relay/admin/cells")
    response = httpx.Response(
        status, headers={"content-type": content_type}, content=body, request=request
    )
    error = _problem_error(response)
    assert (error.exit_code, error.code) == (exit_code, code)
    assert error.line.startswith("error: ")


def test_admin_cli_never_imports_server_code() -> None:
    """The admin commands work on a client-only install (no FastAPI, no SQLAlchemy)."""
    code = (
        "import sys, liaison.client.admin_cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'sqlalchemy', 'uvicorn', 'starlette') or m.startswith('liaison.server'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
