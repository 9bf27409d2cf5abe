"""End to end: SDK to SDK over the real relay, next to the relay alone and the ceiling.

    .venv/bin/python bench/e2e.py [--quick] [--pairs 8] [--window 16] [--uvloop]
                                  [--profile-out FILE]

One run measures, with the same 1 KiB payloads:

* **sdk**: ``--pairs`` sender/recipient cells (``liaison.client.Cell``), created and paired
  through the admin API and enrolled with ``Cell.enroll``, all in this process on CPU 0 (one
  event loop: the standard ``asyncio`` loop, what ``asyncio.run`` gives an SDK user, or uvloop
  with ``--uvloop``); the relay (``liaison server run``, durable SQLite) is a separate process
  pinned to CPU 1. Each sender calls ``await cell.send(recipient, text)`` with a 1024-character
  text body, keeping at most ``--window`` messages sent but not yet received; each recipient
  iterates ``cell.messages()``. Latency = from the ``send()`` call to the message coming out of
  the recipient's ``messages()`` (one process, one clock: the body starts with a tag that
  names the message). Delivery receipts flow back as the SDK sends them (nobody calls
  ``mark_read``). Everything the SDK does for a message — seal, store, send, ACCEPTED, store and
  ACK the DELIVER, yield it, seal and store the delivery receipt, open it at the sender — runs
  in this process: the ``sdk cpu`` column is that whole cost, both ends together.
* **liaison** (relay only) and **ceiling** (a bare ``websockets`` relay): bench/relay.py's own
  targets and phase runner, imported and reused unchanged (100 raw pairs, 4096-byte envelopes
  carrying a 1 KiB payload, never decrypted, window 32 per sender at saturation), run under
  uvloop on CPU 0 like bench/relay.py, against the same relay process.

Scenarios: saturation for all three, then all three paced at one common rate, half the SDK's
saturation rate (latency at equal load, well below the relay's capacity). bench/relay.py's
"50% of ceiling" overload scenario is not repeated here.

CPU split: a last, fixed-size SDK run (each pair sends the same count, about
``profile_seconds`` at the saturation rate, with the same window) under ``cProfile`` (wall
clock). Every function's own time goes to one bucket by its module: **crypto**
(``liaison.protocol`` ratchet/session/primitives/noise/link/keys/bundle, ``nacl``,
``cryptography``, ``hmac``), **storage** (``sqlite3``, ``liaison.client`` state/tables),
**I/O** (``websockets``, ``asyncio``, selectors/socket, ``liaison.client``
transport/runner/link), **other** (the rest of the SDK: cell, core, receive, outgoing,
envelope/frame encoding), **harness** (this file). Built-in functions and generic helpers
(``contextlib``, ``enum``, ``dataclasses``, ...) go to their callers' buckets; waiting in
``epoll`` is idle and left out (under ``--uvloop`` the loop's C code, its socket work and
its waiting are all inside one built-in call, counted as I/O: use the default loop for the
split). The wall time the loop spent busy but off the CPU (profiled
busy time minus the process CPU time of the run) is printed apart as **off-CPU** and taken out
of storage: it is the fsync inside each COMMIT (``synchronous=FULL``), which blocks the event
loop, so it limits throughput although it is not CPU (or the process being preempted, on a
shared machine). The profiler slows Python code more than C code and the disk: the shares are
proportions; ``~unprof`` spreads the process CPU per message of the unprofiled saturation run
over them. Also printed: the SDK functions with the largest cumulative time, and the SQLite
commits and statements per message, counted with a trace callback on each cell's connection
(a private attribute of the SDK, only read; counting costs a little harness time).

Pinning: this process on CPU 0, the relay and the ceiling on CPU 1 (``taskset``), as in
bench/relay.py. Both SDK ends share one core: on a 2-core machine with the relay on the other,
a second SDK process would only share CPU 0 with the first. This is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import inspect
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import uvloop

from liaison.client import Cell, ClientError, MessageExpired, SendFailed, StatusTimeout

if TYPE_CHECKING:
    from bench import relay
else:  # run as a script: bench/ is sys.path[0]
    import relay

BODY_LEN = 1024  # characters of ASCII text: a 1 KiB payload
PAD = "x" * BODY_LEN
RELAY_WINDOW = relay.WINDOW
T = TypeVar("T")
CLOSE_SECONDS = 10.0
PROFILE_MIN, PROFILE_MAX = 50, 500  # messages per pair in the profiled run


@dataclass(frozen=True)
class Options:
    config: relay.Config
    pairs: int
    window: int
    profile_seconds: float  # the profiled run sends about this long at the saturation rate
    uvloop: bool
    profile_out: Path | None = None


# ------------------------------------------------------------------------ SDK flows


class Flow:
    """One SDK phase: send times keyed by the tag that starts each body, and its window."""

    def __init__(self, name: str, pairs: int, window: int | None) -> None:
        self.name = name
        self.pending: dict[str, float] = {}
        self.slots = None if window is None else [asyncio.Semaphore(window) for _ in range(pairs)]
        self.start, self.end = float("-inf"), float("inf")  # the measuring window
        self.latencies: list[float] = []
        self.delivered = self.sent = 0

    def on_delivery(self, pair: int, tag: str) -> bool:
        now = time.perf_counter()
        sent_at = self.pending.pop(tag, None)
        if sent_at is None:
            return False
        if self.slots is not None:
            self.slots[pair].release()
        if self.start <= sent_at < self.end:
            self.latencies.append(now - sent_at)
        if self.start <= now < self.end:
            self.delivered += 1
        return True


@dataclass
class Pair:
    sender: Cell
    recipient: Cell
    recipient_name: str
    last_id: str = ""


@dataclass
class Counts:
    """SQLite statements seen on the cells' connections (the profiled run only)."""

    statements: Counter[str] = field(default_factory=Counter)
    commits: Counter[str] = field(default_factory=Counter)

    def tracer(self, role: str) -> Callable[[str], None]:
        statements, commits = self.statements, self.commits

        def trace(sql: str) -> None:
            statements[role] += 1
            if sql.startswith("COMMIT"):
                commits[role] += 1

        return trace


class Sdk:
    """The SDK cells of the benchmark, their recipients' readers, and the phases."""

    def __init__(self, options: Options, base_url: str, admin_token: str, tmp: Path) -> None:
        self.options = options
        self.base_url = base_url
        self.admin_token = admin_token
        self.tmp = tmp
        self.pairs: list[Pair] = []
        self.flow = Flow("idle", options.pairs, None)
        self.readers: list[asyncio.Task[None]] = []
        self.stray = 0
        self.failed: Counter[str] = Counter()  # messages yielded with an error, by error
        self.send_errors: Counter[str] = Counter()
        self.cells: list[Cell] = []  # every opened cell, closed together by close()

    async def open(self) -> None:
        """Create, pair and enroll the cells through the admin API and ``Cell.enroll``."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        names = [(f"e2e-s{i}", f"e2e-r{i}") for i in range(self.options.pairs)]
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30) as http:
            codes: dict[str, str] = {}
            for pair in names:
                for name in pair:
                    created = await http.post("/admin/cells", json={"name": name})
                    codes[name] = created.raise_for_status().json()["enrollment_code"]
                pairing = {"a": pair[0], "b": pair[1]}
                (await http.post("/admin/channels", json=pairing)).raise_for_status()
        gate = asyncio.Semaphore(4)

        async def enroll(name: str) -> Cell:
            async with gate:
                cell = await Cell.enroll(self.tmp / name, server=self.base_url, code=codes[name],
                                         name=name, wait_connected=15.0, linger=2.0)  # fmt: skip
                await cell.start()
                self.cells.append(cell)
                return cell

        cells = await asyncio.gather(*(enroll(name) for pair in names for name in pair))
        for i in range(self.options.pairs):
            self.pairs.append(Pair(cells[2 * i], cells[2 * i + 1], names[i][1]))
        self.readers = [
            asyncio.create_task(self._read(i), name=f"e2e-reader-{i}")
            for i in range(self.options.pairs)
        ]

    async def close(self) -> list[str]:
        notes = []
        for task in self.readers:
            task.cancel()
        for result in await asyncio.gather(*self.readers, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                notes.append(f"sdk: a reader failed: {result!r}")
        closing = asyncio.gather(*(cell.aclose() for cell in self.cells), return_exceptions=True)
        try:
            results = await asyncio.wait_for(closing, CLOSE_SECONDS)
        except TimeoutError:
            notes.append(f"sdk: the cells did not close within {CLOSE_SECONDS:g} s")
        else:
            notes.extend(f"sdk: a cell failed to close: {r!r}" for r in results if r is not None)
        return notes

    async def _read(self, pair: int) -> None:
        async for message in self.pairs[pair].recipient.messages():
            body = message.body
            if message.error is not None:
                self.failed[message.error] += 1
            elif not isinstance(body, str) or ";" not in body[:40]:
                self.stray += 1
            elif not self.flow.on_delivery(pair, body[: body.index(";")]):
                self.stray += 1  # a previous phase's straggler

    async def _send(self, flow: Flow, pair: int, n: int) -> None:
        tag = f"{flow.name}.{pair}.{n}"
        body = tag + ";" + PAD[len(tag) + 1 :]
        p = self.pairs[pair]
        flow.pending[tag] = time.perf_counter()
        try:
            p.last_id = await p.sender.send(p.recipient_name, body)
        except ClientError as exc:
            self.send_errors[type(exc).__name__] += 1
            flow.pending.pop(tag, None)
            if flow.slots is not None:
                flow.slots[pair].release()
            return
        flow.sent += 1

    # -- the senders' loops -------------------------------------------------------------------

    async def _saturate(self, flow: Flow, pair: int, count: int | None) -> None:
        """Keep the window full until the flow ends (or ``count`` messages are sent)."""
        assert flow.slots is not None
        acquire, n = flow.slots[pair].acquire, 0
        while count is None or n < count:
            await acquire()
            if time.perf_counter() >= flow.end:
                return
            n += 1
            await self._send(flow, pair, n)

    async def _pace(self, flow: Flow, pair: int, first: float, interval: float) -> None:
        due, n = first, 0
        while due < flow.end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            await self._send(flow, pair, n)
            due += interval

    # -- phases ---------------------------------------------------------------------------

    async def prime(self) -> None:
        """One message per pair, then wait for its delivery receipt: sessions are set up (bundle
        fetched, setup block sent) and both ends have sent, so later envelopes are steady-state."""
        await self.burst("prime", 1, timeout=30.0)

    async def burst(self, name: str, count: int, timeout: float) -> tuple[int, float]:
        """Each pair sends ``count`` messages with the window; waits (at most ``timeout``) for
        every delivery and for the sender to see the delivery receipt of its last message.
        Returns (messages delivered, seconds)."""
        flow = self.flow = Flow(name, len(self.pairs), self.options.window)
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(self._saturate(flow, i, count)) for i in range(len(self.pairs))
        ]
        deadline = started + timeout
        await asyncio.wait(tasks, timeout=timeout)
        while flow.pending and time.perf_counter() < deadline:  # a sender's tags are pending
            await asyncio.sleep(0.005)  # before it awaits send(), until they are received
        for task in tasks:
            task.cancel()
        for p in self.pairs:
            if p.last_id:
                remaining = max(0.1, deadline - time.perf_counter())
                with contextlib.suppress(StatusTimeout, SendFailed, MessageExpired):
                    await p.sender.wait_status(p.last_id, "delivered", timeout=remaining)
        return flow.delivered, time.perf_counter() - started

    async def run_phase(self, config: relay.Config, server_pid: int, rate: float | None,
                        name: str) -> relay.Result:  # fmt: skip
        """Saturation (``rate`` None) or paced at ``rate`` msgs/s over all pairs; the same
        accounting as bench/relay.py's ``run_phase``."""
        pairs = len(self.pairs)
        flow = self.flow = Flow(name, pairs, self.options.window if rate is None else None)
        begin = time.perf_counter()
        flow.start = begin + config.warmup
        flow.end = flow.start + config.duration
        if rate is None:
            tasks = [asyncio.create_task(self._saturate(flow, i, None)) for i in range(pairs)]
        else:
            interval = pairs / max(rate, 1.0)
            tasks = [
                asyncio.create_task(self._pace(flow, i, begin + interval * i / pairs, interval))
                for i in range(pairs)
            ]
        result = await relay.measure_window(flow, tasks, config, server_pid, rate)
        self.flow = Flow("idle", pairs, None)
        return result

    def trace(self, counts: Counts | None) -> None:
        """Count the SQLite statements of every cell (``None``: no counting)."""
        for p in self.pairs:
            for role, cell in (("sender", p.sender), ("recipient", p.recipient)):
                db = getattr(getattr(cell, "_store", None), "_db", None)
                if isinstance(db, sqlite3.Connection):
                    db.set_trace_callback(None if counts is None else counts.tracer(role))


# ------------------------------------------------------------------------ the CPU split

BUCKETS = ("crypto", "storage", "I/O", "other", "harness")
CRYPTO_FILES = ("ratchet.py", "session.py", "primitives.py", "noise.py", "link.py", "keys.py",
                "bundle.py")  # fmt: skip
CLIENT_STORAGE = ("state.py", "tables.py")
CLIENT_IO = ("transport.py", "runner.py", "link.py")
IO_PARTS = ("/websockets/", "/asyncio/", "/uvloop/", "/selectors.py", "/socket.py", "/ssl.py")
# Generic helpers: their own time belongs to whoever called them.
NEUTRAL_PARTS = ("/contextlib.py", "/enum.py", "/dataclasses.py", "/functools.py", "/abc.py",
                 "/typing.py", "/weakref.py", "<frozen ", "<string>")  # fmt: skip
HOT = 12  # SDK functions listed by cumulative time
IDLE = ("<method 'poll' of 'select.epoll' objects>", "<method 'select' of 'select.epoll'")


def file_bucket(path: str) -> str | None:
    """The bucket of a Python function by its file; ``None`` for generic helpers."""
    path = path.replace("\\", "/")
    base = path.rsplit("/", 1)[-1]
    if path.endswith("bench/e2e.py") or "/bench/relay.py" in path:
        return "harness"
    if "/liaison/protocol/" in path or ("/protocol/" in path and "/liaison" not in path):
        return "crypto" if base in CRYPTO_FILES else "other"
    if "/liaison/client/" in path or "/client/" in path:
        if base in CLIENT_STORAGE:
            return "storage"
        return "I/O" if base in CLIENT_IO else "other"
    if "/nacl/" in path or "/cryptography/" in path or base in ("hmac.py", "hashlib.py"):
        return "crypto"
    if "/sqlite3/" in path:
        return "storage"
    if any(part in path for part in IO_PARTS):
        return "I/O"
    if any(part in path for part in NEUTRAL_PARTS) or path == "<string>":
        return None
    return "other"


def builtin_bucket(name: str) -> str | None:
    """The bucket of a built-in function by its name; ``None``: its caller's bucket."""
    if name.startswith(IDLE):
        return "idle"
    if "sqlite3" in name:
        return "storage"
    return None


def label(code: CodeType | str) -> str:
    """``file:line function`` (paths from the package or the standard library), or a
    built-in's short name."""
    if isinstance(code, str):
        method = re.fullmatch(r"<method '(\w+)' of '([\w.]+)' objects>", code)
        if method:
            return ".".join([*method[2].split(".")[-2:], method[1]]) + "()"
        builtin = re.fullmatch(r"<built-in (?:method|function) ([\w.]+)>", code)
        return builtin[1] + "()" if builtin else code
    path = code.co_filename.replace("\\", "/")
    for marker in ("/liaison/", "/site-packages/", "/work/main/"):
        if marker in path:
            return f"{path.split(marker, 1)[1]}:{code.co_firstlineno} {code.co_name}"
    path = re.sub(r"^.*/lib/python3\.\d+/", "", path)
    return f"{path}:{code.co_firstlineno} {code.co_name}"


@dataclass
class Split:
    seconds: dict[str, float]  # by bucket, including "idle"
    top: dict[str, list[tuple[float, str]]]  # by bucket: (seconds, function), largest first
    hot: list[tuple[float, int, str]]  # SDK functions by cumulative time: (seconds, calls, name)


def split(profile: cProfile.Profile) -> Split:
    """Each function's own time, by bucket (see the module docstring)."""
    entries = profile.getstats()
    # (caller, own time of the callee when called from it), per callee
    callers: dict[CodeType | str, list[tuple[CodeType | str, float]]] = {}
    for entry in entries:
        for sub in entry.calls or ():
            callers.setdefault(sub.code, []).append((entry.code, sub.inlinetime))
    resolved: dict[CodeType | str, str] = {}

    def own(code: CodeType | str) -> str | None:
        return builtin_bucket(code) if isinstance(code, str) else file_bucket(code.co_filename)

    def bucket_of(code: CodeType | str) -> str:
        """A function's bucket; a neutral one takes the bucket of its callers' largest share."""
        if code in resolved:
            return resolved[code]
        found = own(code)
        if found is None:
            resolved[code] = "other"  # while resolving: a call cycle ends here
            weights: defaultdict[str, float] = defaultdict(float)
            for caller, seconds in callers.get(code, ()):
                weights[bucket_of(caller)] += seconds
            found = max(weights, key=weights.__getitem__) if weights else "other"
        resolved[code] = found
        return found

    seconds: defaultdict[str, float] = defaultdict(float)
    top: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    for entry in entries:
        bucket = own(entry.code)
        if bucket is not None:
            shares = [(bucket, entry.inlinetime)]
        else:  # split a neutral function's time over its callers' buckets
            shares = [(bucket_of(caller), t) for caller, t in callers.get(entry.code, ())]
            rest = entry.inlinetime - sum(t for _, t in shares)
            if rest > 0:
                shares.append((bucket_of(entry.code), rest))
        where = label(entry.code)
        if isinstance(entry.code, str) and callers.get(entry.code):
            caller = max(callers[entry.code], key=lambda item: item[1])[0]
            where += f" in {label(caller)}"
        for name, t in shares:
            seconds[name] += t
            top[name][where] += t
    largest = {
        name: sorted(((t, function) for function, t in functions.items()), reverse=True)[:4]
        for name, functions in top.items()
    }
    sdk = [
        (entry.totaltime, entry.callcount, label(entry.code))
        for entry in entries
        if not isinstance(entry.code, str)
        and re.search(r"/liaison/(client|protocol)/", entry.code.co_filename)
        and not entry.code.co_flags & (inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR)
    ]
    return Split(dict(seconds), largest, sorted(sdk, reverse=True)[:HOT])


@dataclass
class Profiled:
    per_pair: int = 0
    messages: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # process CPU seconds during the run
    split: Split | None = None
    counts: Counts = field(default_factory=Counts)


# ------------------------------------------------------------------------ the run


@dataclass
class Report:
    results: dict[tuple[str, str], relay.Result] = field(default_factory=dict)
    paced_rate: float = 0.0
    profiled: Profiled = field(default_factory=Profiled)
    notes: list[str] = field(default_factory=list)


async def profile_run(sdk: Sdk, count: int, options: Options, profiled: Profiled) -> None:
    """A fixed-size burst under cProfile (wall clock), counting the SQLite statements."""
    profiled.per_pair = count
    sdk.trace(profiled.counts)
    profile = cProfile.Profile()
    cpu = time.process_time()
    profile.enable()
    try:
        profiled.messages, profiled.wall = await sdk.burst(
            "profile", count, timeout=options.profile_seconds * 4
        )
    finally:
        profile.disable()
        sdk.trace(None)
    profiled.cpu = time.process_time() - cpu
    profiled.split = split(profile)
    if options.profile_out is not None:
        profile.dump_stats(options.profile_out)


async def run_sdk(options: Options, server: relay.Server, port: int, tmp: Path,
                  report: Report) -> tuple[str, str]:  # fmt: skip
    """The SDK scenarios; returns the relay's base URL and admin token."""
    token = await server.wait_for_line("admin token:")
    base_url = f"http://127.0.0.1:{port}"
    await relay.wait_http(base_url + "/healthz", server)
    config, pid = options.config, server.proc.pid
    started = time.perf_counter()
    sdk = Sdk(options, base_url, token, tmp / "cells")
    try:
        await sdk.open()
        await sdk.prime()
        report.notes.append(
            f"sdk setup ({2 * options.pairs} cells created, paired, enrolled with Cell.enroll, "
            f"opened; one message per pair to set the sessions up): "
            f"{time.perf_counter() - started:.1f} s"
        )
        saturated = await sdk.run_phase(config, pid, None, "sat")
        report.results[("saturation", "sdk")] = saturated
        report.paced_rate = max(1.0, saturated.rate / 2)
        paced = await sdk.run_phase(config, pid, report.paced_rate, "paced")
        report.results[("paced", "sdk")] = paced

        count = round(saturated.rate * options.profile_seconds / options.pairs)
        count = max(PROFILE_MIN, min(PROFILE_MAX, count))
        await profile_run(sdk, count, options, report.profiled)
        if options.profile_out is not None:
            report.notes.append(f"pstats of the profiled run: {options.profile_out}")
    finally:
        report.notes.extend(await sdk.close())
    if sdk.stray:
        report.notes.append(f"sdk: {sdk.stray} messages received outside their phase")
    if sdk.failed:
        report.notes.append(f"sdk: messages yielded with an error: {dict(sdk.failed)}")
    if sdk.send_errors:
        report.notes.append(f"sdk: send() raised: {dict(sdk.send_errors)}")
    return base_url, token


async def run_relay(options: Options, server: relay.Server, base_url: str, token: str,
                    tmp: Path, report: Report) -> None:  # fmt: skip
    """bench/relay.py's ceiling and relay-only targets: saturation, then paced at the SDK's
    common rate."""
    started = time.perf_counter()
    liaison = relay.Liaison(base_url, token)
    await liaison.enroll_all()
    report.notes.append(
        f"liaison setup (bench/relay.py: {2 * relay.PAIRS} cells created, enrolled, paired): "
        f"{time.perf_counter() - started:.1f} s"
    )
    ceiling_port = relay.free_port()
    ceiling_server = relay.Server(
        "ceiling", [sys.executable, relay.__file__, "--serve-ceiling", str(ceiling_port)], tmp
    )
    try:
        await ceiling_server.wait_for_line("ready")
        ceiling = relay.Ceiling(f"ws://127.0.0.1:{ceiling_port}", liaison.envelopes)
        await measure_target(ceiling, options, ceiling_server.proc.pid, report)
    finally:
        ceiling_server.stop()
    await measure_target(liaison, options, server.proc.pid, report)


async def measure_target(target: relay.Target, options: Options, pid: int, report: Report) -> None:
    tracker = relay.Tracker()
    await target.open(tracker)
    try:
        for scenario, rate in (("saturation", None), ("paced", report.paced_rate)):
            result = await relay.run_phase(target, tracker, options.config, pid, rate)
            report.results[(scenario, target.name)] = result
    finally:
        await target.close()
    if tracker.stray:
        report.notes.append(f"{target.name}: {tracker.stray} deliveries of unknown messages")
    if target.events:
        report.notes.append(f"{target.name}: other frames {dict(target.events)}")


def run_all(options: Options, tmp: Path) -> Report:
    report = Report()
    venv_bin = Path(sys.executable).parent
    port = relay.free_port()
    server = relay.Server("liaison", [
        str(venv_bin / "liaison"), "server", "run", "--port", str(port),
        "--database", f"sqlite+aiosqlite:///{tmp / 'relay.db'}",
        "--key-file", str(tmp / "relay.key"),
    ], tmp)  # fmt: skip
    try:
        sdk_main = run_sdk(options, server, port, tmp, report)
        base_url, token = run_loop(sdk_main, uvloop_=options.uvloop)
        # bench/relay.py's targets run as in bench/relay.py: under uvloop.
        run_loop(run_relay(options, server, base_url, token, tmp, report), uvloop_=True)
    finally:
        server.stop()
    return report


def run_loop(main: Coroutine[Any, Any, T], *, uvloop_: bool) -> T:
    if uvloop_:
        return uvloop.run(main)
    return asyncio.run(main)


# ------------------------------------------------------------------------ the report


def print_report(report: Report, options: Options) -> None:
    config = options.config
    loop = "uvloop" if options.uvloop else "asyncio"
    print(
        f"sdk: {options.pairs} pairs of Cells in one process ({loop} loop, CPU 0), "
        f"{BODY_LEN}-byte text bodies, window {options.window}/sender at saturation; "
        f"relay process on CPU 1"
    )
    print(
        f"ceiling, liaison: bench/relay.py's targets ({relay.PAIRS} raw pairs, "
        f"{relay.ENVELOPE_LEN}-byte envelopes, window {RELAY_WINDOW}/sender, uvloop)"
    )
    print(
        f"{config.warmup:g} s warm-up + {config.duration:g} s measured per scenario; "
        f"paced = all three at {report.paced_rate:.0f} msgs/s (half the SDK's saturation rate)"
    )
    print()
    header = (
        f"{'scenario':<11}  {'target':<8}  {'msgs/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  "
        f"{'srv cpu':>7}  {'gen/sdk':>7}  {'other':>5}  sdk vs"
    )
    print(header)
    print("-" * (len(header) + 40))
    results = report.results
    for scenario in ("saturation", "paced"):
        ceiling = results.get((scenario, "ceiling"))
        liaison = results.get((scenario, "liaison"))
        for name in ("ceiling", "liaison", "sdk"):
            r = results.get((scenario, name))
            if r is None:
                continue
            verdict = ""
            if name == "sdk" and ceiling is not None and liaison is not None:
                if scenario == "saturation":
                    verdict = (f"{r.rate / ceiling.rate:.3f}x ceiling, "
                               f"{r.rate / liaison.rate:.3f}x relay-only")  # fmt: skip
                else:
                    verdict = (f"p50 +{r.p50 - liaison.p50:.2f} ms, p99 "
                               f"+{r.p99 - liaison.p99:.2f} ms over relay-only")  # fmt: skip
            print(
                f"{scenario:<11}  {name:<8}  {r.rate:8.0f}  {r.p50:8.2f}  {r.p99:8.2f}  "
                f"{r.server_cpu:7.0%}  {r.generator_cpu:7.0%}  {r.other_cpu:5.0%}  {verdict}"
            )
    relay.print_sends(results, config.drain, report.notes)
    print_split(report, options)


def print_split(report: Report, options: Options) -> None:
    p = report.profiled
    if p.split is None or not p.messages:
        print("\nno profiled run")
        return
    n = p.messages
    seconds = p.split.seconds
    busy = sum(t for b, t in seconds.items() if b != "idle")
    # The loop thread was busy (not in epoll) but the process was not on a CPU: blocked in
    # fsync inside COMMIT (all of it is in the storage bucket), or preempted.
    off_cpu = max(0.0, busy - p.cpu)
    on_cpu = dict(seconds)
    on_cpu["storage"] = max(0.0, on_cpu.get("storage", 0.0) - off_cpu)
    cpu_total = sum(on_cpu.get(b, 0.0) for b in BUCKETS)
    sat = report.results.get(("saturation", "sdk"))
    unprofiled = sat.generator_cpu / sat.rate if sat is not None and sat.rate else float("nan")
    print()
    print(
        f"SDK cost per message, both ends (send, ACCEPTED, DELIVER + ACK, messages(), delivery "
        f"receipt out and in): {n} messages ({options.pairs} pairs x {p.per_pair}, window "
        f"{options.window}) under cProfile, wall clock, {p.wall:.2f} s"
    )
    header = (
        f"{'bucket':<9}  {'µs/msg':>8}  {'share':>6}  {'~unprof':>7}  "
        f"largest own times (µs/msg, profiled)"
    )
    print(header)
    print("-" * (len(header) + 80))
    for bucket in BUCKETS:
        t = on_cpu.get(bucket, 0.0)
        tops = "; ".join(f"{s / n * 1e6:.0f} {name}" for s, name in p.split.top.get(bucket, [])[:3])
        print(
            f"{bucket:<9}  {t / n * 1e6:8.1f}  {t / cpu_total:6.1%}  "
            f"{t / cpu_total * unprofiled * 1e6:7.0f}  {tops}"
        )
    print(
        f"{'CPU':<9}  {cpu_total / n * 1e6:8.1f}  {1:6.0%}  {unprofiled * 1e6:7.0f}  "
        f"(profiled process CPU {p.cpu / n * 1e6:.0f} µs/msg; ~unprof = share x the process "
        f"CPU per message of the unprofiled saturation run)"
    )
    print(
        f"{'off-CPU':<9}  {off_cpu / n * 1e6:8.1f}  {'':6}  {'':7}  event loop blocked: fsync in "
        f"COMMIT (taken out of storage, whose wall time was "
        f"{seconds.get('storage', 0.0) / n * 1e6:.0f} µs/msg), or the process preempted"
    )
    print(
        f"{'idle':<9}  {seconds.get('idle', 0.0) / n * 1e6:8.1f}  {'':6}  {'':7}  waiting in epoll"
    )
    if sat is not None and sat.rate:
        print(
            f"unprofiled saturation run: {1e6 / sat.rate:.0f} µs of event-loop wall time per "
            f"message, {unprofiled * 1e6:.0f} µs of it on a CPU"
        )
    print()
    print(
        "SDK functions by cumulative time in the profiled run (µs/msg, wall; coroutines left "
        "out: their time is in the functions they call)"
    )
    for t, calls, name in p.split.hot:
        print(f"  {t / n * 1e6:8.1f} µs/msg  {calls / n:5.2f} calls/msg  {name}")
    counts = p.counts
    if counts.statements:
        print(
            "SQLite per message: "
            + ", ".join(
                f"{role} {counts.commits[role] / n:.2f} commits / "
                f"{counts.statements[role] / n:.1f} statements"
                for role in ("sender", "recipient")
            )
            + " (each commit fsync'd: synchronous=FULL)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per scenario instead of 10 s")
    parser.add_argument("--pairs", type=int, default=8, help="SDK sender/recipient pairs")
    parser.add_argument("--window", type=int, default=16, help="SDK messages in flight/sender")
    parser.add_argument("--uvloop", action="store_true", help="run the SDK cells under uvloop")
    parser.add_argument("--profile-out", type=Path, metavar="FILE",
                        help="also write the profiled run's pstats to FILE")  # fmt: skip
    args = parser.parse_args()
    if not 1 <= args.pairs <= 50 or not 1 <= args.window <= 256:
        parser.error("--pairs must be 1..50 and --window 1..256")
    config = relay.Config(warmup=1.0 if args.quick else 2.0,
                          duration=3.0 if args.quick else 10.0,
                          drain=5.0 if args.quick else 10.0, quick=args.quick)  # fmt: skip
    options = Options(config, args.pairs, args.window, 2.0 if args.quick else 5.0, args.uvloop,
                      args.profile_out)  # fmt: skip
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {relay.GENERATOR_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="liaison-e2e-"))
    try:
        report = run_all(options, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(report, options)


if __name__ == "__main__":
    main()
