"""A throwaway relay as a real ``liaison server run`` process, and the ``liaison`` CLI by
subprocess, for the end-to-end and crash-safety tests.

``relay_process`` starts the relay on a free loopback port with a database and key file in a
given directory (like ``scripts/demo.py``), reads the first admin token from its output and
waits until ``/healthz`` answers; it always stops the process (SIGINT, then SIGKILL).
``Cli`` runs ``liaison ...`` as a user would, with ``LIAISON_SERVER`` and the admin token in
its environment, and fails the test if any command prints a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "LIAISON",
    "Cli",
    "RelayProcess",
    "free_port",
    "relay_process",
    "relay_process_at",
    "stop_process",
]

LIAISON = str(Path(sys.executable).with_name("liaison"))
COMMAND_TIMEOUT = 45.0


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, grace: float = 10) -> None:
    """Ask ``proc`` to stop with ``sig``, SIGKILL it after ``grace`` seconds, reap it."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
    else:
        proc.wait()


@dataclass(frozen=True)
class RelayProcess:
    url: str
    admin_token: str
    log: Path
    proc: subprocess.Popen[bytes]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _base_env() -> dict[str, str]:
    """The environment without any LIAISON_* setting of the developer's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")}


@contextmanager
def relay_process(
    directory: Path, *, admin_token: str = "", **settings: str
) -> Iterator[RelayProcess]:
    """``liaison server run`` on 127.0.0.1:<free port>, state in ``directory``.

    ``settings`` become ``LIAISON_<NAME>`` environment variables of the relay. To start a
    relay again on the same ``directory`` (which prints no new admin token), pass the
    ``admin_token`` the first start printed."""
    with relay_process_at(directory, free_port(), admin_token, **settings) as running:
        yield running


@contextmanager
def relay_process_at(
    directory: Path, port: int, admin_token: str = "", **settings: str
) -> Iterator[RelayProcess]:
    """``relay_process`` on a given ``port``; to restart a relay on its state, give the port
    and the ``admin_token`` of its first start (a restart prints none)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "relay.log"
    env = _base_env() | {f"LIAISON_{k.upper()}": v for k, v in settings.items()}
    command = [
        LIAISON, "server", "run", "--host", "127.0.0.1", "--port", str(port),
        "--database", f"sqlite+aiosqlite:///{directory / 'relay.db'}",
        "--key-file", str(directory / "relay.key"),
    ]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        token = _wait_ready(proc, log, url, admin_token)
        yield RelayProcess(url, token, log, proc)
    finally:
        stop_process(proc)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, url: str, token: str = "") -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the relay exited with {proc.returncode}:\n{log.read_text()}")
        if not token:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("admin token: "):
                    token = line.split(": ", 1)[1].strip()
        if token:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return token
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"the relay did not become ready:\n{log.read_text(errors='replace')}")


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


class Cli:
    """``liaison ...`` by subprocess against one relay (``LIAISON_SERVER`` and
    ``LIAISON_ADMIN_TOKEN`` set). Every run is checked for tracebacks."""

    def __init__(self, relay: RelayProcess) -> None:
        self.relay = relay
        self.env = _base_env() | {
            "LIAISON_SERVER": relay.url,
            "LIAISON_ADMIN_TOKEN": relay.admin_token,
        }

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                [LIAISON, *args],
                env=self.env | dict(env or {}),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:  # killed by subprocess.run; show what it said
            raise AssertionError(
                f"`liaison {' '.join(args)}` did not finish in {timeout} s\n"
                f"stdout: {_text(exc.stdout)}\nstderr: {_text(exc.stderr)}"
            ) from None
        assert "Traceback" not in result.stderr, result.stderr
        assert "Traceback" not in result.stdout, result.stdout
        return result

    def ok(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        result = self.run(*args, env=env)
        assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
        return result.stdout

    def fails(self, exit_code: int, *args: str, env: Mapping[str, str] | None = None) -> str:
        """The command exits with ``exit_code``, printing exactly one ``error: ...`` line
        on stderr; that line."""
        result = self.run(*args, env=env)
        assert result.returncode == exit_code, (args, result.returncode, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: "), result.stderr
        return lines[0]

    # -- admin -------------------------------------------------------------------------------

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.ok("admin", "--json", *args))

    def add_cell(self, name: str) -> str:
        """Create cell ``name``; its one-time enrollment code."""
        code: str = self.admin_json("cell", "add", name)["enrollment_code"]
        return code

    def pair(self, a: str, b: str) -> None:
        self.ok("admin", "channel", "add", a, b)

    # -- cells -------------------------------------------------------------------------------

    def cell(self, home: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
        return self.ok("cell", "--home", str(home), *args, env=env)

    def cell_json(self, home: Path, *args: str, env: Mapping[str, str] | None = None) -> Any:
        return json.loads(self.ok("cell", "--home", str(home), "--json", *args, env=env))

    def enroll(self, home: Path, code: str, env: Mapping[str, str] | None = None) -> Any:
        return self.cell_json(home, "enroll", "--code", code, env=env)
