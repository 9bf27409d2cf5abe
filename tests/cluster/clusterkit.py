"""A relay cluster for tests: several real ``liaison server run`` processes on one PostgreSQL
database and one bus (Redis or NATS), sharing one relay key file.

* :func:`postgres_database` (``tests.pgkit``) creates a uniquely named database on the local
  server (dropped afterwards) or skips the test with the reason when PostgreSQL is unreachable;
* :func:`bus_reason` says why a shared bus server is unusable (``None`` when it answers);
* :class:`PrivateBus` runs a bus server of our own (``redis-server`` or ``nats-server``) on a
  free port, so a test can restart it without touching the machine's shared services;
* :class:`Cluster` migrates the database once, issues an admin token once, then starts, kills
  (SIGKILL) and restarts nodes; each :class:`Node` is an endpoint for
  :class:`tests.server.harness.RawCell`;
* :class:`FailoverTransport` is the load balancer seen from a cell: it connects to the first
  node that accepts, trying them in turn, as a WebSocket-capable balancer would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from liaison.client.transport import Connection, WebSocketTransport
from liaison.protocol.keys import X25519KeyPair
from liaison.server.relay_key import load_or_create
from tests.client.clikit import LIAISON, free_port, stop_process
from tests.pgkit import postgres_database
from tests.server.harness import Link

__all__ = [
    "Cluster",
    "FailoverTransport",
    "Node",
    "PrivateBus",
    "bus_reason",
    "metric",
    "postgres_database",
]

SHARED_BUS = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}


def _skip(reason: str) -> None:
    pytest.skip(reason)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def bus_reason(kind: str) -> str | None:
    """``None`` if the machine's shared ``kind`` bus server answers, else why it cannot be used."""
    port = {"redis": 6379, "nats": 4222}[kind]
    if not _port_open("127.0.0.1", port):
        return f"{kind} is not listening on 127.0.0.1:{port}"
    return None


class PrivateBus:
    """A Redis or NATS server of this test's own, on a free port, restartable."""

    def __init__(self, kind: str, directory: Path) -> None:
        binary = {"redis": "redis-server", "nats": "nats-server"}[kind]
        path = shutil.which(binary) or (f"/usr/sbin/{binary}" if kind == "nats" else None)
        if path is None or not Path(path).exists():
            _skip(f"{binary} is not installed, so a private {kind} server cannot be run")
        self.kind = kind
        self.binary = str(path)
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        scheme = "redis" if kind == "redis" else "nats"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.kind == "redis":
            command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save",
                       "", "--appendonly", "no", "--dir", str(self.directory)]  # fmt: skip
        else:
            command = [self.binary, "-a", "127.0.0.1", "-p", str(self.port)]
        with (self.directory / f"{self.kind}.log").open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private {self.kind} server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Node:
    """One relay process of the cluster; an endpoint for ``RawCell``."""

    index: int
    port: int
    relay_key: X25519KeyPair
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    links: list[Link] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/link"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """``size`` nodes on ``database_url`` and ``bus_url`` (see the module docstring)."""

    def __init__(self, root: Path, database_url: str, bus_url: str, **settings: str) -> None:
        self.root = root
        self.database_url = database_url
        self.bus_url = bus_url
        self.settings = settings
        self.key_file = root / "relay.key"
        self.relay_key, _ = load_or_create(self.key_file)
        self.channel = f"liaison-test-{uuid.uuid4().hex[:12]}"  # no cross-talk between tests
        self.nodes: list[Node] = []
        self.admin_token = ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")}
        env |= {f"LIAISON_{k.upper()}": v for k, v in self.settings.items()}
        env |= {"LIAISON_BUS_URL": self.bus_url, "LIAISON_BUS_CHANNEL": self.channel}
        return env

    def prepare(self) -> None:
        """``db upgrade`` and ``admin-token``, once for the whole cluster."""
        base = [LIAISON, "server"]
        db = ["--database", self.database_url]
        subprocess.run([*base, "db", "upgrade", *db], check=True, capture_output=True,
                       env=self._env(), timeout=60)  # fmt: skip
        made = subprocess.run([*base, "admin-token", *db, "--name", "cluster-test"],
                              check=True, capture_output=True, env=self._env(), timeout=60,
                              text=True)  # fmt: skip
        self.admin_token = made.stdout.strip().splitlines()[-1].split()[-1]

    def start(self, size: int) -> None:
        self.prepare()
        for index in range(size):
            self.nodes.append(
                Node(index, free_port(), self.relay_key, self.root / f"node{index}.log")
            )
            self.start_node(index)

    def start_node(self, index: int) -> Node:
        node = self.nodes[index]
        command = [
            LIAISON, "server", "run", "--host", "127.0.0.1", "--port", str(node.port),
            "--database", self.database_url, "--key-file", str(self.key_file),
        ]  # fmt: skip
        with node.log.open("ab") as sink:
            node.proc = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=self._env()
            )
        deadline = time.monotonic() + 30
        while True:
            if node.proc.poll() is not None:
                raise RuntimeError(f"node {index} exited:\n{node.log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{node.url}/healthz", timeout=1).status_code == 200:
                    return node
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {index} did not start:\n{node.log.read_text()}")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (no shutdown of any kind)."""
        node = self.nodes[index]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                stop_process(node.proc)
                node.proc = None

    def logs(self) -> str:
        return "\n".join(
            f"--- node {n.index}\n{n.log.read_text(errors='replace')[-3000:]}"
            for n in self.nodes
            if n.log.exists()
        )


@contextmanager
def running_cluster(
    root: Path, database_url: str, bus_url: str, size: int, **settings: str
) -> Iterator[Cluster]:
    cluster = Cluster(root, database_url, bus_url, **settings)
    try:
        cluster.start(size)
        yield cluster
    finally:
        cluster.stop()


def metric(node: Node, name: str) -> float:
    """One unlabelled series of a node's ``/metrics``."""
    text = httpx.get(f"{node.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


class FailoverTransport:
    """Connect to the first of ``nodes`` that accepts, starting after the last one used."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self.used: list[int] = []  # node index of every connection made

    async def connect(self) -> Connection:
        last = self.used[-1] if self.used else -1
        order = sorted(self.nodes, key=lambda n: (n.index <= last, n.index))
        if self.used:  # prefer the node we were on, if it is still there
            order = [n for n in self.nodes if n.index == last] + [
                n for n in order if n.index != last
            ]
        error: Exception | None = None
        for node in order:
            try:
                conn = await WebSocketTransport(node.ws_url, open_timeout=3).connect()
            except ConnectionError as exc:
                error = exc
                await asyncio.sleep(0)
                continue
            self.used.append(node.index)
            return conn
        raise ConnectionError(f"no node accepts connections ({error})")
