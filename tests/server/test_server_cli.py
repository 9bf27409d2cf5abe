"""``liaison server run`` as an operator starts it: port checks, log lines, API docs pages.

Every test runs the real command in a subprocess (``tests.client.clikit``).
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.client.clikit import LIAISON, _base_env, relay_process

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) \S+: ")


def _run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [
        LIAISON, "server", "run", "--host", "127.0.0.1",
        "--database", f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}",
        "--key-file", str(tmp_path / "relay.key"), *args,
    ]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=_base_env() | (env or {})
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--port", "99999"), {}),
        (("--port", "0"), {}),
        ((), {"LIAISON_PORT": "70000"}),
    ],
    ids=["flag-too-big", "flag-zero", "env-too-big"],
)
def test_an_out_of_range_port_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    result = _run(tmp_path, *args, env=env)
    assert result.returncode == 2, result
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("liaison: ")
    assert "1<=x<=65535" in line
    assert not (tmp_path / "relay.db").exists()


def test_a_busy_port_fails_before_any_admin_token_is_minted(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(tmp_path, "--port", str(port))
    assert result.returncode == 3, result
    assert "admin token" not in result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line == f"liaison: cannot listen on 127.0.0.1:{port}: Address already in use"
    # Nothing was created: the next start (port free) is still the first one.
    assert not (tmp_path / "relay.db").exists()
    assert not (tmp_path / "relay.key").exists()


def test_log_lines_carry_utc_timestamps_and_api_docs_pages_are_off(tmp_path: Path) -> None:
    with relay_process(tmp_path / "relay") as relay:
        assert httpx.get(f"{relay.url}/openapi.json", timeout=10).status_code == 200
        for page in ("/docs", "/redoc"):
            assert httpx.get(f"{relay.url}{page}", timeout=10).status_code == 404
        logged = [line for line in relay.output().splitlines() if "uvicorn" in line]
    assert logged, relay.output()
    assert all(ISO_LINE.match(line) for line in logged), logged
    assert any("Uvicorn running on http://127.0.0.1:" in line for line in logged)


def test_api_docs_pages_can_be_enabled(tmp_path: Path) -> None:
    with relay_process(tmp_path / "relay", api_docs="true") as relay:
        page = httpx.get(f"{relay.url}/docs", timeout=10)
    assert page.status_code == 200
    assert "swagger" in page.text.lower()
