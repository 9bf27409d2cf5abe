"""Reliability: the SDK against a malicious relay (issue #5; SPEC.md §12.2).

The relay here is the real one with a hostile hand on every frame it sends a cell
(``malicious.MaliciousRelay``): it holds the link keys, so it can replay, duplicate, reorder,
drop, truncate and bit-flip envelopes, re-address them, make up its own, and swap or re-sign
prekey bundles. Each scenario checks what SPEC.md §12.2 promises:

* nothing forged or altered is accepted: it is recorded as a failure to open (one opaque
  ``decrypt_failed``-style error) and the receiving cell's stored sessions, one-time prekeys
  and channel bookkeeping are byte-identical before and after it;
* nothing reaches the application twice (``messages()`` yields each message id with a body at
  most once);
* drops are detected: the recipient's channel numbers show the gap (``Cell.gaps``,
  ``Peer.missing``) and the sender's status of exactly the dropped messages becomes
  ``missing``; receipts the relay dropped are sealed again and arrive;
* a substituted bundle is refused, or is a key change the operator sees (the safety number of
  the pinned key does not change); on first contact the substitution shows as differing
  safety numbers.

Sizes come from ``report.scaled``; each scenario calls ``report.record`` after its assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from liaison.client import Cell, KeyChanged, Message, ProtocolFailure
from liaison.client.state import STATE_FILE
from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.envelope import (
    ROUTING_LEN,
    SETUP_LEN,
    ContentType,
    Envelope,
    EnvelopeKind,
    Precedence,
)
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from liaison.protocol.session import initiate, respond
from tests.client.faults import cell_keys
from tests.client.relaykit import memory_relay

from .malicious import MaliciousRelay, Tap
from .report import record, scaled

SUITE = "malicious_relay"
PRECEDENCES = ("flash", "immediate", "priority", "routine")
GRACE = 0.5  # seconds a gap may stay open before it counts as missing (scenarios with drops)


# -- plumbing -------------------------------------------------------------------------------------


@dataclass
class World:
    evil: MaliciousRelay
    homes: dict[str, Path]
    ids: dict[str, bytes]

    def open(self, name: str, **options: object) -> Cell:
        return self.evil.open(self.homes[name], **options)


@contextlib.asynccontextmanager
async def world(tmp: Path, pairs: Sequence[tuple[str, str]]) -> AsyncIterator[World]:
    """A relay with the cells named in ``pairs``, each pair a channel, behind a malicious
    relay that (until a test says otherwise) passes everything through."""
    async with memory_relay(tmp) as relay:
        evil = MaliciousRelay(relay)
        homes: dict[str, Path] = {}
        for a, b in pairs:
            for name in (a, b):
                if name not in homes:
                    homes[name] = await relay.new_cell(name, one_time_prekeys=20)
            await relay.admin.pair(a, b)
        ids = {name: cell_keys(home)[1] for name, home in homes.items()}
        try:
            yield World(evil, homes, ids)
        finally:
            await evil.aclose()


def snapshot(home: Path) -> tuple[object, ...]:
    """What a rejected envelope must leave unchanged: every stored session (the exact bytes),
    the one-time prekeys, the peers' pins and the channel bookkeeping."""
    with contextlib.closing(sqlite3.connect(home / STATE_FILE)) as db:
        return tuple(
            db.execute(query).fetchall()
            for query in (
                "SELECT id, peer, state, rank FROM sessions ORDER BY id",
                "SELECT prekey_id, private FROM one_time_prekeys ORDER BY prekey_id",
                "SELECT cell_id, identity, pending_identity FROM peers ORDER BY cell_id",
                "SELECT peer, sent, received FROM channels ORDER BY peer",
                "SELECT peer, first_seq, last_seq, reported FROM gaps ORDER BY peer, first_seq",
            )
        )


@dataclass
class Collector:
    """Everything ``messages()`` hands the application, in order."""

    cell: Cell
    got: list[Message] = field(default_factory=list)

    def bodies(self) -> list[Message]:
        return [m for m in self.got if m.error is None]

    def failures(self) -> list[Message]:
        return [m for m in self.got if m.error is not None]


@contextlib.asynccontextmanager
async def collecting(cell: Cell) -> AsyncIterator[Collector]:
    collector = Collector(cell)

    async def run() -> None:
        async with contextlib.aclosing(cell.messages()) as stream:
            async for message in stream:
                collector.got.append(message)

    task = asyncio.create_task(run())
    try:
        yield collector
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def statuses(cell: Cell, ids: Sequence[str]) -> list[str]:
    return [await cell.status(message_id) for message_id in ids]


def judge(collector: Collector, sent: dict[str, str]) -> tuple[int, int, int]:
    """``(forged accepted, duplicated, lost)`` of what the application was handed, against
    ``sent`` (message id -> body) — what the peer really sent."""
    bodies = collector.bodies()
    forged = sum(1 for m in bodies if sent.get(m.id) != m.body)
    counts = Counter(m.id for m in bodies)
    duplicated = sum(n - 1 for n in counts.values())
    lost = sum(1 for message_id in sent if message_id not in counts)
    return forged, duplicated, lost


async def exchange(sender: Cell, to: str, count: int, tag: str) -> dict[str, str]:
    """Send ``count`` texts with rotating precedences; returns id -> body."""
    sent: dict[str, str] = {}
    for i in range(count):
        body = f"{tag} {i}"
        message_id = await sender.send(to, body, precedence=PRECEDENCES[i % 4])
        sent[message_id] = body
    return sent


async def inject(tap: Tap, frame: f.DeliverFrame) -> None:
    """Deliver ``frame`` and wait until the cell has committed whatever it did with it."""
    await tap.emit(frame)
    await tap.wait_ack(frame.relay_seq)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def tampered(evil: MaliciousRelay, frame: f.DeliverFrame, ids: dict[str, bytes]
             ) -> list[tuple[str, f.DeliverFrame]]:  # fmt: skip
    """Every way the scenarios alter one DELIVER: bit flips in each field of the envelope,
    truncations and extensions, and a false sender. Each gets a relay seq of its own."""
    env = frame.envelope
    prekey = env[1] == EnvelopeKind.PREKEY
    crypto = ROUTING_LEN + (SETUP_LEN if prekey else 0)  # nonce, then header, then body
    header_end = crypto + 24 + 2328
    spots = {
        "version": 0, "kind": 1, "recipient": 2, "message_id": 20, "precedence": 34,
        "expiry": 42, "nonce": crypto, "header": crypto + 24 + 1000,
        "header_tag": header_end - 1, "body": header_end, "body_tag": len(env) - 1,
    }  # fmt: skip
    if prekey:
        spots |= {
            "setup_identity": ROUTING_LEN + 5, "setup_ephemeral": ROUTING_LEN + 40,
            "setup_spk_id": ROUTING_LEN + 67, "setup_kem_id": ROUTING_LEN + 71,
            "setup_opk_id": ROUTING_LEN + 75, "setup_kem_ct": ROUTING_LEN + 600,
        }  # fmt: skip
    envelopes = {f"flip_{name}": flip(env, at, 0x03 if name == "kind" else 0x01)
                 for name, at in spots.items()}  # fmt: skip
    envelopes["truncated_1"] = env[:-1]
    envelopes["truncated_tag"] = env[:-16]
    envelopes["extended"] = env + bytes(len(env))  # the next bucket, zero-filled
    if len(env) > 4096:
        envelopes["truncated_bucket"] = env[:4096]
    envelopes["recipient_other"] = env[:2] + ids["rome"] + env[18:]
    out = [(name, replace(frame, relay_seq=evil.fake_seq(), envelope=data))
           for name, data in envelopes.items()]  # fmt: skip
    out.append(("sender_other", replace(frame, relay_seq=evil.fake_seq(),
                                        sender_cell_id=ids["rome"])))  # fmt: skip
    out.append(("sender_unknown", replace(frame, relay_seq=evil.fake_seq(),
                                          sender_cell_id=os.urandom(16))))  # fmt: skip
    return out


# -- replay, duplicate, reorder -------------------------------------------------------------------


async def test_replayed_envelopes_reach_the_application_once(tmp_path: Path) -> None:
    """After a conversation, the relay delivers every envelope it ever delivered again, under
    its old relay seq and under a new one: every copy is only acknowledged (M-CLI-2); no
    message is handed over twice, no session or status changes."""
    n = scaled(8, 150)
    async with world(tmp_path, [("paris", "berlin")]) as w, w.open("paris") as paris, \
            w.open("berlin") as berlin, collecting(paris) as at_paris, \
            collecting(berlin) as at_berlin:  # fmt: skip
        to_berlin = await exchange(paris, "berlin", n, "p")
        to_paris = await exchange(berlin, "paris", n, "b")
        for cell, ids in ((paris, to_berlin), (berlin, to_paris)):
            for message_id in ids:
                assert await cell.wait_status(message_id, "delivered", 10) == "delivered"
        await until(lambda: len(at_berlin.got) == n and len(at_paris.got) == n)
        await asyncio.sleep(0.2)  # the last receipts' sessions are committed
        before = {name: snapshot(w.homes[name]) for name in ("paris", "berlin")}
        status_before = (await statuses(paris, list(to_berlin)),
                             await statuses(berlin, list(to_paris)))  # fmt: skip
        replays = 0
        for recipient, frame in list(w.evil.delivered):
            tap = w.evil.tap(recipient)
            again = replace(frame, relay_seq=w.evil.fake_seq())
            await tap.emit(frame)  # the same relay seq: acknowledged again
            await inject(tap, again)  # processed in order: both are done after this ACK
            replays += 2
        await asyncio.sleep(0.3)
        after = {name: snapshot(w.homes[name]) for name in ("paris", "berlin")}
        status_after = (await statuses(paris, list(to_berlin)),
                            await statuses(berlin, list(to_paris)))  # fmt: skip
        forged_b, duplicated_b, lost_b = judge(at_berlin, to_berlin)
        forged_p, duplicated_p, lost_p = judge(at_paris, to_paris)
        assert replays >= 4 * n
        assert after == before
        assert status_after == status_before
        assert (forged_b, duplicated_b, lost_b, forged_p, duplicated_p, lost_p) == (0,) * 6
        assert at_berlin.failures() == at_paris.failures() == []
        assert len(at_berlin.got) == len(at_paris.got) == n
    record(SUITE, "replay", {"messages": 2 * n, "replays": replays},
           {"forged_accepted": forged_b + forged_p, "duplicated": duplicated_b + duplicated_p,
            "lost": lost_b + lost_p, "state_changed": int(after != before)})  # fmt: skip


async def test_duplicated_deliveries_reach_the_application_once(tmp_path: Path) -> None:
    """Every DELIVER, both ways, is sent three times (twice as is, once under a new relay
    seq): each message is handed over once and every status still becomes delivered."""
    n = scaled(10, 200)
    async with world(tmp_path, [("paris", "berlin")]) as w:
        copies = 0

        async def triple(_tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
            nonlocal copies
            if not isinstance(frame, f.DeliverFrame):
                return [frame]
            copies += 2
            return [frame, frame, replace(frame, relay_seq=w.evil.fake_seq())]

        w.evil.on_frame = triple
        async with w.open("paris") as paris, w.open("berlin") as berlin, \
                collecting(berlin) as at_berlin:  # fmt: skip
            sent = await exchange(paris, "berlin", n, "dup")
            for message_id in sent:
                assert await paris.wait_status(message_id, "delivered", 10) == "delivered"
            await until(lambda: len(at_berlin.got) >= n)
            await asyncio.sleep(0.3)
            forged, duplicated, lost = judge(at_berlin, sent)
            assert (forged, duplicated, lost) == (0, 0, 0)
            assert at_berlin.failures() == []
            assert berlin.gaps() == []
    record(SUITE, "duplicate", {"messages": n, "extra_copies": copies},
           {"forged_accepted": forged, "duplicated": duplicated, "lost": lost})  # fmt: skip


async def test_reordered_deliveries_all_arrive_without_false_gaps(tmp_path: Path) -> None:
    """The relay holds paris's envelopes to berlin in batches and releases each batch
    shuffled, across precedences and ratchet chains: everything opens, once, and the gaps
    the reordering opens close before the grace period, so nothing is reported missing."""
    batch = 4
    n = scaled(3, 50) * batch
    rng = random.Random(5)
    async with world(tmp_path, [("paris", "berlin")]) as w:
        held: list[f.Frame] = []
        out_of_order = 0

        async def shuffle(_tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
            nonlocal out_of_order
            if not isinstance(frame, f.DeliverFrame) or frame.sender_cell_id != w.ids["paris"]:
                return [frame]
            held.append(frame)
            if len(held) < batch:
                return []
            released = held[:]
            held.clear()
            while released == sorted(released, key=lambda d: getattr(d, "relay_seq", 0)):
                rng.shuffle(released)
            out_of_order += 1
            return released

        w.evil.on_frame = shuffle
        async with w.open("paris", gap_grace=5.0) as paris, \
                w.open("berlin", gap_grace=5.0) as berlin, \
                collecting(berlin) as at_berlin:  # fmt: skip
            sent = await exchange(paris, "berlin", n, "shuffled")
            for message_id in sent:
                assert await paris.wait_status(message_id, "delivered", 10) == "delivered"
            await until(lambda: len(at_berlin.got) >= n)
            forged, duplicated, lost = judge(at_berlin, sent)
            assert (forged, duplicated, lost) == (0, 0, 0)
            assert at_berlin.failures() == []
            assert [m.seq for m in at_berlin.got] != sorted(m.seq or 0 for m in at_berlin.got)
            assert berlin.gaps() == []
            assert berlin.peer("paris").missing == 0
            false_missing = sum(s == "missing" for s in await statuses(paris, list(sent)))
            assert false_missing == 0
    record(SUITE, "reorder", {"messages": n, "shuffled_batches": out_of_order},
           {"forged_accepted": forged, "duplicated": duplicated, "lost": lost,
            "false_missing": false_missing})  # fmt: skip


# -- drops ----------------------------------------------------------------------------------------


async def test_dropped_envelopes_are_detected_both_ways(tmp_path: Path) -> None:
    """The relay silently deletes some of paris's messages to berlin (releasing the rest
    shuffled) and some of berlin's receipts to paris. Berlin reports the gaps in paris's
    channel numbers; paris shows exactly the dropped messages as ``missing``. Paris reports
    the gaps in berlin's numbers; berlin seals the lost receipts again, so every message that
    arrived ends ``delivered``. A last message reveals drops at the tail."""
    batch = 6
    n = scaled(4, 50) * batch
    rng = random.Random(7)
    async with world(tmp_path, [("paris", "berlin")]) as w:
        paris_id, berlin_id = w.ids["paris"], w.ids["berlin"]
        held: list[f.DeliverFrame] = []
        dropped_messages: set[bytes] = set()  # message ids of paris's envelopes dropped
        dropped_receipts = receipts_seen = 0
        dropping = True
        sent_count = 0

        async def drop(tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
            nonlocal dropped_receipts, receipts_seen, sent_count
            if not isinstance(frame, f.DeliverFrame) or not dropping:
                return [frame]
            if tap.cell_id == paris_id:  # berlin's receipts and gap reports: every other one
                receipts_seen += 1
                if receipts_seen % 2:
                    dropped_receipts += 1
                    await w.evil.discard(paris_id, frame.relay_seq)
                    return []
                return [frame]
            held.append(frame)
            if len(held) < batch:
                return []
            released: list[f.DeliverFrame] = []
            for item in held:
                sent_count += 1
                last = sent_count == n
                if not last and (rng.random() < 0.3 or sent_count == 2):
                    dropped_messages.add(Envelope.decode(item.envelope).routing.message_id)
                    await w.evil.discard(berlin_id, item.relay_seq)
                else:
                    released.append(item)
            held.clear()
            rng.shuffle(released)
            return released

        w.evil.on_frame = drop
        async with w.open("paris", gap_grace=GRACE) as paris, \
                w.open("berlin", gap_grace=GRACE) as berlin, \
                collecting(berlin) as at_berlin:  # fmt: skip
            sent = await exchange(paris, "berlin", n, "maybe")
            await until(lambda: sent_count == n)  # all went through the relay
            arrived = {mid for mid in sent if bytes.fromhex(mid) not in dropped_messages}
            assert len(dropped_messages) >= 1
            await until(lambda: receipts_seen >= 2)  # a receipt or gap report dropped, one not
            await until(lambda: len(at_berlin.bodies()) >= len(arrived))
            dropping = False
            probe = await paris.send("berlin", "probe")  # any later envelope reveals a tail
            sent[probe] = "probe"
            arrived.add(probe)

            async def settled() -> bool:
                got = await statuses(paris, list(sent))
                return all((s == "delivered") if mid in arrived else (s == "missing")
                           for mid, s in zip(sent, got, strict=True))  # fmt: skip

            deadline = time.monotonic() + 20
            while not await settled():
                assert time.monotonic() < deadline, await statuses(paris, list(sent))
                await asyncio.sleep(0.05)
            final = dict(zip(sent, await statuses(paris, list(sent)), strict=True))
            missing_at_paris = {mid for mid, s in final.items() if s == "missing"}
            detected = len({bytes.fromhex(m) for m in missing_at_paris} & dropped_messages)
            false_missing = len(missing_at_paris) - detected
            gaps = berlin.gaps("paris")
            assert all(g.missing for g in gaps)
            seen_missing = sum(g.count for g in gaps)
            assert seen_missing == berlin.peer("paris").missing == len(dropped_messages)
            assert detected == len(dropped_messages)
            assert false_missing == 0
            # berlin's dropped receipts: paris sees the gaps in berlin's numbers too
            receipts_detected = paris.peer("berlin").missing
            assert receipts_detected == dropped_receipts
            forged, duplicated, lost = judge(at_berlin, {m: sent[m] for m in arrived})
            assert (forged, duplicated, lost) == (0, 0, 0)
            assert at_berlin.failures() == []
    record(SUITE, "drop",
           {"messages": len(sent), "dropped_messages": len(dropped_messages),
            "dropped_receipts": dropped_receipts},
           {"undetected_drops": len(dropped_messages) - detected,
            "undetected_receipt_drops": dropped_receipts - receipts_detected,
            "false_missing": false_missing, "forged_accepted": forged,
            "duplicated": duplicated, "lost": lost})  # fmt: skip


# -- tampering ------------------------------------------------------------------------------------


async def test_tampered_envelopes_are_rejected_and_change_nothing(tmp_path: Path) -> None:
    """Before delivering each of paris's envelopes (the first one a PREKEY envelope, one in a
    larger bucket), the relay delivers altered copies of it: a bit flipped in every field,
    truncated, extended, under a false sender. Each is rejected as a failure to open, and
    berlin's sessions, one-time prekeys, pins and channel numbers are byte-identical after
    it; no key-change alarm is raised. The genuine envelope then opens, although copies with
    its message id failed first."""
    k = scaled(3, 30)
    async with world(tmp_path, [("paris", "berlin"), ("rome", "berlin")]) as w:
        paris_id, berlin_id = w.ids["paris"], w.ids["berlin"]
        held: asyncio.Queue[f.DeliverFrame] = asyncio.Queue()

        async def hold(tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
            if isinstance(frame, f.DeliverFrame) and frame.sender_cell_id == paris_id \
                    and tap.cell_id == berlin_id:  # fmt: skip
                held.put_nowait(frame)
                return []
            return [frame]

        w.evil.on_frame = hold
        rejected = changed = kinds = 0
        async with w.open("rome") as rome, w.open("paris") as paris, \
                w.open("berlin") as berlin, collecting(berlin) as at_berlin:  # fmt: skip
            from_rome = "a session with rome, to be tried too"
            sent: dict[str, str] = {await rome.send("berlin", from_rome): from_rome}
            await rome.wait_status(next(iter(sent)), "delivered", 10)  # berlin is quiet
            for i in range(k):
                body = "x" * 5000 if i == 1 else f"genuine {i}"
                sent[await paris.send("berlin", body, precedence=PRECEDENCES[i % 4])] = body
            tap = w.evil.tap(berlin_id)
            for _ in range(k):
                frame = await asyncio.wait_for(held.get(), 10)
                if frame.envelope[1] == EnvelopeKind.PREKEY:
                    kinds |= 1
                if len(frame.envelope) > 4096:
                    kinds |= 2
                for name, variant in tampered(w.evil, frame, w.ids):
                    before = snapshot(w.homes["berlin"])
                    await inject(tap, variant)
                    same = snapshot(w.homes["berlin"]) == before
                    changed += not same
                    rejected += 1
                    assert same, name
                    assert not berlin.peer("paris").key_changed, name
                await inject(tap, frame)  # the genuine one, after its altered copies
                genuine_id = Envelope.decode(frame.envelope).routing.message_id.hex()
                assert await paris.wait_status(genuine_id, "delivered", 10) == "delivered"
            await until(lambda: len(at_berlin.bodies()) == k + 1)
            for message_id in sent:
                cell = rome if sent[message_id] == from_rome else paris
                assert await cell.wait_status(message_id, "delivered", 10) == "delivered"
            await asyncio.sleep(0.2)
            forged, duplicated, lost = judge(at_berlin, sent)
            assert kinds == 3  # a PREKEY envelope and a larger bucket were among them
            assert (forged, duplicated, lost) == (0, 0, 0)
            assert {m.error for m in at_berlin.failures()} <= {
                "decrypt_failed", "malformed_envelope", "wrong_recipient",
                "stale_session",  # the third failure in a row: a notice, never a reset
            }  # fmt: skip
            assert berlin.gaps() == []
            assert not berlin.peer("paris").key_changed
            assert not berlin.peer("rome").key_changed
    record(SUITE, "tamper", {"envelopes": k, "altered_copies": rejected},
           {"forged_accepted": forged, "state_changed": changed, "duplicated": duplicated,
            "lost": lost})  # fmt: skip


# -- forgeries ------------------------------------------------------------------------------------


async def test_forged_and_readdressed_envelopes_are_rejected(tmp_path: Path) -> None:
    """Envelopes the relay makes up (random, or a session of its own under paris's cell id),
    envelopes re-addressed from another sender or meant for another recipient, and old ones
    re-sent under a new relay seq (as is, or with a new message id): none is accepted, none
    changes berlin's state. A setup signed by a key the relay made up, under paris's cell id,
    is held as a key change for the operator, never shown as paris's."""
    m = scaled(3, 40)
    async with world(tmp_path, [("paris", "berlin"), ("rome", "berlin"),
                                ("paris", "rome")]) as w:  # fmt: skip
        paris_id, berlin_id, rome_id = w.ids["paris"], w.ids["berlin"], w.ids["rome"]
        async with w.open("paris") as paris, w.open("berlin") as berlin, \
                w.open("rome") as rome, collecting(berlin) as at_berlin:  # fmt: skip
            sent = await exchange(paris, "berlin", m, "from paris")
            sent |= await exchange(rome, "berlin", m, "from rome")
            to_rome = await paris.send("rome", "for rome only")
            await until(lambda: set(sent) <= {x.id for x in at_berlin.got})
            assert await paris.wait_status(to_rome, "delivered", 10) == "delivered"
            replies = [await berlin.send("paris", "reply"), await berlin.send("rome", "reply")]
            for reply in replies:  # their receipts opened: berlin is quiet from here on
                assert await berlin.wait_status(reply, "delivered", 10) == "delivered"
            await asyncio.sleep(0.1)
            tap = w.evil.tap(berlin_id)
            genuine = [
                frame
                for to, frame in w.evil.delivered
                if to == berlin_id and frame.sender_cell_id in (paris_id, rome_id)
            ]
            meant_for_rome = [frame for to, frame in w.evil.delivered
                              if to == rome_id and frame.sender_cell_id == paris_id]  # fmt: skip
            assert genuine
            assert meant_for_rome
            expires = int(time.time()) + 600
            forgeries: list[tuple[str, f.DeliverFrame]] = []

            def deliver(name: str, sender: bytes, envelope: bytes) -> None:
                forgeries.append(
                    (
                        name,
                        f.DeliverFrame(
                            w.evil.fake_seq(), sender, int(time.time() * 1000), envelope
                        ),
                    )
                )

            for i in range(m):  # made up from nothing, MESSAGE and PREKEY
                head = bytes([1, 1]) + berlin_id + os.urandom(16) + bytes([i % 4])
                deliver(
                    "random_message",
                    paris_id,
                    head + expires.to_bytes(8, "big") + os.urandom(4096 - ROUTING_LEN),
                )
                setup = next(
                    fr.envelope[ROUTING_LEN : ROUTING_LEN + SETUP_LEN]
                    for fr in genuine
                    if fr.envelope[1] == EnvelopeKind.PREKEY
                )  # paris's real setup
                head = bytes([1, 2]) + berlin_id + os.urandom(16) + bytes([i % 4])
                deliver("random_prekey", paris_id, head + expires.to_bytes(8, "big") + setup
                        + os.urandom(4096 - ROUTING_LEN - SETUP_LEN))  # fmt: skip
            for frame in genuine:  # re-addressed from the other sender; re-sent; new id
                other = rome_id if frame.sender_cell_id == paris_id else paris_id
                deliver("readdressed", other, frame.envelope)
                deliver("resent", frame.sender_cell_id, frame.envelope)
                env = frame.envelope
                deliver("new_message_id", frame.sender_cell_id, env[:18] + os.urandom(16)
                        + env[34:])  # fmt: skip
            for frame in meant_for_rome:  # paris -> rome, handed to berlin
                deliver("other_recipient", paris_id, frame.envelope)
            # A session the relay sets up itself with berlin's bundle (the one-time prekey
            # stripped), under paris's cell id — with paris's identity key in the setup block
            # (it lacks paris's private key) and with a key of its own.
            bundle = PrekeyBundle.decode(next(b.bundle for b in w.evil.bundles
                                              if b.bundle[:16] == berlin_id))  # fmt: skip
            bundle = replace(bundle, one_time_prekey=None)
            impostor = IdentityKeyPair.generate()
            paris_identity = bytes(cell_keys(w.homes["paris"])[0].identity.public)
            for claim in ("paris_identity", "own_identity"):
                session = initiate(impostor, paris_id, bundle)
                envelope = session.seal(ContentType.TEXT, b"transfer the codes",
                                        message_id=os.urandom(16), precedence=Precedence.FLASH,
                                        expires_at=expires)  # fmt: skip
                if claim == "paris_identity":
                    envelope = (envelope[:ROUTING_LEN] + paris_identity
                                + envelope[ROUTING_LEN + 32 :])  # fmt: skip
                deliver(f"relay_session_{claim}", paris_id, envelope)

            rejected = changed = 0
            alarms: list[str] = []
            for name, frame in forgeries:
                before = snapshot(w.homes["berlin"])
                await inject(tap, frame)
                after = snapshot(w.homes["berlin"])
                if name == "relay_session_own_identity":  # the alarm: a pending identity
                    assert berlin.peer("paris").key_changed
                    alarms.append(name)
                    assert after[:2] == before[:2]  # no session kept, one-time prekeys kept
                    assert after[3:] == before[3:]  # no channel number counted
                else:
                    changed += after != before
                    assert after == before, name
                    assert not berlin.peer("paris").key_changed, name
                rejected += 1
            await asyncio.sleep(0.3)
            forged, duplicated, lost = judge(at_berlin, sent)
            held = [x for x in at_berlin.failures() if x.error == "key_changed"]
            assert (forged, duplicated, lost) == (0, 0, 0)
            assert changed == 0
            assert alarms == ["relay_session_own_identity"]
            assert [(x.sender, x.body) for x in held] == [("paris", None)]
            assert {x.error for x in at_berlin.failures()} <= {
                "decrypt_failed", "wrong_recipient", "key_changed", "stale_session",
            }  # fmt: skip
            assert berlin.gaps() == []
            with pytest.raises(KeyChanged):  # held until the operator decides
                await berlin.send("paris", "are you still you?")
    record(SUITE, "forge", {"forgeries": rejected, "genuine": len(sent)},
           {"forged_accepted": forged, "state_changed": changed, "duplicated": duplicated,
            "lost": lost, "unflagged_impersonation": 1 - len(alarms)})  # fmt: skip


# -- bundles --------------------------------------------------------------------------------------


def relay_bundle(cell_id: bytes, *, with_one_time: bool = True
                 ) -> tuple[PrekeyBundle, IdentityKeyPair, X25519KeyPair, KemKeyPair,
                            X25519KeyPair]:  # fmt: skip
    """A bundle of keys the relay made up, re-signed with an identity it made up."""
    identity, spk, kem, otk = (IdentityKeyPair.generate(), X25519KeyPair.generate(),
                               KemKeyPair.generate(), X25519KeyPair.generate())  # fmt: skip
    bundle = PrekeyBundle(cell_id, identity.public, SignedPrekey.create(identity, 7, spk),
                          SignedKemPrekey.create(identity, 7, kem),
                          OneTimePrekey(7, otk.public) if with_one_time else None)  # fmt: skip
    return bundle, identity, spk, kem, otk


async def test_swapped_and_resigned_bundles(tmp_path: Path) -> None:
    """The relay answers FETCH_BUNDLE with: another cell's bundle; that bundle relabelled
    with the wanted cell id; its own keys re-signed by an identity it made up; the genuine
    identity with a prekey signed by another key; a lying one-time-prekey flag; a substituted
    one-time prekey; no one-time prekey. Refused, or a key change (the pinned safety number is
    unchanged), or — for the unsigned one-time prekey — a session the recipient cannot open.
    On first contact (the relay lying in PEERS as well) the substitution works, and the two
    cells' safety numbers differ."""
    pairs = [("paris", n) for n in ("berlin", "rome", "oslo", "madrid", "lisbon")]
    async with world(tmp_path, pairs) as w:
        ids = w.ids
        fake_lisbon = relay_bundle(ids["lisbon"])
        mode: dict[bytes, Callable[[f.BundleFrame], f.BundleFrame]] = {}

        async def lie(_tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
            if isinstance(frame, f.PeersFrame):  # lisbon's identity: the relay's own
                peers = tuple(
                    replace(e, identity=bytes(fake_lisbon[0].identity))
                    if e.cell_id == ids["lisbon"]
                    else e
                    for e in frame.peers
                )
                return [replace(frame, peers=peers)]  # fmt: skip
            if isinstance(frame, f.BundleFrame):
                change = mode.get(frame.bundle[:16])
                return [frame if change is None else change(frame)]
            return [frame]

        w.evil.on_frame = lie
        refused: list[str] = []
        async with w.open("paris") as paris:
            # rome: the relay withholds the one-time prekey; the session still works.
            def strip(frame: f.BundleFrame) -> f.BundleFrame:
                bundle = replace(PrekeyBundle.decode(frame.bundle), one_time_prekey=None)
                return f.BundleFrame(frame.request_id, True, bundle.encode())

            mode[ids["rome"]] = strip
            async with w.open("rome") as rome:
                await paris.send("rome", "hello rome")
                [hello] = [m async for m in _take(rome, 1)]
                assert hello.body == "hello rome"  # weaker forward secrecy, but it works
            rome_bundle = next(b.bundle for b in w.evil.bundles if b.bundle[:16] == ids["rome"])
            berlin_number = paris.safety_number("berlin")
            sessions_before = snapshot(w.homes["paris"])[0]

            def another_cell(frame: f.BundleFrame) -> f.BundleFrame:
                return replace(frame, bundle=rome_bundle, no_one_time_prekey=False)

            def resigned_prekey(frame: f.BundleFrame) -> f.BundleFrame:
                genuine = PrekeyBundle.decode(frame.bundle)
                forger = IdentityKeyPair.generate()
                spk = SignedPrekey.create(forger, genuine.signed_prekey.prekey_id,
                                          X25519KeyPair.generate())  # fmt: skip
                return replace(frame, bundle=replace(genuine, signed_prekey=spk).encode())

            def lying_flag(frame: f.BundleFrame) -> f.BundleFrame:
                return replace(frame, no_one_time_prekey=not frame.no_one_time_prekey)

            for name, change in (("another_cell", another_cell),
                                 ("resigned_prekey", resigned_prekey),
                                 ("lying_flag", lying_flag)):  # fmt: skip
                mode[ids["berlin"]] = change
                with pytest.raises(ProtocolFailure):
                    await paris.send("berlin", "refused")
                refused.append(name)

            def relabelled(frame: f.BundleFrame) -> f.BundleFrame:
                return replace(frame, bundle=ids["berlin"] + rome_bundle[16:],
                               no_one_time_prekey=False)  # fmt: skip

            mode[ids["berlin"]] = relabelled
            with pytest.raises(KeyChanged):
                await paris.send("berlin", "to rome's key?")
            refused.append("relabelled_other_cell")
            assert paris.safety_number("berlin") == berlin_number
            assert paris.safety_number("berlin", new_key=True) != berlin_number

            oslo_number = paris.safety_number("oslo")
            mode[ids["oslo"]] = lambda frame: replace(
                frame, bundle=relay_bundle(ids["oslo"])[0].encode(), no_one_time_prekey=False
            )
            with pytest.raises(KeyChanged):
                await paris.send("oslo", "to the relay's key?")
            refused.append("relay_keys_resigned")
            assert paris.safety_number("oslo") == oslo_number
            assert paris.safety_number("oslo", new_key=True) != oslo_number
            assert snapshot(w.homes["paris"])[0] == sessions_before  # no session was started
            assert [e.peer for e in paris.outbox()] == ["rome"]  # nothing else was sealed

            # madrid: the unsigned one-time prekey swapped — a session madrid cannot open.
            def swapped_one_time(frame: f.BundleFrame) -> f.BundleFrame:
                genuine = PrekeyBundle.decode(frame.bundle)
                assert genuine.one_time_prekey is not None
                otk = OneTimePrekey(genuine.one_time_prekey.prekey_id,
                                    X25519KeyPair.generate().public)  # fmt: skip
                return replace(frame, bundle=replace(genuine, one_time_prekey=otk).encode())

            mode[ids["madrid"]] = swapped_one_time
            async with w.open("madrid") as madrid:
                await paris.send("madrid", "never readable")
                [broken] = [m async for m in _take(madrid, 1)]
                assert (broken.error, broken.body) == ("decrypt_failed", None)

            # lisbon, first contact: PEERS and BUNDLE both carry the relay's keys.
            fake, fake_identity, fake_spk, fake_kem, fake_otk = fake_lisbon
            mode[ids["lisbon"]] = lambda frame: replace(frame, bundle=fake.encode(),
                                                        no_one_time_prekey=False)  # fmt: skip
            await paris.send("lisbon", "first contact")
            paris_number = paris.safety_number("lisbon")
        async with w.open("lisbon") as lisbon:
            await until(lambda: any(to == ids["lisbon"] for to, _ in w.evil.delivered))
            mitm = next(fr for to, fr in w.evil.delivered if to == ids["lisbon"])
            [seen] = [m async for m in _take(lisbon, 1)]
            lisbon_number = lisbon.safety_number("paris")
        # What first contact costs: the relay reads it (the setup was made to its keys) ...
        envelope = Envelope.decode(mitm.envelope)
        assert envelope.setup is not None
        read = respond(fake_identity, ids["lisbon"], ids["paris"], envelope.setup, fake_spk,
                       fake_kem, fake_otk).open(envelope)  # fmt: skip
        assert read.payload == b"first contact"
        # ... lisbon cannot, and the safety numbers the operators compare differ.
        assert (seen.error, seen.body) == ("decrypt_failed", None)
        undetected_mitm = int(paris_number == lisbon_number)
        assert undetected_mitm == 0
        accepted_substitution = 0  # every pinned-peer case above raised before sealing
    record(SUITE, "bundle_swap",
           {"refused": len(refused), "one_time_prekey_attacks": 2, "first_contact": 1},
           {"accepted_substitution": accepted_substitution,
            "undetected_first_contact": undetected_mitm})  # fmt: skip


async def _take(cell: Cell, count: int, timeout: float = 10.0) -> AsyncIterator[Message]:
    """The next ``count`` messages ``messages()`` yields."""
    taken = 0
    async with asyncio.timeout(timeout), contextlib.aclosing(cell.messages()) as stream:
        async for message in stream:
            yield message
            taken += 1
            if taken == count:
                return
