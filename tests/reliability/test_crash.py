"""Crash reliability (issue #5): nothing is lost, duplicated or reordered when processes die.

**Relay crash** (:func:`test_relay_sigkilled_mid_stream`, on SQLite and on PostgreSQL). A real
``liaison server run`` process serves ``CHANNELS`` channels (two cells each, all open in this
process) exchanging ``RELAY_MESSAGES`` messages in all four precedences, both ways, in bursts.
A seeded schedule SIGKILLs the relay ``RELAY_KILLS`` times and restarts it on the same
database, port and key after a random downtime. The stream is cut into ``RELAY_KILLS + 1``
slots: senders are held at the end of slot k (a :class:`~tests.reliability.traffic.Gate`)
until kill k has happened, and kill k fires right after a random number of that slot's sends,
once the (restarted) relay has carried traffic for a random while; so every kill lands
mid-stream, with messages in flight. While the relay is down each cell sends two more
messages (into its outbox); the cells reconnect by themselves.

**SDK crash** (:func:`test_sdk_processes_sigkilled_mid_stream`). Two cells, each run by a
``crash_worker.py`` process that sends its next batch to the other and hands what it receives
to an idempotent application (``messages(confirm=True)``, record by id, ``confirm``). Per
round a seeded RNG picks the victims (one cell or both) and, for each, the moment: a delay
after its spawn or after it was linked, or right after its N-th send or N-th received message
of the round (watched in its journal). The other process runs to its end; a last round runs
unkilled.

What must hold afterwards, counted by :class:`~tests.reliability.ledger.Ledger`: every message
whose ``send()`` returned was handed to the recipient's application exactly once (``lost``,
``duplicated``: 0), in order per channel within each precedence (``out_of_order``: 0), nothing
else was handed over (``unexpected``: 0), ``messages(confirm=True)`` never yielded a confirmed
message again, every sent message got its delivery receipt, and every session still works:
one more message each way afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from liaison.client import Cell
from tests.client import workers
from tests.client.workers import Worker, journal_lines

from .ledger import Ledger, body, precedence_of
from .relaykit import KillableRelay, migrate, postgres_database, provision
from .report import record, scaled
from .traffic import Gate, Party, open_parties, wait_for

SEED = int(os.environ.get("LIAISON_RELIABILITY_SEED", "20250605"))

CHANNELS = scaled(4, 20)
RELAY_MESSAGES = scaled(320, 10_000)
"""Messages in total over all channels and both directions (the final ones not counted)."""
RELAY_KILLS = scaled(3, 6)
SEND_SECONDS = scaled(3, 75)
"""The nominal span of the stream (pauses for kills not counted)."""
DOWNTIME = (0.0, 0.6)
"""Seconds between a SIGKILL and the restart."""
UPTIME = (0.1, 0.6)
"""Seconds a restarted relay serves, at least, before the next kill."""
CELL_OPTIONS: dict[str, Any] = {
    "backoff": (0.05, 0.5),
    "wait_connected": 60.0,
    "request_timeout": 30.0,
}
DRAIN_TIMEOUT = scaled(60, 300)
TEST_TIMEOUT = scaled(150, 1200)

SDK_ROUNDS = scaled(5, 40)
SDK_BATCH = scaled(10, 25)
SDK_PACE = (0.02, 0.06)
SDK_KILL_DELAY = (0.05, 0.6)
SDK_IDLE = 0.6
WORKER = Path(__file__).with_name("crash_worker.py")
PEER = {"sdk-a": "sdk-b", "sdk-b": "sdk-a"}
SALT = {"sdk-a": 1, "sdk-b": 2}
FINISH_TIMEOUT = 90.0


# -- relay crash ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    at_sent: int
    at_handled: int
    downtime: float

    def __str__(self) -> str:
        return f"kill at {self.at_sent} sent / {self.at_handled} handled, down {self.downtime:.2f}s"


def _ready_to_kill(
    ledger: Ledger, threshold: int, handled_before: int, not_before: float
) -> Callable[[], bool]:
    loop = asyncio.get_running_loop()

    def ready() -> bool:
        return (
            len(ledger.sent) >= threshold
            and ledger.count_handled() > handled_before
            and loop.time() >= not_before
        )

    return ready


async def _kill_schedule(
    relay: KillableRelay, ledger: Ledger, gate: Gate, parties: list[Party], per_party: int,
    rng: random.Random,
) -> list[Kill]:  # fmt: skip
    """SIGKILL and restart the relay ``RELAY_KILLS`` times at random points of the stream.

    The stream is cut into ``RELAY_KILLS + 1`` slots; senders are held at the end of slot k
    until kill k has happened, which fires after a random number of the slot's sends once the
    (restarted) relay has carried traffic for a random while. While the relay is down each
    sender may send two more messages (into its outbox)."""
    kills: list[Kill] = []
    slots = RELAY_KILLS + 1
    loop = asyncio.get_running_loop()
    for k in range(RELAY_KILLS):
        cap = math.ceil((k + 1) * per_party / slots)
        sent_now = len(ledger.sent)
        room = cap * len(parties) - sent_now
        assert room > 0, f"slot {k} is full before the relay came back"
        threshold = sent_now + max(1, int(rng.uniform(0.2, 0.9) * room))
        handled_now = ledger.count_handled()
        gate.set(cap)
        ready = _ready_to_kill(ledger, threshold, handled_now, loop.time() + rng.uniform(*UPTIME))
        reached = await wait_for(ready, DRAIN_TIMEOUT, step=0.002)
        assert reached, f"no progress before kill {k}: {len(ledger.sent)} sent, " \
            f"{ledger.count_handled()} handled"  # fmt: skip
        at_sent, at_handled = len(ledger.sent), ledger.count_handled()
        await relay.kill()
        downtime = rng.uniform(*DOWNTIME)
        kills.append(Kill(at_sent, at_handled, downtime))
        if k + 1 < RELAY_KILLS:
            gate.set(min(cap, max(party.next_index for party in parties) + 2))
        else:
            gate.set(None)
        await asyncio.sleep(downtime)  # the cells send on meanwhile: into their outboxes
        await relay.start()
    return kills


async def _delivery_receipts_missing(parties: dict[str, Party], timeout: float) -> int:
    async def missing() -> int:
        return sum([len(await party.undelivered()) for party in parties.values()])

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (count := await missing()) and loop.time() < deadline:
        await asyncio.sleep(0.2)
    return count


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_relay_sigkilled_mid_stream(tmp_path: Path, database: str) -> None:
    rng = random.Random(f"{SEED}-relay-{database}")
    ledger = Ledger()
    started = time.monotonic()
    phases: list[str] = []

    def phase(name: str) -> None:
        phases.append(f"{name} {time.monotonic() - started:.1f}s")

    async with contextlib.AsyncExitStack() as stack:
        if database == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
        else:
            url = await stack.enter_async_context(postgres_database())
        await migrate(url)
        relay = KillableRelay(tmp_path / "relay", url)
        stack.push_async_callback(relay.stop)
        await relay.start()
        channels = [(f"rc{i}a", f"rc{i}b") for i in range(CHANNELS)]
        homes = await provision(relay, tmp_path / "cells", channels)
        parties = await stack.enter_async_context(
            open_parties(homes, channels, ledger, **CELL_OPTIONS)
        )
        phase("provisioned")
        per_party = RELAY_MESSAGES // len(parties)
        total = per_party * len(parties)
        pace = SEND_SECONDS / per_party

        def progress() -> str:
            return f"{len(ledger.sent)}/{total} sent, {ledger.count_handled()} handled, " \
                f"results {ledger.results()}\n{ledger.explain()}"  # fmt: skip

        def all_handled(expected: int) -> bool:
            for party in parties.values():
                party.check()
            return ledger.count_handled() >= expected

        async with asyncio.timeout(TEST_TIMEOUT):
            # Every cell's first message sets up its session (a bundle fetch needs the relay).
            await asyncio.gather(*(party.send_next() for party in parties.values()))
            gate = Gate(0)
            senders = [
                asyncio.create_task(party.send_stream(per_party - 1, pace,
                                                      random.Random(rng.random()), gate))
                for party in parties.values()
            ]  # fmt: skip
            try:
                kills = await _kill_schedule(relay, ledger, gate, list(parties.values()),
                                             per_party, rng)  # fmt: skip
                phase("killed")
                await asyncio.gather(*senders)
                phase("sent")
            finally:
                for task in senders:
                    task.cancel()
                await asyncio.gather(*senders, return_exceptions=True)
            assert await wait_for(lambda: all_handled(total), DRAIN_TIMEOUT), progress()
            phase("handled")

            # The sessions still work: one more message each way on every channel.
            await asyncio.gather(*(party.send_next() for party in parties.values()))
            final = total + len(parties)
            assert await wait_for(lambda: all_handled(final), DRAIN_TIMEOUT), progress()
            phase("final handled")
            missing_receipts = await _delivery_receipts_missing(parties, DRAIN_TIMEOUT)
            phase("receipts")
        await asyncio.sleep(0.5)  # late duplicates, if any, would show up now
        results = ledger.results()
        logs = relay.output()

    plan = "\n".join(str(k) for k in kills)
    assert relay.kills == RELAY_KILLS, plan
    # The kills really landed mid-stream: messages still to send, some still to hand over,
    # and traffic flowing again between one kill and the next.
    handled_at = [k.at_handled for k in kills]
    assert all(0 < k.at_sent < total and k.at_handled < total for k in kills), plan
    assert handled_at == sorted(set(handled_at)), plan
    assert results == {"lost": 0, "duplicated": 0, "out_of_order": 0, "unexpected": 0}, (
        f"{results}\n{plan}\n{ledger.explain()}"
    )
    assert ledger.count_handled() == final, plan
    assert missing_receipts == 0, plan
    assert "Traceback" not in logs, logs[-5000:]
    in_flight = sum(k.at_sent - k.at_handled for k in kills)
    elapsed = time.monotonic() - started
    print(f"{database}: {final} messages, {relay.kills} relay kills, {in_flight} in flight at "
          f"the kills, {ledger.again} re-yields, {elapsed:.1f} s ({', '.join(phases)})\n"
          f"{plan}")  # fmt: skip
    record(
        "crash",
        f"relay SIGKILL mid-stream ({database})",
        {"channels": CHANNELS, "messages": final, "relay_kills": relay.kills,
         "in_flight_at_kills": in_flight},
        results | {"receipts_missing": missing_receipts},
    )  # fmt: skip


# -- SDK crash ------------------------------------------------------------------------------------


class Crowd(workers.Crowd):
    """The SDK crash workers (``crash_worker.py``: one process sends and receives)."""

    def sdk(self, home: Path, name: str, peer: str, journal: Path, start: int, count: int,
            pace: float, salt: int) -> Worker:  # fmt: skip
        return self.start(name, str(home), name, peer, str(journal), str(start), str(count),
                          f"{pace:.3f}", str(SDK_IDLE), str(salt))  # fmt: skip


@pytest.fixture
def crowd(tmp_path: Path) -> Iterator[Crowd]:
    with Crowd(tmp_path, WORKER) as started:
        yield started


def _next_index(path: Path) -> int:
    return max((int(p[1]) for p in journal_lines(path) if p[0] == "about"), default=-1) + 1


@dataclass
class Audit:
    """What the journals say about one cell's application."""

    reyield_confirmed: int = 0
    """``messages(confirm=True)`` yielded an id after ``confirm`` had returned for it."""
    reyield_in_run: int = 0
    """One process (one iteration) yielded the same id twice."""
    rescued: int = 0
    """Yielded to a process that died before recording it, and yielded again later: lost to
    the application with the at-most-once ``messages()``."""


def _body_of(name: str, index: int) -> str:
    return body(name, index, precedence_of(index, SALT[name]))


def _read_journals(name: str, peer: str, mine: Path, ledger: Ledger, audit: Audit) -> None:
    """Feed ``name``'s journal into the ledger: its sends (to ``peer``) and what it handled."""
    confirmed: set[str] = set()
    recorded: set[str] = set()
    in_run: set[str] = set()
    unrecorded: set[str] = set()  # yielded to a run that died before recording them
    for parts in [*journal_lines(mine), ["start"]]:
        kind = parts[0]
        if kind == "start":
            unrecorded |= in_run - recorded
            in_run = set()
        elif kind == "about":
            ledger.attempt(_body_of(name, int(parts[1])), peer)
        elif kind == "sent":
            ledger.done(_body_of(name, int(parts[1])))
        elif kind == "got":
            audit.reyield_in_run += parts[1] in in_run
            audit.reyield_confirmed += parts[1] in confirmed
            in_run.add(parts[1])
        elif kind == "again":
            ledger.again += 1
        elif kind in ("msg", "bad"):
            message_id = parts[1]
            recorded.add(message_id)
            audit.rescued += message_id in unrecorded
            if kind == "msg":
                ledger.handle(name, message_id, parts[3], parts[2], None)
            else:
                ledger.handle(name, message_id, "", "", parts[2])
        elif kind == "conf":
            confirmed.add(parts[1])


@dataclass
class SdkPlan:
    lines: list[str] = field(default_factory=list)
    kills: int = 0
    mid_send: int = 0
    """Kills before the victim's batch was all sent and accepted."""
    mid_receive: int = 0
    """Kills while the peer had sent more than the victim's application had handled."""
    last: dict[str, int] = field(default_factory=dict)
    """Each cell's final message, sent in the clean last round."""


def _trigger(rng: random.Random) -> tuple[str, float]:
    """When to kill a victim: a delay after its spawn or after it was linked, or right after
    its N-th send or N-th received message of the round."""
    kind = rng.choice(("spawn", "ready", "sent", "got"))
    if kind in ("spawn", "ready"):
        return kind, rng.uniform(*SDK_KILL_DELAY)
    return kind, rng.randint(1, SDK_BATCH // 2 if kind == "got" else SDK_BATCH - 1)


def _run(path: Path, starts_before: int) -> list[str] | None:
    """The journal lines' kinds of the current run (``None`` before it has started)."""
    kinds = [p[0] for p in journal_lines(path)]
    starts = [i for i, kind in enumerate(kinds) if kind == "start"]
    return kinds[starts[starts_before] :] if len(starts) > starts_before else None


def _sdk_rounds(rng: random.Random, homes: dict[str, Path], root: Path, crowd: Crowd
                ) -> SdkPlan:  # fmt: skip
    """The killing rounds, then a clean one (blocking: run it in a thread)."""
    plan = SdkPlan()
    for round_no in range(SDK_ROUNDS + 1):
        last = round_no == SDK_ROUNDS
        workers, starts = {}, {}
        for name in homes:
            start = _next_index(_journal(root, name))
            plan.last[name] = start
            starts[name] = sum(1 for p in journal_lines(_journal(root, name)) if p[0] == "start")
            workers[name] = crowd.sdk(homes[name], name, PEER[name], _journal(root, name),
                                        start, 1 if last else SDK_BATCH,
                                        rng.uniform(*SDK_PACE), SALT[name])  # fmt: skip
        victims = [] if last else rng.choice([["sdk-a"], ["sdk-b"], ["sdk-a", "sdk-b"]])
        pending = {name: _trigger(rng) for name in victims}
        triggers = dict(pending)
        ready: dict[str, float] = {}
        killed = []
        deadline = time.monotonic() + FINISH_TIMEOUT
        while pending and time.monotonic() < deadline:
            now = time.monotonic()
            for name, (kind, value) in list(pending.items()):
                worker = workers[name]
                run = _run(_journal(root, name), starts[name])
                if run is not None:
                    ready.setdefault(name, now)
                fire = {
                    "spawn": now >= worker.started + value,
                    "ready": name in ready and now >= ready[name] + value,
                    "sent": run is not None and run.count("sent") >= value,
                    "got": run is not None and run.count("got") >= value,
                }[kind]
                if worker.proc.poll() is not None:
                    del pending[name]  # it finished first
                elif fire:
                    del pending[name]
                    peer_run = _run(_journal(root, PEER[name]), starts[PEER[name]])
                    handled = sum(
                        1 for p in journal_lines(_journal(root, name)) if p[0] in ("msg", "bad")
                    )
                    peer_sent = sum(
                        1 for p in journal_lines(_journal(root, PEER[name])) if p[0] == "sent"
                    )
                    if worker.kill():
                        killed.append(name)
                        plan.kills += 1
                        plan.mid_send += run is None or "flushed" not in run
                        receiving = peer_sent > handled or (
                            peer_run is not None and "flushed" not in peer_run
                            and workers[PEER[name]].proc.poll() is None
                        )  # fmt: skip
                        plan.mid_receive += run is not None and "got" in run and receiving
            time.sleep(0.003)
        for name, worker in workers.items():
            if name not in killed:
                worker.finish(FINISH_TIMEOUT)
        plan.lines.append(f"round {round_no}: victims {triggers}, killed {killed}")
    return plan


def _journal(root: Path, name: str) -> Path:
    return root / f"{name}.journal"


async def _receipts_missing(homes: dict[str, Path], timeout: float) -> int:
    """Open both cells once more (no killing) and wait for every delivery receipt."""
    async with contextlib.AsyncExitStack() as stack:
        cells = [await stack.enter_async_context(Cell.open(home, **CELL_OPTIONS))
                 for home in homes.values()]  # fmt: skip

        def missing() -> int:
            return sum(1 for cell in cells for e in cell.outbox(limit=1_000_000)
                       if e.status not in ("delivered", "read"))  # fmt: skip

        await wait_for(lambda: missing() == 0, timeout)
        return missing()


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_sdk_processes_sigkilled_mid_stream(
    tmp_path: Path, crowd: Crowd, database: str
) -> None:
    rng = random.Random(f"{SEED}-sdk-{database}")
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        if database == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
        else:
            url = await stack.enter_async_context(postgres_database())
        await migrate(url)
        relay = KillableRelay(tmp_path / "relay", url)
        stack.push_async_callback(relay.stop)
        await relay.start()
        homes = await provision(relay, tmp_path / "cells", [("sdk-a", "sdk-b")])
        plan = await asyncio.to_thread(_sdk_rounds, rng, homes, tmp_path, crowd)
        receipts_missing = await _receipts_missing(homes, DRAIN_TIMEOUT)

    ledger, audit = Ledger(), Audit()
    for name in homes:
        _read_journals(name, PEER[name], _journal(tmp_path, name), ledger, audit)
    report = "\n".join(plan.lines)
    results = ledger.results()
    assert results == {"lost": 0, "duplicated": 0, "out_of_order": 0, "unexpected": 0}, (
        f"{results}\n{report}\n{ledger.explain()}"
    )
    assert audit.reyield_confirmed == 0, report
    assert audit.reyield_in_run == 0, report
    # The sessions still work: the clean last round's message each way went through.
    assert {_body_of(name, index) for name, index in plan.last.items()} <= ledger.sent, report
    assert receipts_missing == 0, report
    # The kills were real and landed mid-stream, while sending and while receiving.
    assert plan.kills >= 3, report
    assert plan.mid_send >= 1, report
    assert plan.mid_receive >= 1, report
    messages = len(ledger.sent)
    print(f"{messages} messages sent ({len(ledger.attempted)} attempted), {plan.kills} SDK "
          f"kills ({plan.mid_send} mid-send, {plan.mid_receive} mid-receive); re-yielded after "
          f"a crash: {ledger.again} recorded, {audit.rescued} not yet recorded; "
          f"{time.monotonic() - started:.0f} s\n{report}")  # fmt: skip
    record(
        "crash",
        f"SDK processes SIGKILLed mid-stream ({database})",
        {"messages": messages, "sdk_kills": plan.kills, "kills_mid_send": plan.mid_send,
         "kills_mid_receive": plan.mid_receive, "reyielded_recorded": ledger.again,
         "reyielded_unrecorded": audit.rescued},
        results | {"reyielded_after_confirm": audit.reyield_confirmed,
                   "reyielded_in_one_run": audit.reyield_in_run,
                   "receipts_missing": receipts_missing},
    )  # fmt: skip


def test_ledger_counts_each_kind_of_failure() -> None:
    """The verdicts above rest on this: every kind of bad outcome is counted."""
    ledger = Ledger()
    for i in range(6):
        ledger.attempt(body("x", i, "routine"), "y")
        ledger.done(body("x", i, "routine"))
    ledger.attempt(body("x", 6, "flash"), "y")  # attempted, send() never returned
    assert ledger.results()["lost"] == 6
    ledger.handle("y", "id0", body("x", 0, "routine"), "routine", None)
    ledger.handle("y", "id2", body("x", 2, "routine"), "routine", None)
    ledger.handle("y", "id1", body("x", 1, "routine"), "routine", None)  # after 2: out of order
    ledger.handle("y", "id1b", body("x", 1, "routine"), "routine", None)  # the body twice
    ledger.handle("y", "id3", body("x", 3, "routine"), "routine", None)
    ledger.handle("y", "id3", body("x", 3, "routine"), "routine", None)  # the id twice
    ledger.handle("z", "id4", body("x", 4, "routine"), "routine", None)  # wrong recipient
    ledger.handle("y", "id5", body("x", 5, "routine"), "flash", None)  # wrong precedence
    ledger.handle("y", "id9", "", "", "decrypt_failed")  # did not open
    ledger.handle("y", "id7", body("x", 7, "routine"), "routine", None)  # never attempted
    assert ledger.results() == {"lost": 1, "duplicated": 3, "out_of_order": 1, "unexpected": 4}
    ledger.handle("y", "id6", body("x", 6, "flash"), "flash", None)  # an attempt may arrive
    assert ledger.results()["unexpected"] == 4
