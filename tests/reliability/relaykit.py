"""A relay that can be SIGKILLed and restarted, a fresh PostgreSQL database per test, and cells
provisioned through the relay's real admin API and enrollment endpoint.

* :class:`KillableRelay` runs ``liaison server run`` as a subprocess on a fixed loopback port
  (cells stay enrolled to one URL), with its database and key file kept across restarts. It
  is started and stopped from async tests without blocking the event loop the cells run on.
  Each run's output goes to its own log file.
* :func:`migrate` is ``liaison server db upgrade --database URL``.
* :func:`postgres_database` (``tests.pgkit``) creates a uniquely named database on the local server
  (``LIAISON_TEST_POSTGRES_URL``, the server tests' default) and drops it afterwards; the test
  is skipped, with the reason, when the server cannot be reached
  (``LIAISON_TEST_REQUIRE_POSTGRES=1`` makes that a failure).
* :func:`provision` creates cells, pairs them into channels and enrolls each with
  ``Cell.enroll``: real HTTP, real Noise, real keys.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from liaison.client import Cell
from tests.client.clikit import free_port
from tests.pgkit import postgres_database
from tests.server.harness import Admin

__all__ = ["LIAISON", "KillableRelay", "migrate", "postgres_database", "provision"]

LIAISON = str(Path(sys.executable).with_name("liaison"))
READY_TIMEOUT = 60.0
"""Seconds a relay may take to answer ``/healthz`` (generous: the machine is shared)."""


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")}


class KillableRelay:
    """``liaison server run`` on 127.0.0.1:``port``; ``kill()`` is SIGKILL, ``start()`` again
    serves the same database, key and port. ``settings`` become ``LIAISON_*`` variables."""

    def __init__(
        self, directory: Path, database_url: str, settings: Mapping[str, str] | None = None
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _base_env() | {f"LIAISON_{k.upper()}": v for k, v in (settings or {}).items()}
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_token = ""
        self.starts = 0
        self.kills = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, run: int) -> Path:
        return self.directory / f"relay-{run}.log"

    def output(self) -> str:
        """Every run's output, in order."""
        return "".join(
            f"--- run {run} ---\n" + self.log(run).read_text(errors="replace")
            for run in range(1, self.starts + 1)
            if self.log(run).exists()
        )

    async def start(self) -> None:
        """Start the relay and wait until it answers ``/healthz``."""
        assert not self.running, "the relay is already running"
        self.starts += 1
        log = self.log(self.starts)
        command = [
            LIAISON, "server", "run", "--host", "127.0.0.1", "--port", str(self.port),
            "--database", self.database_url, "--key-file", str(self.directory / "relay.key"),
        ]  # fmt: skip
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                env=self.env,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        async with httpx.AsyncClient(timeout=2) as http:
            while loop.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the relay exited with {self.proc.returncode}:\n"
                                       f"{log.read_text(errors='replace')}")  # fmt: skip
                if self.starts == 1 and not self.admin_token:
                    for line in log.read_text(errors="replace").splitlines():
                        if line.startswith("admin token: "):
                            self.admin_token = line.split(": ", 1)[1].strip()
                if self.admin_token:
                    try:
                        if (await http.get(f"{self.url}/healthz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the relay did not become ready:\n{log.read_text(errors='replace')}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs (no flush, no close frames)."""
        proc = self.proc
        assert proc is not None, "the relay was never started"
        assert proc.poll() is None, "the relay is not running"
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        self.kills += 1

    async def stop(self) -> None:
        """SIGINT (a clean shutdown), SIGKILL after 15 s; does nothing if not running."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


async def migrate(database_url: str) -> None:
    """``liaison server db upgrade --database URL``, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(
        LIAISON, "server", "db", "upgrade", "--database", database_url,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=_base_env(),
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode(errors="replace")


async def provision(
    relay: KillableRelay, root: Path, channels: Sequence[tuple[str, str]]
) -> dict[str, Path]:
    """Create and enroll every cell named in ``channels`` and pair each pair; their homes."""
    admin = Admin(relay.url, relay.admin_token)
    homes: dict[str, Path] = {}
    try:
        codes = {}
        for name in sorted({name for pair in channels for name in pair}):
            _cell_id, codes[name] = await admin.add_cell(name)
        for a, b in channels:
            await admin.pair(a, b)
        for name, code in codes.items():
            cell = await Cell.enroll(root / name, server=relay.url, code=code)
            homes[name] = cell.home
    finally:
        await admin.aclose()
    return homes
