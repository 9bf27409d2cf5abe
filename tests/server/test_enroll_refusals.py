"""Refused enrollments (SPEC.md §5.4): a wrong expected name leaves the code usable
(M-ENR-10), and every refusal is audited without code material, at a bounded rate
(M-ENR-11). A real relay (uvicorn in a thread, SQLite) and real enrollment handshakes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from liaison.protocol.enrollment import EnrollmentCode, secret_hash
from liaison.server.db import create_engine
from liaison.server.link import FailedEnrollments
from liaison.server.schema import audit_log
from tests.server.harness import Admin, RawCell, RunningRelay, running_relay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    with running_relay(tmp_path) as r:
        yield r


async def _failures(relay: RunningRelay) -> list[tuple[str, dict[str, object], str]]:
    """(target, detail, raw detail) of every ``cell.enroll_failed`` row, oldest first."""
    engine = create_engine(relay.settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(audit_log)
                .where(audit_log.c.action == "cell.enroll_failed")
                .order_by(audit_log.c.id)
            )
            return [(r.target, json.loads(r.detail), r.detail) for r in rows]
    finally:
        await engine.dispose()


async def test_wrong_name_is_refused_without_using_the_code(relay: RunningRelay) -> None:
    """A version-2 request naming another cell is refused ``name_mismatch``; the same code
    then enrolls with the right name (and with no name, version 1, the code is checked as
    before)."""
    admin = Admin(relay.url, relay.admin_token)
    _cid, code = await admin.add_cell("vilnius")
    cell = RawCell("vilnius")
    answer = await cell.try_enroll(relay, code, expected_name="riga")
    assert (answer.error, answer.cell_id) == ("name_mismatch", None)
    answer = await cell.try_enroll(relay, code, expected_name="vilnius")
    assert answer.error is None
    assert answer.name == "vilnius"
    assert (await RawCell("x").try_enroll(relay, code)).error == "code_used"
    await admin.aclose()


async def test_a_name_is_revealed_only_with_a_valid_code(relay: RunningRelay) -> None:
    """The code is checked before the name: an unknown code is ``bad_code`` whatever name."""
    admin = Admin(relay.url, relay.admin_token)
    _cid, code = await admin.add_cell("tallinn")
    forged = EnrollmentCode(EnrollmentCode.parse(code).relay_fingerprint, b"\x01" * 20).text()
    for name in ("tallinn", "other"):
        assert (await RawCell("t").try_enroll(relay, forged, expected_name=name)).error == (
            "bad_code"
        )
    await admin.aclose()


async def test_refused_enrollments_are_audited_without_code_material(relay: RunningRelay) -> None:
    admin = Admin(relay.url, relay.admin_token)
    _cid, code = await admin.add_cell("bern")
    parsed = EnrollmentCode.parse(code)
    forged = EnrollmentCode(parsed.relay_fingerprint, b"\x02" * 20).text()
    assert (await RawCell("a").try_enroll(relay, forged)).error == "bad_code"
    assert (await RawCell("b").try_enroll(relay, code, expected_name="zurich")).error == (
        "name_mismatch"
    )
    await RawCell("bern").enroll(relay, code)
    assert (await RawCell("c").try_enroll(relay, code)).error == "code_used"
    rows = await _failures(relay)
    assert [(target, detail["reason"]) for target, detail, _ in rows] == [
        ("", "bad_code"), ("bern", "name_mismatch"), ("", "code_used"),
    ]  # fmt: skip
    for _target, _detail, raw in rows:  # no secret, hash or code text in any form
        for material in (parsed.secret, secret_hash(parsed.secret), b"\x02" * 20):
            assert material.hex() not in raw
        assert code not in raw
        assert code.replace("-", "") not in raw
    await admin.aclose()


async def test_failed_enrollment_audit_is_bounded(relay: RunningRelay) -> None:
    """A flood of bad codes writes at most 10 audit rows a minute (the relay's default)."""
    admin = Admin(relay.url, relay.admin_token)
    _cid, code = await admin.add_cell("lyon")
    fingerprint = EnrollmentCode.parse(code).relay_fingerprint
    cell = RawCell("flood")
    for i in range(15):
        forged = EnrollmentCode(fingerprint, bytes([i + 10]) * 20).text()
        assert (await cell.try_enroll(relay, forged, otk_count=0)).error == "bad_code"
    assert len(await _failures(relay)) == 10
    await admin.aclose()


def test_failure_sampler_counts_what_it_left_out() -> None:
    now = [0.0]
    sampler = FailedEnrollments(per_window=2, window_seconds=60, clock=lambda: now[0])
    assert [sampler.admit() for _ in range(5)] == [0, 0, None, None, None]
    now[0] = 59.0
    assert sampler.admit() is None
    now[0] = 60.0
    assert sampler.admit() == 4  # the next row says 4 attempts were not recorded
    assert sampler.admit() == 0
    assert sampler.admit() is None
