"""Several relay nodes on one PostgreSQL: throughput, delivery latency and what each layer costs.

    .venv/bin/python bench/cluster.py [--quick] [--postgres URL] [--redis URL] [--nats URL]

One run measures, with bench/relay.py's load generator (its ``Liaison`` target, ``Tracker``,
``run_phase`` and ``measure_window``, imported and reused: 100 sender/recipient pairs of real
enrolled cells linked with Noise IK, one 4096-byte envelope carrying a 1 KiB payload per pair
with a fresh message id each send, recipients ACK every DELIVER, never decrypt):

* **(a) 1 node, SQLite**: ``liaison server run`` on a SQLite file (WAL, ``synchronous=FULL``),
  ``memory://`` bus, as in bench/relay.py;
* **(b) 1 node, PostgreSQL**: one node on PostgreSQL (``--postgres``), ``memory://`` bus;
* **(c) 2 nodes, PostgreSQL + Redis**: two nodes on one PostgreSQL database with
  ``--bus redis://...``;
* **(d) 2 nodes, PostgreSQL + NATS**: the same with ``--bus nats://...``.

In the two-node scenarios every sender links to node 1 and every recipient to node 2, so every
message crosses the bus: node 1 commits the envelope and publishes it (one binary bus message
per commit batch), node 2 pushes it to the recipient's link from memory (a lost bus message
would show as ~1 s of latency: node 2's fallback poll re-reads PostgreSQL,
``LIAISON_BUS_FALLBACK_SECONDS``). The PostgreSQL cluster
procedure of the README is followed: ``liaison server db upgrade`` and ``liaison server
admin-token`` once, then every node with the same ``--key-file``. The 200 cells are enrolled
once into a template database; each PostgreSQL scenario runs on its own fresh copy of it
(``CREATE DATABASE ... TEMPLATE``), and every database this run creates is dropped at the end.

Before the phases, one message per pair is sent and awaited until delivered (priming: the
sender's node then has the recipients' status cached, as a single node has from their links; the
time it took is printed). Phases per scenario: saturation (each sender keeps 32 messages in
flight until delivered) and paced at 50% of the single-node PostgreSQL saturation rate (scenario
(b), measured first; the same offered load for every scenario, so latencies compare at equal
load). A scenario whose own saturation rate is below that pace is overloaded in its paced phase
(flagged).

Costs, per message delivered in the measured window (CPU read from ``/proc`` at the window's
edges): **node** µs (the relay processes; node 1 + node 2 for two nodes), **pg** µs (the
PostgreSQL backends connected to the scenario's database, found in ``pg_stat_activity``;
PostgreSQL's shared walwriter/checkpointer/bgwriter are left out), **bus** µs (the local
``redis-server`` / ``nats-server`` process), **hints** (``liaison_bus_published_total`` per
accepted envelope, from ``/metrics``), **commits** (``liaison_writer_batches_total`` per
accepted envelope: group-commit transactions) and **commit ms** (their mean wall time, fsync and
waits included, from ``liaison_commit_seconds``), **WAL** KiB (``pg_current_wal_lsn()`` advance:
the whole PostgreSQL cluster's WAL, so other users' writes are included). A capacity projection
is printed from the saturation figures. Off-CPU time (fsync waits) is not in any CPU figure.

Pinning: this process (load generator, uvloop) on CPU 0, every relay node on CPU 1
(``taskset``), as in bench/relay.py. On a 2-core machine the two nodes of (c) and (d) therefore
share ONE core, and PostgreSQL, Redis and NATS (shared services, not pinned) run on whichever
core is free: two-node saturation cannot exceed one node's here; read the per-message costs, not
the totals, for scaling. The machine is shared with other engineers' test runs: the numbers are
noisy (``other`` is the CPU used by everything outside the processes counted), and the Redis,
NATS and PostgreSQL processes may also be serving others during the window.

This is a report, not a test: it never fails the build. A scenario whose service is unreachable
is skipped with the reason; one that fails prints the error and the nodes' log tails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import uvloop
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from bench import relay
else:  # run as a script: bench/ is sys.path[0]
    import relay

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_NATS = "nats://127.0.0.1:4222"
PG_PIDS_LEAD = 0.25  # look the database's backends up this long before a window opens
PRIME_SECONDS = 10.0
LOG_WORDS = ("Traceback", "ERROR", "WARNING", "Exception", "error")


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    postgres: bool
    bus: str  # a bus URL, "memory://" for one node
    nodes: int


@dataclass
class Costs:
    """What one measured window cost, per message delivered in it (µs of CPU)."""

    delivered: float = 0.0
    node_us: list[float] = field(default_factory=list)  # per node
    pg_us: float = float("nan")
    bus_us: float = float("nan")
    hints: float = float("nan")  # bus hints published per accepted envelope
    commits: float = float("nan")  # group-commit transactions per accepted envelope
    commit_ms: float = float("nan")  # mean wall time of one group commit (fsync, waits included)
    wal_kib: float = float("nan")
    pg_cpu: float = float("nan")  # share of one core during the window
    bus_cpu: float = float("nan")
    node_cpu: float = 0.0
    other_cpu: float = 0.0


@dataclass
class Row:
    scenario: Scenario
    phase: str
    result: relay.Result
    costs: Costs


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # scenario key -> why
    paced_rate: float | None = None


# ------------------------------------------------------------------------ processes and counters


def cpu_seconds(pid: int) -> float | None:
    """The process's user + system CPU time, or None once it is gone (or never was)."""
    try:
        return relay.process_cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None


def local_pids(command: str) -> list[int]:
    """Processes on this machine whose command name is ``command`` (``/proc/<pid>/comm``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == command:
                    pids.append(int(entry.name))
    return pids


def bus_pids(bus_url: str) -> list[int]:
    """The local Redis or NATS server behind ``bus_url`` (nothing for a remote one)."""
    parts = urlsplit(bus_url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    return local_pids({"redis": "redis-server", "nats": "nats-server"}.get(parts.scheme, ""))


def parse_metrics(exposition: str) -> dict[str, float]:
    """Prometheus text -> metric name -> value (labelled series summed)."""
    values: dict[str, float] = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            values[name] = values.get(name, 0.0) + float(value)
    return values


class Postgres:
    """The maintenance connection: databases for the run, their backends, the WAL position."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 3}
        )
        self.created: list[str] = []

    def database_url(self, name: str) -> str:
        url = make_url(self.url).set(drivername="postgresql+asyncpg", database=name)
        return url.render_as_string(hide_password=False)

    async def check(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def create(self, name: str, template: str | None = None) -> str:
        clause = f' TEMPLATE "{template}"' if template else ""
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')
        self.created.append(name)
        return self.database_url(name)

    async def drop_all(self) -> None:
        async with self.engine.connect() as conn:
            for name in reversed(self.created):
                await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    async def backends(self, database: str) -> list[int]:
        query = text("SELECT pid FROM pg_stat_activity WHERE datname = :name")
        async with self.engine.connect() as conn:
            return [int(pid) for pid in (await conn.execute(query, {"name": database})).scalars()]

    async def wal_bytes(self) -> float:
        query = text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        async with self.engine.connect() as conn:
            return float((await conn.execute(query)).scalar_one())

    async def close(self) -> None:
        await self.engine.dispose()


@dataclass
class Snapshot:
    nodes: list[float]
    pg: dict[int, float]
    bus: float
    host: float
    wal: float
    metrics: dict[str, float]


class Cluster:
    """One scenario's running relay nodes, and the processes and counters sampled around them."""

    def __init__(
        self,
        scenario: Scenario,
        servers: list[relay.Server],
        urls: list[str],
        postgres: Postgres | None,
        database: str | None,
    ) -> None:
        self.scenario = scenario
        self.servers = servers
        self.urls = urls
        self.postgres = postgres
        self.database = database
        self.bus_pids = bus_pids(scenario.bus)

    async def metrics(self) -> dict[str, float]:
        total: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=5) as http:
            for url in self.urls:
                response = await http.get(url + "/metrics")
                for name, value in parse_metrics(response.text).items():
                    total[name] = total.get(name, 0.0) + value
        return total

    async def snapshot(self, pg_pids: Sequence[int]) -> Snapshot:
        """CPU first (instant, from /proc), then the counters that need a round trip."""
        nodes = [cpu_seconds(server.proc.pid) or 0.0 for server in self.servers]
        pg = {pid: cpu for pid in pg_pids if (cpu := cpu_seconds(pid)) is not None}
        bus = sum(cpu_seconds(pid) or 0.0 for pid in self.bus_pids)
        host = relay.host_busy_seconds()
        wal = await self.postgres.wal_bytes() if self.postgres is not None else float("nan")
        return Snapshot(nodes, pg, bus, host, wal, await self.metrics())

    async def sample_window(self, tracker: relay.Tracker, duration: float) -> Costs:
        """Wait for ``run_phase`` to set the window, snapshot at both edges, return the costs
        (generator CPU and the delivered count are filled in from the phase's Result)."""
        while not math.isfinite(tracker.start):
            await asyncio.sleep(0.01)
        start, end = tracker.start, tracker.end
        await asyncio.sleep(max(0.0, start - PG_PIDS_LEAD - time.perf_counter()))
        pg_pids: list[int] = []
        if self.postgres is not None and self.database is not None:
            pg_pids = await self.postgres.backends(self.database)
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        first = await self.snapshot(pg_pids)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        if self.postgres is not None and self.database is not None:
            pg_pids = sorted(set(pg_pids) | set(await self.postgres.backends(self.database)))
        last = await self.snapshot(pg_pids)

        costs = Costs()
        node_cpu = [b - a for a, b in zip(first.nodes, last.nodes, strict=True)]
        costs.node_cpu = sum(node_cpu) / duration
        costs.node_us = [seconds * 1e6 for seconds in node_cpu]  # divided by messages later
        host = (last.host - first.host) / duration
        counted = costs.node_cpu
        if self.postgres is not None:
            # A backend that connected during the window counts from zero.
            pg = sum(cpu - first.pg.get(pid, 0.0) for pid, cpu in last.pg.items())
            costs.pg_cpu = pg / duration
            costs.pg_us = pg * 1e6
            costs.wal_kib = (last.wal - first.wal) / 1024
            counted += costs.pg_cpu
        if self.bus_pids:
            costs.bus_cpu = (last.bus - first.bus) / duration
            costs.bus_us = (last.bus - first.bus) * 1e6
            counted += costs.bus_cpu
        costs.other_cpu = host - counted  # the generator is taken out by the caller

        def delta(name: str) -> float:
            return last.metrics.get(name, 0.0) - first.metrics.get(name, 0.0)

        accepted = delta("liaison_envelopes_accepted_total")
        if accepted > 0:
            if not self.scenario.bus.startswith("memory"):
                costs.hints = delta("liaison_bus_published_total") / accepted
            costs.commits = delta("liaison_writer_batches_total") / accepted
        if timed := delta("liaison_commit_seconds_count"):
            costs.commit_ms = delta("liaison_commit_seconds_sum") / timed * 1e3
            costs.wal_kib /= accepted
        else:
            costs.wal_kib = float("nan")
        return costs

    def stop(self) -> list[str]:
        """Stop every node; what their logs said beyond INFO lines, as notes."""
        notes = []
        for i, server in enumerate(self.servers, 1):
            server.stop()
            text_ = server.err_path.read_text(errors="replace")
            lines = [ln for ln in text_.splitlines() if any(w in ln for w in LOG_WORDS)]
            if lines:
                shown = "\n    ".join(dict.fromkeys(lines[:8]))
                notes.append(
                    f"({self.scenario.key}) node {i} log: {len(lines)} warning/error lines, "
                    f"first ones:\n    {shown}"
                )
        return notes


# ------------------------------------------------------------------------ measuring


def finish_costs(costs: Costs, result: relay.Result, duration: float) -> Costs:
    """Per-message figures from the window's totals and deliveries."""
    costs.delivered = result.rate * duration
    per = 1 / costs.delivered if costs.delivered else float("nan")
    costs.node_us = [us * per for us in costs.node_us]
    costs.pg_us *= per
    costs.bus_us *= per
    costs.other_cpu = max(0.0, costs.other_cpu - result.generator_cpu)
    return costs


async def measure_phase(
    cluster: Cluster,
    target: relay.Liaison,
    tracker: relay.Tracker,
    config: relay.Config,
    rate: float | None,
) -> tuple[relay.Result, Costs]:
    sampler = asyncio.create_task(cluster.sample_window(tracker, config.duration))
    try:
        pid = cluster.servers[0].proc.pid
        result = await relay.run_phase(target, tracker, config, pid, rate)
        costs = await sampler
    finally:
        sampler.cancel()
    # run_phase's server CPU is node 1's alone: report every node's.
    result.server_cpu = costs.node_cpu
    return result, finish_costs(costs, result, config.duration)


async def prime(target: relay.Liaison, tracker: relay.Tracker) -> str:
    """One message per pair, each awaited until delivered, before anything is measured: every
    node has then loaded the cells it relays for (a single node does it when they link)."""
    started = time.perf_counter()
    tracker.reset(None)
    for pair in range(relay.PAIRS):
        message_id = os.urandom(16)
        tracker.pending[message_id] = time.perf_counter()
        await target.send(pair, message_id)
    deadline = started + PRIME_SECONDS
    while tracker.pending and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)
    took = (time.perf_counter() - started) * 1e3
    outcome = f"{relay.PAIRS} messages (one per pair) delivered in {took:.0f} ms"
    if tracker.refused:
        outcome += f", {tracker.refused} refused with ERROR"
    if tracker.pending:
        outcome += f", {len(tracker.pending)} NOT DELIVERED within {PRIME_SECONDS:g} s"
    return outcome


async def measure_cluster(
    cluster: Cluster,
    target: relay.Liaison,
    config: relay.Config,
    paced_rate: float | None,
    report: Report,
) -> float:
    """Saturation, then paced at ``paced_rate`` (None: half this scenario's own saturation
    rate). Returns the saturation rate."""
    tracker = relay.Tracker()
    await target.open(tracker)
    try:
        report.notes.append(f"({cluster.scenario.key}) priming: {await prime(target, tracker)}")
        saturated, costs = await measure_phase(cluster, target, tracker, config, None)
        report.rows.append(Row(cluster.scenario, "saturation", saturated, costs))
        rate = saturated.rate / 2 if paced_rate is None else paced_rate
        phase = "paced 50%" + (" OVERLOAD" if rate > saturated.rate else "")
        paced, costs = await measure_phase(cluster, target, tracker, config, rate)
        report.rows.append(Row(cluster.scenario, phase, paced, costs))
    finally:
        await target.close()
    key = cluster.scenario.key
    if tracker.stray:
        report.notes.append(f"({key}) {tracker.stray} deliveries of unknown messages")
    if target.events:
        report.notes.append(f"({key}) other frames: {dict(target.events)}")
    totals = await cluster.metrics()
    bus = ", ".join(
        f"{name.removeprefix('liaison_')} {totals.get(name, 0):.0f}"
        for name in (
            "liaison_envelopes_accepted_total",
            "liaison_envelopes_delivered_total",
            "liaison_bus_published_total",
            "liaison_bus_received_total",
            "liaison_bus_failures_total",
            "liaison_fallback_polls_total",
            "liaison_writer_failed_batches_total",
        )
    )
    report.notes.append(f"({key}) /metrics over the run, all nodes: {bus}")
    refused = {n: v for n, v in totals.items() if n == "liaison_refused_total" and v}
    if refused:
        report.notes.append(f"({key}) refused: {refused}")
    return saturated.rate


# ------------------------------------------------------------------------ nodes


def liaison_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "liaison"), "server", *args]


def start_node(name: str, tmp: Path, port: int, database_url: str, bus: str) -> relay.Server:
    return relay.Server(
        name,
        liaison_command(
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--database",
            database_url,
            "--key-file",
            str(tmp / "relay.key"),
            "--bus",
            bus,
        ),
        tmp,
    )


async def wait_ready(base_url: str, server: relay.Server, clustered: bool) -> None:
    """/healthz answers; for a clustered node, /readyz also says the bus is connected."""
    await relay.wait_http(base_url + "/healthz", server)
    if not clustered:
        return
    deadline = time.monotonic() + relay.START_SECONDS
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(base_url + "/readyz")).json().get("bus") == "connected":
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{base_url}/readyz never reported the bus connected")


def cli(*args: str) -> str:
    """Run ``liaison server ...`` to completion; its stdout."""
    done = subprocess.run(liaison_command(*args), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"liaison server {args[0]} failed: {done.stderr.strip()[-1000:]}")
    return done.stdout.strip()


def copy_target(enrolled: relay.Liaison, base_url: str, recipient_url: str) -> relay.Liaison:
    """A fresh load-generator target for the cells ``enrolled`` already created."""
    target = relay.Liaison(base_url, enrolled.admin_token)
    target.relay_public, target.cells = enrolled.relay_public, enrolled.cells
    target.envelopes = enrolled.envelopes
    target.recipient_ws_url = relay.Liaison(recipient_url, "").ws_url
    return target


async def reachable(url: str, default_port: int) -> str | None:
    """None if a TCP connection to ``url``'s host and port opens, else why not."""
    parts = urlsplit(url)
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or default_port), 3
        )
    except (OSError, TimeoutError) as exc:
        return f"{parts.scheme} unreachable at {parts.hostname}:{parts.port}: {exc!r}"
    writer.close()
    return None


# ------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class Options:
    config: relay.Config
    postgres: str
    redis: str
    nats: str


class Runner:
    """The four scenarios in order (b) (which sets the paced rate), (a), (c), (d)."""

    def __init__(self, options: Options, tmp: Path) -> None:
        self.options = options
        self.tmp = tmp
        self.report = Report()
        self.postgres = Postgres(options.postgres)
        self.template = ""  # the enrolled template database's name
        self.enrolled: relay.Liaison | None = None
        self.scenarios = {
            "a": Scenario("a", "1 node, SQLite", False, "memory://", 1),
            "b": Scenario("b", "1 node, PostgreSQL", True, "memory://", 1),
            "c": Scenario("c", "2 nodes, PG + Redis", True, options.redis, 2),
            "d": Scenario("d", "2 nodes, PG + NATS", True, options.nats, 2),
        }

    async def run(self) -> Report:
        report = self.report
        try:
            pg_down = await self.prepare_postgres()
            if pg_down is not None:
                for key in "bcd":
                    report.skipped[key] = pg_down
            else:
                rate = await self.attempt("b", self.run_postgres(self.scenarios["b"], None))
                if rate:
                    report.paced_rate = rate / 2
            rate = await self.attempt("a", self.run_sqlite(report.paced_rate))
            if report.paced_rate is None and rate:
                report.paced_rate = rate / 2
            for key, default_port in (("c", 6379), ("d", 4222)):
                if pg_down is not None:
                    continue
                scenario = self.scenarios[key]
                down = await reachable(scenario.bus, default_port)
                if down is not None:
                    report.skipped[key] = down
                    continue
                await self.attempt(key, self.run_postgres(scenario, report.paced_rate))
        finally:
            with contextlib.suppress(Exception):
                await self.postgres.drop_all()
            await self.postgres.close()
        return report

    async def attempt(self, key: str, scenario: Coroutine[Any, Any, float]) -> float | None:
        """Run one scenario; a failure becomes a note and the report goes on."""
        try:
            return await scenario
        except Exception as exc:
            self.report.skipped[key] = f"FAILED: {exc!r}"[:3000]
            return None

    async def prepare_postgres(self) -> str | None:
        """The README's cluster procedure once, on a template database: ``db upgrade``,
        ``admin-token``, then one node to enroll 200 cells through the admin API (stopped
        afterwards, so the database can be copied). Why PostgreSQL is unusable, or None."""
        try:
            await self.postgres.check()
        except Exception as exc:
            where = make_url(self.options.postgres).render_as_string(hide_password=True)
            return f"PostgreSQL unreachable at {where}: {exc!r}"[:300]
        self.template = f"bench_cluster_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        started = time.perf_counter()
        try:
            url = await self.postgres.create(self.template)
            cli("db", "upgrade", "--database", url)
            token = cli("admin-token", "--database", url, "--name", "bench").splitlines()[-1]
            port = relay.free_port()
            server = start_node("template", self.tmp, port, url, "memory://")
            base_url = f"http://127.0.0.1:{port}"
            try:
                await wait_ready(base_url, server, clustered=False)
                enrolled = relay.Liaison(base_url, token)
                await enrolled.enroll_all()
            finally:
                server.stop()
        except Exception as exc:
            return f"PostgreSQL setup failed: {exc!r}"[:3000]
        self.enrolled = enrolled
        self.report.notes.append(
            f"PostgreSQL setup (db upgrade, admin-token, {2 * relay.PAIRS} cells enrolled into "
            f"a template database): {time.perf_counter() - started:.1f} s"
        )
        return None

    async def run_sqlite(self, paced: float | None) -> float:
        scenario = self.scenarios["a"]
        port = relay.free_port()
        database = f"sqlite+aiosqlite:///{self.tmp / 'a.db'}"
        server = start_node("a-node1", self.tmp, port, database, scenario.bus)
        cluster = Cluster(scenario, [server], [f"http://127.0.0.1:{port}"], None, None)
        try:
            token = await server.wait_for_line("admin token:")
            await wait_ready(cluster.urls[0], server, clustered=False)
            target = relay.Liaison(cluster.urls[0], token)
            started = time.perf_counter()
            await target.enroll_all()
            self.report.notes.append(
                f"(a) setup: {2 * relay.PAIRS} cells enrolled in "
                f"{time.perf_counter() - started:.1f} s"
            )
            return await measure_cluster(cluster, target, self.options.config, paced, self.report)
        finally:
            self.report.notes.extend(cluster.stop())

    async def run_postgres(self, scenario: Scenario, paced: float | None) -> float:
        """A fresh copy of the template database, ``scenario.nodes`` nodes on it; senders link
        to the first node, recipients to the last."""
        assert self.enrolled is not None
        name = f"{self.template}_{scenario.key}"
        url = await self.postgres.create(name, template=self.template)
        servers: list[relay.Server] = []
        urls: list[str] = []
        for i in range(1, scenario.nodes + 1):
            port = relay.free_port()
            servers.append(start_node(f"{scenario.key}-node{i}", self.tmp, port, url, scenario.bus))
            urls.append(f"http://127.0.0.1:{port}")
        cluster = Cluster(scenario, servers, urls, self.postgres, name)
        try:
            for base_url, server in zip(urls, servers, strict=True):
                await wait_ready(base_url, server, clustered=scenario.nodes > 1)
            target = copy_target(self.enrolled, urls[0], urls[-1])
            return await measure_cluster(cluster, target, self.options.config, paced, self.report)
        finally:
            self.report.notes.extend(cluster.stop())


# ------------------------------------------------------------------------ the printed report


def fmt(value: float, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:{width}{spec}}"


def print_report(report: Report, config: relay.Config) -> None:
    paced = f"{report.paced_rate:.0f} msg/s" if report.paced_rate else "n/a"
    print(
        f"{relay.PAIRS} pairs, {relay.ENVELOPE_LEN}-byte envelopes (1 KiB payload), window "
        f"{relay.WINDOW}/sender at saturation, {config.warmup:g} s warm-up + "
        f"{config.duration:g} s measured per phase; paced = 50% of the single-node PostgreSQL "
        f"saturation rate = {paced}"
    )
    print(
        f"load generator on CPU {relay.GENERATOR_CPU}, every node on CPU {relay.SERVER_CPU} "
        f"({os.cpu_count()} cores: the two nodes of (c)/(d) share one); PostgreSQL, Redis and "
        f"NATS are shared, unpinned services"
    )
    print()
    header = (
        f"{'scenario':<24}  {'phase':<18}  {'msgs/s':>7}  {'p50 ms':>7}  {'p99 ms':>8}  "
        f"{'lost':>4}  {'refused':>7}  {'node cpu':>8}  {'pg cpu':>6}  {'bus cpu':>7}  "
        f"{'gen cpu':>7}  {'other':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in report.rows:
        r, c = row.result, row.costs
        name = f"({row.scenario.key}) {row.scenario.label}"
        print(
            f"{name:<24}  {row.phase:<18}  {r.rate:7.0f}  {r.p50:7.2f}  {r.p99:8.2f}  "
            f"{r.lost:4d}  {r.refused:7d}  {c.node_cpu:8.0%}  {fmt(c.pg_cpu, '.0%', 6)}  "
            f"{fmt(c.bus_cpu, '.0%', 7)}  {r.generator_cpu:7.0%}  {c.other_cpu:5.0%}"
        )
    for key, why in report.skipped.items():
        print(f"({key}) not measured: {why}")
    print()
    print("cost per message: CPU µs per delivered message; hints, commits, WAL per accepted one")
    header = (
        f"{'scenario':<24}  {'phase':<18}  {'node µs (n1+n2)':>17}  {'pg µs':>6}  "
        f"{'bus µs':>6}  {'hints':>5}  {'commits':>7}  {'commit ms':>9}  {'WAL KiB':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in report.rows:
        c = row.costs
        name = f"({row.scenario.key}) {row.scenario.label}"
        nodes = f"{sum(c.node_us):.0f}"
        if not c.delivered:
            nodes = "-"
        elif len(c.node_us) > 1:
            nodes = "+".join(f"{us:.0f}" for us in c.node_us) + f"={nodes}"
        print(
            f"{name:<24}  {row.phase:<18}  {nodes:>17}  {fmt(c.pg_us, '.0f', 6)}  "
            f"{fmt(c.bus_us, '.1f', 6)}  {fmt(c.hints, '.3f', 5)}  {fmt(c.commits, '.3f', 7)}  "
            f"{fmt(c.commit_ms, '.1f', 9)}  {fmt(c.wal_kib, '.1f', 7)}"
        )
    print()
    for line in projection(report):
        print(line)
    relay.print_sends(
        {(f"({row.scenario.key}) {row.scenario.label}", row.phase): row.result
         for row in report.rows},
        config.drain,
        report.notes,
    )  # fmt: skip


def usable(value: float) -> bool:
    return math.isfinite(value) and value > 0


def projection(report: Report) -> list[str]:
    """The capacity paragraph, from the saturation phases (where batches are largest)."""
    sat = {row.scenario.key: row for row in report.rows if row.phase == "saturation"}
    lines = ["capacity projection (saturation phases; CPU only: fsync and other waits excluded)"]
    for key in "ab":
        if key in sat and usable(us := sum(sat[key].costs.node_us)):
            row = sat[key]
            lines.append(
                f"- ({key}) {row.scenario.label}: {us:.0f} µs of relay CPU per message: a node on "
                f"its own core would carry ~{1e6 / us:,.0f} msg/s (measured {row.result.rate:,.0f}"
                f" msg/s, the node using {row.costs.node_cpu:.0%} of a core)."
            )
    single = sum(sat["b"].costs.node_us) if "b" in sat else float("nan")
    per_node_core = []
    for key in "cd":
        if key not in sat or not usable(total := sum(sat[key].costs.node_us)):
            continue
        row = sat[key]
        n1, n2 = row.costs.node_us
        per_node_core.append(1e6 / total)
        extra = f" ({total - single:+.0f} µs vs one node)" if usable(single) else ""
        lines.append(
            f"- ({key}) {row.scenario.label}: node 1 (senders) {n1:.0f} µs + node 2 (recipients) "
            f"{n2:.0f} µs = {total:.0f} µs per message{extra}; with senders and recipients "
            f"spread evenly, N nodes on N cores would carry ~N x {1e6 / total:,.0f} msg/s."
        )
    pg_rows = [sat[k] for k in "cdb" if k in sat and usable(sat[k].costs.pg_us)]
    if pg_rows:
        basis = pg_rows[0]  # the two-node figure if there is one
        capacity = 1e6 / basis.costs.pg_us
        parts = ", ".join(f"({r.scenario.key}) {r.costs.pg_us:.0f}" for r in pg_rows)
        commits = ", ".join(
            f"({r.scenario.key}) {r.costs.commits:.3f}" for r in pg_rows if usable(r.costs.commits)
        )
        lines.append(
            f"- PostgreSQL backends: {parts} µs of CPU per message, so one PostgreSQL core "
            f"carries ~{capacity:,.0f} msg/s (from ({basis.scenario.key})); group commits per "
            f"message: {commits}; WAL {basis.costs.wal_kib:.1f} KiB per message."
        )
        if per_node_core:
            nodes = capacity / min(per_node_core)
            lines.append(
                f"- So one PostgreSQL core keeps up with about {nodes:.1f} relay-node cores "
                f"(~{capacity:,.0f} msg/s): past that, PostgreSQL needs more cores (or less work "
                f"per message) before more nodes help."
            )
    for key in "cd":
        if key not in sat:
            continue
        c = sat[key].costs
        if usable(c.bus_us):
            lines.append(
                f"- ({key}) bus server: {c.bus_us:.1f} µs per message ({c.hints:.3f} hints per "
                f"message: one bus message per commit batch), so one core of it would carry "
                f"~{1e6 / c.bus_us:,.0f} msg/s."
            )
        elif c.delivered:
            tick = 0.01 * 1e6 / c.delivered
            lines.append(
                f"- ({key}) bus server: below /proc's 10 ms resolution, < {tick:.1f} µs per "
                f"message ({c.hints:.3f} hints per message: one bus message per commit batch)."
            )
    lines.append(
        "  (a 2-core machine shared with other work: orders of magnitude, not benchmarks of "
        "record; CPU is read from /proc in 10 ms ticks)"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per phase instead of 10 s")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("LIAISON_BENCH_POSTGRES_URL", DEFAULT_POSTGRES),
        help="a database on the PostgreSQL server to create the run's databases from "
        f"[default: {DEFAULT_POSTGRES}; env LIAISON_BENCH_POSTGRES_URL]",
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis bus URL [%(default)s]")
    parser.add_argument("--nats", default=DEFAULT_NATS, help="NATS bus URL [%(default)s]")
    args = parser.parse_args()
    config = relay.Config(
        warmup=1.0 if args.quick else 2.0,
        duration=3.0 if args.quick else 10.0,
        drain=5.0 if args.quick else 10.0,
        quick=args.quick,
    )
    options = Options(config, args.postgres, args.redis, args.nats)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {relay.GENERATOR_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="liaison-bench-cluster-"))
    started = time.perf_counter()
    try:
        report = uvloop.run(Runner(options, tmp).run())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(report, config)
    print(f"total run time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
