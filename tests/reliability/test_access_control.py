"""Access control (issue #5): nobody gets in who should not, counted.

Real relay (uvicorn), real WebSockets, real Noise and end-to-end crypto. Each scenario makes
many attempts and records how many there were and how many succeeded (always 0):

* a link handshake needs the cell's own static key: unknown keys are refused (``not_enrolled``,
  4100) and a replayed hello of an enrolled cell never yields a usable link nor displaces the
  cell's live one;
* a cell cannot send to, nor fetch the bundle of, a cell it is not paired with (or a cell id
  that does not exist, or itself): ``not_paired``, and the target's prekeys are untouched;
* a cell never receives another cell's envelopes, and its ACKs cannot delete them;
* a suspended or revoked cell is disconnected within one second of the admin's request
  (measured) and refused on every later attempt;
* enrollment codes are single-use (also against a replay of the very message that used
  them), superseded by a newer code, useless after expiry, and cannot be guessed;
* a revocation tells the sender of every envelope it purges (ERROR revoked), exactly once;
* every admin endpoint refuses a missing, malformed, wrong or revoked token, with no effect;
* repeated failed tokens from one address are throttled (429), never the right token.

Admin requests come from distinct loopback addresses (127.0.0.x) where a scenario needs the
relay's per-address failure limiter to see them as different clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import update

from liaison.protocol import frames as f
from liaison.protocol.enrollment import EnrollmentCode
from liaison.protocol.envelope import EnvelopeKind, Precedence, Routing
from liaison.protocol.link import LinkInitiator
from liaison.server.db import create_engine
from liaison.server.problems import PROBLEM_MEDIA_TYPE
from liaison.server.schema import enrollment_codes
from tests.reliability.attackkit import (
    Target,
    close_links,
    connect,
    enroll,
    enroll_answer,
    expect_close,
    ping,
    provision,
)
from tests.reliability.report import record, scaled
from tests.server.harness import Admin, Link, RawCell, RunningRelay, running_relay

SUITE = "access control"
ATTEMPTS = scaled(20, 500)  # attempts per kind of forbidden action
DISCONNECT_BUDGET = 1.0  # seconds from the admin's request to the closed link

_addresses = count(2)


def fresh_address() -> str:
    """A loopback address no other request of this module used (127.0.0.2, .3, ...)."""
    n = next(_addresses)
    return f"127.0.{n // 250}.{n % 250 + 2}"


def admin_client(relay: RunningRelay, token: str | None, address: str) -> httpx.AsyncClient:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=relay.url, headers=headers, transport=transport,
                             timeout=30)  # fmt: skip


@pytest.fixture(autouse=True)
async def _close_links() -> AsyncIterator[None]:
    yield
    await close_links()


@dataclass
class World:
    relay: RunningRelay
    target: Target
    admin: Admin
    cells: dict[str, RawCell]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """paris - berlin and rome - oslo are paired; nothing else is."""
    with running_relay(tmp_path, handshake_timeout_seconds=5.0) as relay:
        target = Target.of(relay)
        cells = await provision(target, relay.admin_token, ["paris", "berlin", "rome", "oslo"],
                                [("paris", "berlin"), ("rome", "oslo")])  # fmt: skip
        admin = Admin(relay.url, relay.admin_token)
        try:
            yield World(relay, target, admin, cells)
        finally:
            await admin.aclose()


def _envelope(recipient: bytes) -> tuple[bytes, bytes]:
    """A 4096-byte envelope with a valid routing header for ``recipient``."""
    message_id = os.urandom(16)
    routing = Routing(EnvelopeKind.MESSAGE, recipient, message_id, Precedence.FLASH,
                      int(time.time()) + 3600)  # fmt: skip
    head = routing.encode()
    return message_id, head + os.urandom(4096 - len(head))


async def _answers(link: Link, n: int) -> list[f.Frame]:
    """The next ``n`` frames that answer requests (PING, PONG and PREKEYS_LOW skipped)."""
    frames: list[f.Frame] = []
    while len(frames) < n:
        frame = await link.recv(30)
        if not isinstance(frame, f.PingFrame | f.PongFrame | f.PrekeysLowFrame):
            frames.append(frame)
    return frames


async def _cell_info(world: World, name: str) -> dict[str, Any]:
    response = await world.admin.client.get(f"/admin/cells/{name}")
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


# -- link authentication -----------------------------------------------------------------------


async def test_no_link_without_the_cells_own_key(world: World) -> None:
    """SPEC.md M-LINK-4, M-LINK-9: keys that are not enrolled get an authenticated
    ``not_enrolled`` and the close code 4100; a replayed hello of an enrolled cell completes
    the Noise handshake but its replayer cannot produce one transport message, the link is
    closed (4000) and the cell's live link is neither replaced nor disturbed."""
    target = world.target
    paris = world.cells["paris"]
    live = await connect(paris, target)
    outcomes: Counter[str] = Counter()

    async def stranger() -> None:
        cell = RawCell("stranger")
        cell.cell_id = bytes(16)  # what a refusal's welcome carries
        link = await connect(cell, target)
        error = await link.expect(f.ErrorFrame)
        code = await link.closed_code()
        outcomes[f"{error.code} {code}"] += 1

    await asyncio.gather(*(stranger() for _ in range(ATTEMPTS)))
    assert outcomes == {f"not_enrolled {f.CLOSE_CODES[f.ErrorCode.NOT_ENROLLED]}": ATTEMPTS}

    recorded = LinkInitiator(paris.link_key.private_bytes(), target.relay_public).write_hello()
    replays: Counter[tuple[bool, int | None]] = Counter()
    for _ in range(ATTEMPTS):
        async with websockets.connect(target.ws_url, compression=None) as ws:
            await ws.send(recorded)
            welcomed = False
            with contextlib.suppress(websockets.ConnectionClosed):
                welcome = await asyncio.wait_for(ws.recv(), 30)
                assert isinstance(welcome, bytes)
                assert len(welcome) == 72  # the first use completes: the relay cannot tell yet
                welcomed = True
                await ws.send(os.urandom(40))  # without the ephemeral key: no valid transport
            replays[(welcomed, await expect_close(ws, 30))] += 1
    # The first use gets its welcome and fails on the transport (M-LINK-9); every replay
    # after it is refused before any work, without a welcome (M-LINK-12).
    malformed = f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]
    assert replays == {(True, malformed): 1, (False, malformed): ATTEMPTS - 1}
    await ping(live, b"stillme!")  # not replaced (a REPLACED error would fail expect())
    await live.close()
    record(
        SUITE,
        "link handshake without the cell's own key",
        {"unenrolled_keys": ATTEMPTS, "replayed_hellos": ATTEMPTS},
        {"accepted": 0, "live_link_displaced": 0},
    )


# -- pairing -----------------------------------------------------------------------------------


async def test_no_sending_to_or_fetching_from_unpaired_cells(world: World) -> None:
    """SPEC.md §11.2 step 4, M-REL-13: rome (paired only with oslo) is refused ``not_paired``
    for SENDs and bundle fetches addressed to paired-elsewhere cells, to cell ids that do not
    exist and to itself; nothing is queued and no prekey is consumed. Unpairing takes effect
    at once on live links."""
    rome, paris, berlin = world.cells["rome"], world.cells["paris"], world.cells["berlin"]
    link = await connect(rome, world.target)
    targets = [paris.cell_id, berlin.cell_id, rome.cell_id] + [os.urandom(16) for _ in range(3)]
    stock_before = (await _cell_info(world, "berlin"))["one_time_prekeys"]
    sent: list[tuple[str, bytes]] = []
    for i in range(ATTEMPTS):
        recipient = targets[i % len(targets)]
        message_id, data = _envelope(recipient)
        await link.send(f.SendFrame(data))
        sent.append(("send", message_id))
        request_id = link.request_id()
        await link.send(f.FetchBundleFrame(request_id, recipient))
        sent.append(("fetch", request_id.to_bytes(4, "big")))
    answers = await _answers(link, len(sent))  # fetches are answered asynchronously
    assert all(isinstance(a, f.ErrorFrame) for a in answers), answers
    errors = [a for a in answers if isinstance(a, f.ErrorFrame)]
    assert Counter(e.code for e in errors) == {"not_paired": 2 * ATTEMPTS}
    assert sorted(e.ref for e in errors) == sorted(ref for _kind, ref in sent)
    await link.close()
    for name in ("paris", "berlin"):
        assert (await _cell_info(world, name))["queue_depth"] == 0
    assert (await _cell_info(world, "berlin"))["one_time_prekeys"] == stock_before

    # Unpairing cuts a live link's rights at once; pairing again restores them.
    paris_link = await connect(paris, world.target)
    await world.admin.unpair("paris", "berlin")
    _mid, data = _envelope(berlin.cell_id)
    await paris_link.send(f.SendFrame(data))
    assert (await paris_link.expect(f.ErrorFrame)).code == f.ErrorCode.NOT_PAIRED
    await world.admin.pair("paris", "berlin")
    await paris_link.send(f.SendFrame(data))
    assert isinstance(await paris_link.expect(f.AcceptedFrame), f.AcceptedFrame)
    await paris_link.close()
    record(
        SUITE,
        "sending to and fetching from unpaired cells",
        {"sends": ATTEMPTS, "bundle_fetches": ATTEMPTS, "unpaired_after_unpair": 1},
        {"accepted": 0, "bundles_served": 0, "prekeys_consumed": 0},
    )


async def test_no_cell_reads_another_cells_queue(world: World) -> None:
    """SPEC.md M-REL-9, M-REL-10: envelopes for berlin are delivered to berlin alone; other
    cells, connected all along (the sender too), get none, and their ACKs of berlin's relay
    sequence numbers delete nothing."""
    paris, berlin = world.cells["paris"], world.cells["berlin"]
    others = [world.cells["rome"], world.cells["oslo"]]
    messages = scaled(20, 300)
    sender = await connect(paris, world.target)
    watchers = [await connect(cell, world.target) for cell in others]
    bundle = await sender.fetch_bundle(berlin)
    sealed = [paris.seal(berlin, f"for berlin only {i}", bundle=bundle) for i in range(messages)]
    seqs = []
    for _mid, data in sealed:
        await sender.send(f.SendFrame(data))
        seqs.append((await sender.expect(f.AcceptedFrame)).relay_seq)
    for watcher in watchers:  # try to acknowledge (delete) berlin's envelopes
        for seq in seqs:
            await watcher.send(f.AckFrame(seq))
    # Nobody but berlin hears of them (a DELIVER would fail expect(PongFrame)).
    for link in [sender, *watchers]:
        await ping(link, b"nothing!")
    await asyncio.sleep(0.5)
    for link in [sender, *watchers]:
        await ping(link, b"still no")
    inbox = await connect(berlin, world.target)
    got = []
    for _ in range(messages):
        deliver = await inbox.expect(f.DeliverFrame)
        got.append(berlin.open(paris, deliver.envelope))
        await inbox.send(f.AckFrame(deliver.relay_seq))
    assert got == [f"for berlin only {i}" for i in range(messages)]
    for link in [sender, *watchers, inbox]:
        await link.close()
    record(
        SUITE,
        "reading another cell's queue",
        {"messages": messages, "foreign_acks": messages * len(watchers)},
        {"delivered_to_wrong_cell": 0, "deleted_by_foreign_ack": 0, "lost": 0},
    )


# -- suspension and revocation -----------------------------------------------------------------


async def _cut_off(world: World, name: str, action: str) -> float:
    """Seconds from the admin's ``action`` request to the cell's link closing with the
    documented ERROR frame and close code."""
    code = f.ErrorCode.SUSPENDED if action == "suspend" else f.ErrorCode.REVOKED
    link = await connect(world.cells[name], world.target)
    await ping(link, b"up & on!")
    started = time.monotonic()
    await world.admin.action(name, action)
    error = await link.expect(f.ErrorFrame, timeout=10)
    closed = await link.closed_code(timeout=10)
    took = time.monotonic() - started
    assert error.code == code
    assert error.ref == b""  # about this cell itself
    assert closed == f.CLOSE_CODES[code]
    return took


async def _refused(world: World, name: str, code: f.ErrorCode, attempts: int) -> None:
    for _ in range(attempts):
        link = await connect(world.cells[name], world.target)
        assert (await link.expect(f.ErrorFrame)).code == code
        assert await link.closed_code() == f.CLOSE_CODES[code]


async def test_suspended_and_revoked_cells_are_cut_off_within_a_second(world: World) -> None:
    """SPEC.md M-REL-16, M-REL-17: suspension and revocation close the cell's live link within
    one second of the admin's request, and every later connection is refused with the
    authenticated reason; peers hear of a revocation and can no longer send to the cell."""
    attempts = scaled(10, 200)
    suspended = await _cut_off(world, "berlin", "suspend")
    await _refused(world, "berlin", f.ErrorCode.SUSPENDED, attempts)
    await world.admin.action("berlin", "resume")
    back = await connect(world.cells["berlin"], world.target)
    await ping(back, b"resumed!")
    await back.close()

    paris = await connect(world.cells["paris"], world.target)
    revoked = await _cut_off(world, "berlin", "revoke")
    assert (await paris.expect(f.PeerRevokedFrame)).cell_id == world.cells["berlin"].cell_id
    await _refused(world, "berlin", f.ErrorCode.REVOKED, attempts)
    message_id, data = _envelope(world.cells["berlin"].cell_id)
    await paris.send(f.SendFrame(data))
    error = await paris.expect(f.ErrorFrame)
    assert (error.code, error.ref) == (f.ErrorCode.REVOKED, message_id)
    await paris.send(f.FetchBundleFrame(77, world.cells["berlin"].cell_id))
    error = await paris.expect(f.ErrorFrame)
    assert (error.code, error.ref) == (f.ErrorCode.REVOKED, (77).to_bytes(4, "big"))
    await paris.close()
    assert suspended < DISCONNECT_BUDGET, f"suspension took {suspended:.3f} s"
    assert revoked < DISCONNECT_BUDGET, f"revocation took {revoked:.3f} s"
    record(
        SUITE,
        "suspended and revoked cells",
        {
            "suspend_disconnect_ms": round(suspended * 1000),
            "revoke_disconnect_ms": round(revoked * 1000),
            "reconnects_while_suspended": attempts,
            "reconnects_after_revocation": attempts,
        },
        {"accepted": 0, "disconnected_late": 0, "sends_to_revoked_accepted": 0},
    )


async def test_a_revocation_never_leaves_accepted_messages_silently_undelivered(
    world: World,
) -> None:
    """SPEC.md M-REL-20: every envelope accepted for oslo and purged when oslo is revoked is
    reported to its sender (ERROR revoked, ref = its message id) exactly once: the linked
    sender at once, none forgotten, none invented, none repeated on the next connect."""
    queued = scaled(20, 500)
    rome = await connect(world.cells["rome"], world.target)
    sent = set()
    for _ in range(queued):
        message_id, data = _envelope(world.cells["oslo"].cell_id)
        await rome.send(f.SendFrame(data))
        sent.add(message_id)
    accepted = {frame.message_id for frame in await _answers(rome, queued)
                if isinstance(frame, f.AcceptedFrame)}  # fmt: skip
    assert accepted == sent
    await world.admin.action("oslo", "revoke")
    told: Counter[bytes] = Counter()
    while sum(told.values()) < queued:
        frame = await rome.recv(30)
        if isinstance(frame, f.ErrorFrame):
            assert frame.code == f.ErrorCode.REVOKED, frame
            told[frame.ref] += 1
        else:
            assert isinstance(frame, f.PingFrame | f.PongFrame | f.PrekeysLowFrame
                              | f.PeerRevokedFrame), frame  # fmt: skip
    await rome.close()
    assert set(told) == sent
    assert max(told.values()) == 1
    again = await connect(world.cells["rome"], world.target)
    assert isinstance(await again.expect(f.PeerRevokedFrame), f.PeerRevokedFrame)
    with pytest.raises(TimeoutError):
        await again.expect(f.ErrorFrame, timeout=1.0)
    await again.close()
    assert (await _cell_info(world, "oslo"))["queue_depth"] == 0
    record(
        SUITE,
        "queued messages purged by a revocation",
        {"accepted_then_purged": queued, "senders_told": len(told)},
        {"purged_silently": len(sent - set(told)), "told_twice": sum(told.values()) - len(told)},
    )


# -- enrollment codes --------------------------------------------------------------------------


async def test_enrollment_codes_are_single_use_superseded_and_expire(world: World) -> None:
    """SPEC.md M-ENR-1, M-ENR-2: a code enrolls once (a second cell, and a replay of the very
    request that used it, get ``code_used``); a newer code makes the older one ``bad_code``;
    an expired code is ``code_expired``; guessed secrets under the right relay fingerprint are
    ``bad_code``. Expiry is reached by moving the code's expiry into the past in the relay's
    database (the relay's clock is real; the default TTL is a day)."""
    relay, target = world.relay, world.target
    _cid, code = await world.admin.add_cell("lisbon")
    first = RawCell("lisbon")
    await enroll(first, target, code)
    refusals: Counter[str] = Counter()

    async def refused(cell: RawCell, text: str) -> None:
        answer = await enroll_answer(cell, target, text)
        refusals[answer.error or "enrolled"] += 1

    for _ in range(scaled(5, 50)):
        await refused(RawCell("lisbon-again"), code)
    assert refusals == {"code_used": scaled(5, 50)}

    # The code's TTL is the relay's setting.
    created = await world.admin.client.post("/admin/cells", json={"name": "madrid"})
    body = created.json()
    expires = datetime.fromisoformat(body["code_expires_at"]).timestamp()
    ttl = world.relay.settings.enrollment_code_ttl_seconds
    assert abs(expires - (time.time() + ttl)) < 60
    # A newer code supersedes it.
    newer = (await world.admin.client.post("/admin/cells/madrid/codes")).json()["enrollment_code"]
    refusals.clear()
    await refused(RawCell("madrid"), body["enrollment_code"])
    # Expired: the row's expiry in the past.
    engine = create_engine(relay.settings.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(enrollment_codes)
                .where(enrollment_codes.c.used_at_ms.is_(None))
                .values(expires_at_ms=int(time.time() * 1000) - 1)
            )
    finally:
        await engine.dispose()
    await refused(RawCell("madrid"), newer)
    # Guessing: the right relay fingerprint, random 160-bit secrets.
    fingerprint = EnrollmentCode.parse(code).relay_fingerprint
    guesses = scaled(20, 500)
    for _ in range(guesses):
        guess = EnrollmentCode(fingerprint, secrets.token_bytes(20)).text()
        await refused(RawCell("guess"), guess)
    assert refusals == {"bad_code": 1 + guesses, "code_expired": 1}, refusals
    assert (await _cell_info(world, "madrid"))["status"] == "pending"
    record(
        SUITE,
        "enrollment codes",
        {"reuses": scaled(5, 50), "superseded": 1, "expired": 1, "guessed_secrets": guesses},
        {"accepted": 0},
    )


# -- the admin API -----------------------------------------------------------------------------

EVERY_ROUTE = [
    ("POST", "/admin/cells", {"name": "intruder"}),
    ("GET", "/admin/cells", None),
    ("GET", "/admin/cells/paris", None),
    ("POST", "/admin/cells/paris/codes", None),
    ("POST", "/admin/cells/paris/suspend", None),
    ("POST", "/admin/cells/paris/resume", None),
    ("POST", "/admin/cells/paris/revoke", None),
    ("POST", "/admin/channels", {"a": "paris", "b": "rome"}),
    ("GET", "/admin/channels", None),
    ("DELETE", "/admin/channels/paris/berlin", None),
    ("POST", "/admin/tokens", {"name": "intruder"}),
    ("GET", "/admin/tokens", None),
    ("DELETE", "/admin/tokens/1", None),
    ("GET", "/admin/audit", None),
]


async def _state(world: World) -> list[Any]:
    """Everything the admin API can change, as the real admin sees it."""
    client = world.admin.client
    paths = ("/admin/cells", "/admin/channels", "/admin/tokens", "/admin/audit")
    state = [(await client.get(path)).json() for path in paths]
    # Failed authentications are audited (admin.auth_failed): a record, not a change.
    state[3] = [e for e in state[3] if e["action"] != "admin.auth_failed"]
    return state


async def test_admin_endpoints_refuse_missing_wrong_and_revoked_tokens(world: World) -> None:
    """Every admin route answers 401 (an RFC 9457 problem with ``WWW-Authenticate``) to no
    token, a malformed header, a wrong token and a revoked token, and changes nothing."""
    revoked = []
    for _ in EVERY_ROUTE:  # failures also count per token: one revoked token per route
        made = (await world.admin.client.post("/admin/tokens", json={"name": "gone"})).json()
        await world.admin.client.delete(f"/admin/tokens/{made['id']}")
        revoked.append(made["token"])
    before = await _state(world)
    outcomes: Counter[str] = Counter()
    for (method, path, body), gone in zip(EVERY_ROUTE, revoked, strict=True):
        credentials: dict[str, dict[str, str]] = {
            "missing": {},
            "malformed": {"Authorization": "Bearer"},
            "basic": {"Authorization": "Basic cm9vdDpyb290"},
            "wrong": {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"},
            "revoked": {"Authorization": f"Bearer {gone}"},
        }
        # Per route its own address: at most two counted failures each, far below the limit.
        async with admin_client(world.relay, None, fresh_address()) as client:
            for kind, headers in credentials.items():
                response = await client.request(method, path, json=body, headers=headers)
                outcomes[f"{kind} {response.status_code}"] += 1
                assert response.status_code == 401, (kind, method, path, response.text)
                assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
                assert response.json()["code"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith("Bearer")
    assert await _state(world) == before
    attempts = sum(outcomes.values())
    assert attempts == len(EVERY_ROUTE) * 5
    record(
        SUITE,
        "admin endpoints without a valid token",
        {"routes": len(EVERY_ROUTE), "attempts": attempts}
        | {f"{kind}_token": len(EVERY_ROUTE) for kind in credentials},
        {"accepted": 0, "state_changed": 0},
    )


async def test_repeated_auth_failures_are_rate_limited(world: World) -> None:
    """After 10 failed tokens from one address within a minute its further failures are
    refused with 429 and Retry-After, while the right token from that same address is still
    served (issue #10 item 11: no lock-out of the admins behind a shared NAT); requests
    without any token are refused but not counted."""
    guesser, neighbour, anonymous = fresh_address(), fresh_address(), fresh_address()
    token = world.relay.admin_token
    throttled = scaled(20, 500)
    async with (
        admin_client(world.relay, "guess", guesser) as guessing,
        admin_client(world.relay, token, guesser) as same_address,
        admin_client(world.relay, token, neighbour) as elsewhere,
        admin_client(world.relay, None, anonymous) as no_token,
        admin_client(world.relay, token, anonymous) as anonymous_admin,
    ):
        statuses: Counter[int] = Counter()
        for i in range(10 + throttled):
            guess = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
            response = await guessing.get("/admin/cells", headers=guess)
            statuses[response.status_code] += 1
            expected = 401 if i < 10 else 429
            assert response.status_code == expected, (i, response.text)
            if expected == 429:
                assert 0 < int(response.headers["retry-after"]) <= 60
                assert response.json()["code"] == "rate_limited"
        assert (await same_address.get("/admin/cells")).status_code == 200
        still_throttled = await guessing.get("/admin/cells")
        assert still_throttled.status_code == 429
        assert (await elsewhere.get("/admin/cells")).status_code == 200
        for _ in range(throttled):
            assert (await no_token.get("/admin/cells")).status_code == 401
        assert (await anonymous_admin.get("/admin/cells")).status_code == 200
    record(
        SUITE,
        "repeated authentication failures",
        {
            "guesses": 10 + throttled,
            "refused_401": statuses[401],
            "throttled_429": statuses[429],
            "tokenless_requests": throttled,
        },
        {"guess_accepted": 0, "right_token_refused_while_throttled": 0},
    )
