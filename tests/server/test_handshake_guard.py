"""Handshake admission (``server/handshake_guard.py``): caps per source, the reserve for known
sources, the rate per source and replayed hellos, on a fake clock."""

from __future__ import annotations

import pytest

from liaison.server.handshake_guard import KNOWN_RATE_FACTOR, HandshakeGuard, source_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **overrides: float) -> HandshakeGuard:
    settings: dict[str, float] = {"limit": 100, "per_source": 5, "per_known_source": 20,
                                  "reserve": 25, "rate": 1000.0, "burst": 1000}  # fmt: skip
    settings |= overrides
    return HandshakeGuard(
        limit=int(settings["limit"]), per_source=int(settings["per_source"]),
        per_known_source=int(settings["per_known_source"]), reserve=int(settings["reserve"]),
        rate=settings["rate"], burst=int(settings["burst"]), clock=clock,
    )  # fmt: skip


def test_one_source_gets_its_cap_and_no_more() -> None:
    g = guard(Clock())
    assert [g.admit("10.0.0.1") for _ in range(6)] == [None] * 5 + ["source"]
    assert g.admit("10.0.0.2") is None  # another source is not affected
    g.release("10.0.0.1", was_known=False)
    assert g.admit("10.0.0.1") is None  # a released slot is free again
    assert g.in_handshake == 6


def test_unknown_sources_leave_the_reserve_to_known_ones() -> None:
    g = guard(Clock())
    g.authenticated("192.0.2.1")
    admitted = sum(g.admit(f"10.0.{i // 5}.{i % 5}") is None for i in range(200))
    assert admitted == 75  # limit 100 - reserve 25
    assert g.admit("10.9.9.9") == "unknown_pool"
    assert [g.admit("192.0.2.1") for _ in range(20)] == [None] * 20  # the known source
    assert g.admit("192.0.2.1") == "source"  # its own, larger, cap
    g.authenticated("192.0.2.2")
    assert [g.admit("192.0.2.2") for _ in range(6)] == [None] * 5 + ["global"]


def test_release_gives_back_the_pool_it_took_from() -> None:
    g = guard(Clock(), limit=8, reserve=2, per_source=8)
    assert [g.admit("10.0.0.1") for _ in range(7)] == [None] * 6 + ["unknown_pool"]
    g.authenticated("10.0.0.1")  # authenticated meanwhile: it was unknown when admitted
    g.release("10.0.0.1", was_known=False)
    assert g.unknown_in_handshake == 5
    assert g.admit("10.0.0.9") is None


def test_known_sources_are_forgotten_after_their_ttl() -> None:
    clock = Clock()
    g = guard(clock)
    g.authenticated("10.0.0.1")
    assert g.is_known("10.0.0.1")
    clock.now += g.known_ttl + 1
    assert not g.is_known("10.0.0.1")


def test_rate_per_source_refills_over_time() -> None:
    clock = Clock()
    g = guard(clock, rate=2.0, burst=3, per_source=100)

    def attempt(source: str) -> str | None:
        refusal = g.admit(source)
        if refusal is None:
            g.release(source, was_known=g.is_known(source))
        return refusal

    assert [attempt("10.0.0.1") for _ in range(4)] == [None, None, None, "rate"]
    clock.now += 0.5  # one token back
    assert [attempt("10.0.0.1") for _ in range(2)] == [None, "rate"]
    assert attempt("10.0.0.2") is None
    g.authenticated("10.0.0.3")
    known = [attempt("10.0.0.3") for _ in range(3 * KNOWN_RATE_FACTOR + 1)]
    assert known == [None] * (3 * KNOWN_RATE_FACTOR) + ["rate"]


def test_a_refused_connection_takes_no_token() -> None:
    g = guard(Clock(), rate=1.0, burst=2, per_source=1)
    assert g.admit("10.0.0.1") is None
    assert g.admit("10.0.0.1") == "source"  # refused before the rate is charged
    g.release("10.0.0.1", was_known=False)
    assert g.admit("10.0.0.1") is None  # the second token is still there


def test_replayed_ephemerals_within_the_ttl() -> None:
    clock = Clock()
    g = guard(clock)
    e = bytes(range(32))
    assert not g.replayed(e)
    assert g.replayed(e)
    clock.now += g.replay_ttl + 1
    assert not g.replayed(e)  # forgotten: the link's own checks still refuse it (M-LINK-9)


def test_the_replay_memory_is_bounded() -> None:
    g = guard(Clock())
    g.max_replay_entries = 10
    for i in range(50):
        g.replayed(i.to_bytes(32, "big"))
    assert len(g._ephemerals) <= 10


def test_the_source_tables_are_bounded() -> None:
    g = guard(Clock(), per_source=10)
    g.max_sources = 10
    for i in range(50):
        g.authenticated(f"10.0.0.{i}")
        g.admit(f"10.1.0.{i}")
    assert len(g._known) == 10
    assert len(g._buckets) == 10


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same /64: one source
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("testclient", "testclient"),
        (None, "unknown"),
    ],
)
def test_sources(host: str | None, source: str) -> None:
    assert source_of(host) == source
