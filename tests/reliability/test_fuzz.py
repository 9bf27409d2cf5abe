"""Fuzzing every parser (issue #5): hostile bytes only ever produce documented errors.

Two halves:

* **Parsers in process** (hypothesis): the link handshake (relay reading a hello, cell reading
  a welcome, transport decryption), every frame type, the routing header, envelope, body,
  setup block and prekey bundle, end-to-end opening of an envelope, stored session and ratchet
  state, and every enrollment format (code text, request, response, both handshake messages).
  Each is fed random bytes and mutations of valid encodings (bit flips, truncation, extension,
  splices, overwritten runs). Only the ``LiaisonError`` tree may come out, and always a
  *remote* error (``RemoteProtocolError``: the bytes came from the other side, not from a
  caller's mistake); what a parser accepts re-encodes to exactly the input wherever the format
  is canonical; a failed open leaves the session unchanged.
* **A live relay** (real uvicorn, real sockets): garbage hellos and text messages before the
  handshake must close the WebSocket with ``malformed_frame`` (4000); after a real handshake,
  fuzzed frames inside valid transport messages must be answered only with documented frames
  (ERROR frames with known codes, or the request's normal answer) and the link must survive,
  while garbage transport messages close it with 4000; ``/v1/enroll`` answers garbage and
  mutated enrollment messages with a 400 problem document or an authenticated refusal with a
  documented code; random JSON POSTed to every admin endpoint gets a 2xx or an RFC 9457
  problem with a status the OpenAPI document lists; ``/healthz`` stays OK. Finally
  schemathesis checks every operation of the relay's own ``/openapi.json``, with and without an
  admin token: no 5xx, every status and body as documented.

Every scenario counts the inputs it tried and records them (``tests/reliability/report.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from liaison.protocol import frames as f
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.enrollment import (
    ENROLL_PROLOGUE,
    EnrollError,
    EnrollmentCode,
    EnrollmentInitiator,
    EnrollmentResponder,
    EnrollRequest,
    EnrollResponse,
    build_request,
)
from liaison.protocol.envelope import (
    BUCKETS,
    Body,
    ContentType,
    Envelope,
    EnvelopeKind,
    Precedence,
    Routing,
    SessionSetup,
)
from liaison.protocol.errors import LiaisonError, RemoteProtocolError
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from liaison.protocol.link import LinkInitiator, LinkResponder
from liaison.protocol.noise import HandshakeState
from liaison.protocol.ratchet import RatchetState
from liaison.protocol.session import Session
from liaison.server.problems import PROBLEM_MEDIA_TYPE
from tests.protocol.sessions import (
    StreamRng,
    make_responder,
    new_pair,
    receive,
    send,
    state_bytes,
)
from tests.reliability.attackkit import Target, provision
from tests.reliability.report import record, scaled
from tests.server.harness import RawCell, RunningRelay, running_relay

SUITE = "fuzz"
EXAMPLES = scaled(150, 5000)  # hypothesis examples per parser property
LIVE = scaled(60, 2000)  # inputs per live-relay scenario
SCHEMATHESIS_EXAMPLES = scaled(5, 200)  # per API operation and phase

T = TypeVar("T")


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- mutations of valid encodings --------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    """One of ``samples``, changed: bits flipped, cut, extended, spliced or overwritten."""
    base = draw(st.sampled_from(samples))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "grow", "splice", "overwrite", "delete", "set"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at:]
        elif op == "grow":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "splice":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF]))
        elif data:  # overwrite a run
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
    mutated_bytes = bytes(data)
    return mutated_bytes if mutated_bytes != base else base + b"\x00"


def sized(lengths: list[int]) -> st.SearchStrategy[bytes]:
    """Random bytes of exactly one of ``lengths`` (expanded from a seed: cheap for hypothesis
    even at 64 KiB)."""
    return st.builds(lambda n, seed: random.Random(seed).randbytes(n),
                     st.sampled_from(lengths), st.integers(0, 2**32))  # fmt: skip


def hostile(samples: list[bytes], max_size: int = 2048) -> st.SearchStrategy[bytes]:
    """Random bytes, mutated samples, and random bytes of each sample's exact length."""
    return st.one_of(
        st.binary(max_size=min(max_size, 2048)),
        mutated(samples),
        sized(sorted({len(s) for s in samples})),
    )


@dataclass
class Tally:
    """What a parser did with the inputs it was fed."""

    inputs: int = 0
    accepted: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def refused(self, exc: BaseException) -> None:
        # Only the protocol's own error tree, and only the "the other side sent garbage"
        # branch: anything else (IndexError, struct.error, InvalidKey ...) fails the test.
        if not isinstance(exc, RemoteProtocolError):
            raise AssertionError(f"undocumented error {type(exc).__name__}: {exc}") from exc
        self.errors[type(exc).__name__] += 1

    def counts(self) -> dict[str, int]:
        return {"inputs": self.inputs, "accepted": self.accepted} | {
            f"refused_{name}": n for name, n in sorted(self.errors.items())
        }


def _parse(tally: Tally, parse: Callable[[Any], T], data: Any) -> T | None:
    tally.inputs += 1
    try:
        value = parse(data)
    except Exception as exc:
        tally.refused(exc)
        return None
    tally.accepted += 1
    return value


def _record_parsers(scenario: str, tallies: dict[str, Tally]) -> None:
    counts: dict[str, int] = {}
    for name, tally in tallies.items():
        counts |= {f"{name}.{key}": value for key, value in tally.counts().items()}
    counts["inputs"] = sum(t.inputs for t in tallies.values())
    record(SUITE, scenario, counts, {"undocumented_errors": 0, "non_canonical_accepts": 0})


# -- valid samples -----------------------------------------------------------------------------

RELAY = X25519KeyPair.generate()
RELAY_PUBLIC = bytes(RELAY.public)
CELL = X25519KeyPair.generate()
CELL_ID = os.urandom(16)


def _link_pair() -> tuple[LinkInitiator, LinkResponder]:
    """Both ends of the same handshake every time (ephemerals from fixed streams), so the
    samples below are exactly what a fresh end expects next."""
    return (
        LinkInitiator(CELL.private_bytes(), RELAY_PUBLIC, rng=StreamRng(b"fuzz cell")),
        LinkResponder(RELAY.private_bytes(), rng=StreamRng(b"fuzz relay")),
    )


def _link_samples() -> tuple[bytes, bytes, list[bytes]]:
    """The hello, the welcome and the first transport messages of that handshake."""
    initiator, responder = _link_pair()
    hello = initiator.write_hello()
    responder.read_hello(hello)
    welcome = responder.write_welcome(CELL_ID + (1_800_000_000_000).to_bytes(8, "big"))
    initiator.read_welcome(welcome)
    cell = initiator.transport()
    return hello, welcome, [cell.encrypt(f.encode_frame(frame)) for frame in FRAME_SAMPLES[:6]]


def _frame_samples() -> list[f.Frame]:
    ids = [os.urandom(16) for _ in range(3)]
    env = os.urandom(300)
    prekeys = tuple(f.OneTimePrekey(i, os.urandom(32)) for i in (1, 2, 0xFFFFFFFE))
    peers = (
        f.PeerEntry(ids[0], "active", os.urandom(32), "berlin"),
        f.PeerEntry(ids[1], "pending", bytes(32), "x.y-z_0"),
    )
    return [
        f.SendFrame(env),
        f.AcceptedFrame(ids[0], 2**40),
        f.DeliverFrame(7, ids[1], 1_800_000_000_000, env),
        f.AckFrame(99),
        f.FetchBundleFrame(5, ids[2]),
        f.BundleFrame(6, True, os.urandom(1401)),
        f.BundleFrame(6, False, os.urandom(1437)),
        f.UploadPrekeysFrame(8, prekeys),
        f.PrekeysLowFrame(3),
        f.ErrorFrame(f.ErrorCode.NOT_PAIRED, ids[0], "no channel with that cell"),
        f.ErrorFrame("some_future_code", b"\x00\x00\x00\x07", "ünïcode reason"),
        f.PeerRevokedFrame(ids[1]),
        f.ExpiredFrame(ids[0], ids[2]),
        f.PingFrame(b"12345678"),
        f.PongFrame(b"87654321"),
        f.UploadedFrame(8, 3),
        f.ListPeersFrame(9),
        f.PeersFrame(10, peers),
        f.PeersFrame(11, ()),
    ]


FRAME_SAMPLES = _frame_samples()


def test_frame_samples_cover_every_frame_type() -> None:
    assert {frame.TYPE for frame in FRAME_SAMPLES} == set(f.FrameType)


@dataclass
class Conversation:
    """Real end-to-end data: envelopes of every kind, bodies, session and ratchet states."""

    envelopes: list[bytes]
    bodies: list[bytes]
    setups: list[bytes]
    bundles: list[bytes]
    sessions: list[bytes]
    ratchets: list[bytes]
    opener: bytes  # Alice's state, able to open ``for_alice``
    for_alice: list[bytes]


def _conversation() -> Conversation:
    pair = new_pair()
    prekey_env = send(pair.alice, b"second", marking="NATO RESTRICTED")
    ahead = [send(pair.alice, b"a%d" % i) for i in range(3)]
    receive(pair.bob, ahead[2])  # Bob now keeps two skipped keys
    reply = send(pair.bob, b"reply", precedence=Precedence.FLASH)
    opener = state_bytes(pair.alice)
    more = send(pair.bob, b"x" * 5000)  # a larger bucket
    receive(pair.alice, reply)
    after = send(pair.alice, b"after the reply")
    envelopes = [pair.first, prekey_env, reply, more, after]
    sessions = [opener, state_bytes(pair.alice), state_bytes(pair.bob)]
    return Conversation(
        envelopes=envelopes,
        bodies=[
            Body(ContentType.TEXT, 1, 2, b"hi", "SECRET").encode(EnvelopeKind.MESSAGE),
            Body(ContentType.RECEIPT, 5, 6, b"", "").encode(EnvelopeKind.PREKEY),
            Body(ContentType.JSON, 2**64 - 1, 0, b"{}" * 100, "é" * 100).encode(
                EnvelopeKind.MESSAGE
            ),
        ],
        setups=[s.encode() for e in envelopes if (s := Envelope.decode(e).setup) is not None],
        bundles=[make_responder(one_time=flag).bundle().encode() for flag in (True, False)],
        sessions=sessions,
        ratchets=[Session.from_bytes(s).ratchet.state.to_bytes() for s in sessions],
        opener=opener,
        for_alice=[reply, more],
    )


CONVERSATION = _conversation()


# -- parsers in process ------------------------------------------------------------------------


def test_link_handshake_and_transport_parsers() -> None:
    """SPEC.md §6: a relay reading a hello, a cell reading a welcome and the relay decrypting a
    transport message raise only remote protocol errors, accept nothing mutated, and are dead
    after a failure (no welcome, no transport, no further decryption)."""
    hello, welcome, transport = _link_samples()
    big = sized([65_535, 65_536, 70_000])
    tallies = {"read_hello": Tally(), "read_welcome": Tally(), "transport.decrypt": Tally()}

    @_settings(EXAMPLES)
    @given(data=hostile([hello], 400))
    def hellos(data: bytes) -> None:
        _initiator, responder = _link_pair()
        assert _parse(tallies["read_hello"], responder.read_hello, data) is None
        with pytest.raises(LiaisonError):
            responder.write_welcome(b"")

    @_settings(EXAMPLES)
    @given(data=hostile([welcome], 400))
    def welcomes(data: bytes) -> None:
        initiator, responder = _link_pair()
        responder.read_hello(initiator.write_hello())
        assert _parse(tallies["read_welcome"], initiator.read_welcome, data) is None
        with pytest.raises(LiaisonError):
            initiator.transport()

    @_settings(EXAMPLES)
    @given(data=st.one_of(hostile(transport, 400), big))
    def transports(data: bytes) -> None:
        initiator, responder = _link_pair()
        responder.read_hello(initiator.write_hello())
        initiator.read_welcome(responder.write_welcome(CELL_ID + bytes(8)))
        relay = responder.transport()
        assert _parse(tallies["transport.decrypt"], relay.decrypt, data) is None
        assert relay.is_failed
        with pytest.raises(LiaisonError):
            relay.decrypt(transport[0])

    hellos()
    welcomes()
    transports()
    # The unmutated samples do work with a fresh end: the failures above were the mutations'.
    _initiator, responder = _link_pair()
    assert responder.read_hello(hello) == (bytes(CELL.public), b"")
    for tally in tallies.values():
        assert tally.inputs >= EXAMPLES
    _record_parsers("link handshake and transport", tallies)


def test_frame_decoder() -> None:
    """SPEC.md §10, M-FRM-1: decode_frame raises only MalformedData, and what it accepts
    re-encodes to the same bytes; on random bytes, typed garbage and mutated frames of every
    type."""
    samples = [f.encode_frame(frame) for frame in FRAME_SAMPLES]
    tally = Tally()
    types = st.sampled_from([t.value for t in f.FrameType] + [0, 0x11, 0xFF])

    @_settings(EXAMPLES * 4)
    @given(
        data=st.one_of(
            hostile(samples, 4096),
            st.tuples(types, st.binary(max_size=600)).map(lambda tb: bytes([tb[0]]) + tb[1]),
            sized([f.MAX_FRAME - 1, f.MAX_FRAME, f.MAX_FRAME + 1, 2**17]),
        )
    )
    def frames(data: bytes) -> None:
        frame = _parse(tally, f.decode_frame, data)
        if frame is not None:
            assert f.encode_frame(frame) == data, "accepted a non-canonical frame"
        else:
            assert set(tally.errors) <= {"MalformedData"}

    frames()
    assert tally.inputs >= 4 * EXAMPLES
    _record_parsers("link frames", {"decode_frame": tally})


def test_envelope_body_setup_and_bundle_parsers() -> None:
    """SPEC.md §5.3, §7.4, §9: the routing header, envelope, body, setup block and prekey
    bundle codecs raise only remote protocol errors and accept only canonical encodings; the
    envelope and routing decoders also get bucket-sized garbage with plausible headers."""
    conv = CONVERSATION
    parsers: dict[str, tuple[Callable[[bytes], Any], list[bytes], Callable[[Any], bytes] | None]]
    parsers = {
        "Routing.decode": (Routing.decode, conv.envelopes, None),
        "Envelope.decode": (Envelope.decode, conv.envelopes, lambda e: e.encode()),
        "Body.decode": (Body.decode, conv.bodies, None),
        "SessionSetup.decode": (SessionSetup.decode, conv.setups, lambda s: s.encode()),
        "PrekeyBundle.decode": (PrekeyBundle.decode, conv.bundles, lambda b: b.encode()),
    }
    tallies = {name: Tally() for name in parsers}
    headers = st.sampled_from([b"\x01\x01", b"\x01\x02", b"\x02\x01", b"\x01\x03", b""])
    bucket_sized = st.tuples(headers, st.binary(max_size=1300), st.sampled_from(BUCKETS)).map(
        lambda t: (t[0] + t[1]).ljust(t[2], b"\x00")[: t[2]]
    )

    for name, (parse, samples, encode) in parsers.items():
        strategy = hostile(samples, 1500)
        if name in ("Routing.decode", "Envelope.decode"):
            strategy = st.one_of(strategy, bucket_sized)
        _canonical_property(tallies[name], parse, encode, strategy)()
        assert tallies[name].inputs >= EXAMPLES
    _record_parsers("envelopes, bodies, setup blocks, bundles", tallies)


def _canonical_property(
    tally: Tally,
    parse: Callable[[bytes], Any],
    encode: Callable[[Any], bytes] | None,
    strategy: st.SearchStrategy[bytes],
    allowed: set[str] | None = None,
    *,
    stable: bool = False,
) -> Callable[[], None]:
    """A hypothesis property: ``parse`` raises only documented (remote) errors, from
    ``allowed`` if given, and whatever it accepts ``encode``s back to the input. With
    ``stable`` (a format that is not canonical: a stored X25519 private key is clamped when
    read), what it accepts serializes to bytes that parse back to the same serialization."""

    @_settings(EXAMPLES)
    @given(data=strategy)
    def check(data: bytes) -> None:
        value = _parse(tally, parse, data)
        if value is not None and encode is not None:
            assert encode(value) == data, "accepted a non-canonical encoding"
        if value is not None and stable:
            once = value.to_bytes()
            assert parse(once).to_bytes() == once, "serialization does not round-trip"
        if isinstance(value, Routing):
            assert value.encode() == data[:43]
        if allowed is not None:
            assert set(tally.errors) <= allowed, tally.errors

    return check


def test_opening_mutated_envelopes() -> None:
    """SPEC.md §8.6: a session opening a mutated envelope raises only remote protocol errors
    and its state is unchanged afterwards (nothing is committed for a message that does not
    open); the untouched envelopes still open after all that."""
    conv = CONVERSATION
    tally = Tally()

    @_settings(EXAMPLES)
    @given(data=mutated(conv.for_alice))
    def opens(data: bytes) -> None:
        session = Session.from_bytes(conv.opener)
        tally.inputs += 1
        try:
            envelope = Envelope.decode(data)
            session.open(envelope)
        except Exception as exc:
            tally.refused(exc)
            assert session.to_bytes() == conv.opener, "a failed open changed the session"
            return
        tally.accepted += 1

    opens()
    session = Session.from_bytes(conv.opener)
    assert [receive(session, e) for e in conv.for_alice] == [b"reply", b"x" * 5000]
    # A bit flip could only go unnoticed in the padding-free routing fields... it cannot: the
    # routing header is authenticated too. Nothing mutated may open.
    assert tally.accepted == 0
    _record_parsers("opening mutated envelopes", {"Session.open": tally})


def test_stored_session_state_parsers() -> None:
    """SPEC.md §8.8: Session.from_bytes and RatchetState.from_bytes on random bytes, truncated,
    extended and bit-flipped real states raise only MalformedData / UnsupportedVersion, and an
    accepted state serializes to bytes that read back to the same state. (Not necessarily to
    its input: a private key with unclamped bits is read, clamped, as the same key.)"""
    conv = CONVERSATION
    tallies = {"Session.from_bytes": Tally(), "RatchetState.from_bytes": Tally()}
    cases: list[tuple[str, Callable[[bytes], Any], list[bytes]]] = [
        ("Session.from_bytes", Session.from_bytes, conv.sessions),
        ("RatchetState.from_bytes", RatchetState.from_bytes, conv.ratchets),
    ]
    for name, parse, samples in cases:
        allowed = {"MalformedData", "UnsupportedVersion"}
        strategy = hostile(samples, 3000)
        _canonical_property(tallies[name], parse, None, strategy, allowed, stable=True)()
        assert tallies[name].inputs >= EXAMPLES
    _record_parsers("stored session state", tallies)


def _enrollment_samples() -> tuple[EnrollRequest, list[bytes], list[bytes], list[str]]:
    identity = IdentityKeyPair.generate()
    link = X25519KeyPair.generate()
    otks = tuple(OneTimePrekey(i, X25519KeyPair.generate().public) for i in (1, 2, 3))
    request = build_request(
        os.urandom(20), identity, bytes(link.public),
        SignedPrekey.create(identity, 1, X25519KeyPair.generate()),
        SignedKemPrekey.create(identity, 2, KemKeyPair.generate()), otks,
    )  # fmt: skip
    bare = EnrollRequest(request.secret, request.identity, request.link_signature,
                         request.signed_prekey, request.kem_prekey, ())  # fmt: skip
    responses = [
        EnrollResponse(cell_id=os.urandom(16), name="attache-paris").encode(),
        EnrollResponse(error=EnrollError.CODE_USED).encode(),
        EnrollResponse(error=EnrollError.MALFORMED).encode(),
    ]
    codes = [EnrollmentCode.generate(RELAY_PUBLIC).text() for _ in range(3)]
    return request, [request.encode(), bare.encode()], responses, codes


def test_enrollment_parsers() -> None:
    """SPEC.md §5.4: enrollment code text, EnrollRequest, EnrollResponse and both enrollment
    handshake messages raise only remote protocol errors; accepted requests and responses
    re-encode to their input; a code parses only to its 36 bytes."""
    request, requests, responses, codes = _enrollment_samples()
    link = X25519KeyPair.generate()
    message1 = EnrollmentInitiator(link.private_bytes(), RELAY_PUBLIC).request(request)
    tallies = {name: Tally() for name in (
        "EnrollmentCode.parse", "EnrollRequest.decode", "EnrollResponse.decode",
        "EnrollmentResponder.read", "EnrollmentInitiator.response",
    )}  # fmt: skip

    @_settings(EXAMPLES)
    @given(text=st.one_of(st.text(max_size=80), mutated([c.encode() for c in codes]).map(
        lambda b: b.decode("utf-8", "replace"))))  # fmt: skip
    def code_texts(text: str) -> None:
        code = _parse(tallies["EnrollmentCode.parse"], EnrollmentCode.parse, text)
        if code is not None:
            assert EnrollmentCode.parse(code.text()) == code

    @_settings(EXAMPLES)
    @given(data=hostile(requests, 9000))
    def request_bodies(data: bytes) -> None:
        value = _parse(tallies["EnrollRequest.decode"], EnrollRequest.decode, data)
        if value is not None:
            assert value.encode() == data

    @_settings(EXAMPLES)
    @given(data=hostile(responses, 300))
    def response_bodies(data: bytes) -> None:
        value = _parse(tallies["EnrollResponse.decode"], EnrollResponse.decode, data)
        if value is not None:
            assert value.encode() == data

    @_settings(EXAMPLES)
    @given(data=hostile([message1], 9000))
    def first_messages(data: bytes) -> None:
        responder = EnrollmentResponder(RELAY.private_bytes())
        _parse(tallies["EnrollmentResponder.read"], responder.read, data)

    def initiator_and_answer() -> tuple[EnrollmentInitiator, bytes]:
        initiator = EnrollmentInitiator(link.private_bytes(), RELAY_PUBLIC)
        responder = EnrollmentResponder(RELAY.private_bytes())
        responder.read(initiator.request(request))
        return initiator, responder.answer(EnrollResponse(cell_id=CELL_ID, name="x"))

    answer = initiator_and_answer()[1]

    @_settings(EXAMPLES)
    @given(data=hostile([answer], 300))
    def second_messages(data: bytes) -> None:
        initiator, _answer = initiator_and_answer()
        _parse(tallies["EnrollmentInitiator.response"], initiator.response, data)

    for run in (code_texts, request_bodies, response_bodies, first_messages, second_messages):
        run()
    for tally in tallies.values():
        assert tally.inputs >= EXAMPLES
    assert tallies["EnrollmentResponder.read"].accepted == 0  # nothing mutated authenticates
    assert tallies["EnrollmentInitiator.response"].accepted == 0
    _record_parsers("enrollment codes, requests and responses", tallies)


# -- a live relay ------------------------------------------------------------------------------


def _in_thread(fn: Callable[[], T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@dataclass
class Live:
    relay: RunningRelay
    target: Target
    cells: dict[str, RawCell]
    pending_code: str  # the enrollment code of a cell left pending, for mutated requests


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with running_relay(tmp_path_factory.mktemp("fuzz-relay"), queue_max_messages=50) as relay:
        target = Target.of(relay)

        async def setup() -> tuple[dict[str, RawCell], str]:
            cells = await provision(target, relay.admin_token, ["fuzzer", "peer"],
                                    [("fuzzer", "peer")])  # fmt: skip
            async with httpx.AsyncClient(base_url=relay.url, timeout=30) as http:
                headers = {"Authorization": f"Bearer {relay.admin_token}"}
                created = await http.post("/admin/cells", json={"name": "pending"},
                                          headers=headers)  # fmt: skip
            return cells, created.json()["enrollment_code"]

        cells, code = _in_thread(lambda: asyncio.run(setup()))
        yield Live(relay, target, cells, code)


def _healthy(url: str) -> None:
    response = httpx.get(f"{url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def _close_code(ws: ClientConnection, timeout: float = 10) -> int | None:
    """Read until the relay closes; its close code (None: no close frame). Anything received
    before the close is returned as a failure by raising."""
    try:
        while True:
            message = ws.recv(timeout)
            raise AssertionError(f"the relay answered garbage with a message: {message!r:.80}")
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


def test_live_link_garbage_before_the_handshake(live: Live) -> None:
    """SPEC.md §6.2, M-LINK-5: a hello that does not authenticate -- random, mutated from a
    real one, truncated, extended, or a text message -- is answered by closing the WebSocket
    with malformed_frame (4000), never by a welcome."""
    hello = LinkInitiator(live.cells["fuzzer"].link_key.private_bytes(),
                          live.target.relay_public).write_hello()  # fmt: skip
    outcomes: Counter[str] = Counter()

    @_settings(LIVE)
    @given(message=st.one_of(hostile([hello], 300).map(lambda b: ("binary", b)),
                     st.text(max_size=200).map(lambda t: ("text", t))))  # fmt: skip
    def garbage(message: tuple[str, bytes | str]) -> None:
        with ws_connect(live.target.ws_url, compression=None, open_timeout=30) as ws:
            ws.send(message[1])
            code = _close_code(ws)
        outcomes[f"{message[0]} -> {code}"] += 1
        assert code == f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]

    garbage()
    _healthy(live.relay.url)
    inputs = sum(outcomes.values())
    assert inputs >= LIVE
    record(SUITE, "live link: garbage before the handshake",
           {"inputs": inputs, "closed_malformed_frame": inputs},
           {"welcomed": 0, "undocumented_close": 0, "healthz_failed": 0})  # fmt: skip


class _LiveLink:
    """A real authenticated link driven synchronously (for use inside hypothesis)."""

    def __init__(self, ws: ClientConnection, cell: RawCell, target: Target) -> None:
        self.ws = ws
        initiator = LinkInitiator(cell.link_key.private_bytes(), target.relay_public)
        self.ws.send(initiator.write_hello())
        welcome = self.ws.recv(30)
        assert isinstance(welcome, bytes)
        assert initiator.read_welcome(welcome)[:16] == cell.cell_id
        self.transport = initiator.transport()
        self.pings = 0
        self.send_frame(f.encode_frame(f.PingFrame(b"liveness")))

    @classmethod
    @contextmanager
    def open(cls, cell: RawCell, target: Target) -> Iterator[_LiveLink]:
        with ws_connect(target.ws_url, compression=None, open_timeout=30, max_size=2**17) as ws:
            yield cls(ws, cell, target)

    def send_frame(self, plaintext: bytes) -> None:
        self.ws.send(self.transport.encrypt(plaintext))

    def sync(self) -> list[f.Frame]:
        """PING and read up to its PONG: every frame the relay sent before it."""
        self.pings += 1
        opaque = self.pings.to_bytes(8, "big")
        self.send_frame(f.encode_frame(f.PingFrame(opaque)))
        frames: list[f.Frame] = []
        while True:
            message = self.ws.recv(30)
            assert isinstance(message, bytes)
            frame = f.decode_frame(self.transport.decrypt(message))
            if isinstance(frame, f.PongFrame) and frame.opaque == opaque:
                return frames
            frames.append(frame)


# What the relay may send a cell (SPEC.md §10 direction column) in answer to anything.
_RELAY_FRAMES = (
    f.AcceptedFrame, f.DeliverFrame, f.BundleFrame, f.PrekeysLowFrame, f.ErrorFrame,
    f.PeerRevokedFrame, f.ExpiredFrame, f.PingFrame, f.PongFrame, f.UploadedFrame, f.PeersFrame,
)  # fmt: skip
_KNOWN_CODES = {code.value for code in f.ErrorCode}


def test_live_link_garbage_after_the_handshake(live: Live) -> None:
    """SPEC.md §10-§11: fuzzed frames inside valid transport messages -- random, mutated
    frames of every type (wrong-direction ones included), requests about random cells -- get
    only documented answers and the link survives; a garbage transport message closes the
    link with malformed_frame (4000)."""
    fuzzer, peer = live.cells["fuzzer"], live.cells["peer"]
    routed = [
        f.encode_frame(f.SendFrame(_envelope(peer.cell_id, 4096))),
        f.encode_frame(f.SendFrame(_envelope(os.urandom(16), 4096))),
        f.encode_frame(f.FetchBundleFrame(1, peer.cell_id)),
        f.encode_frame(f.FetchBundleFrame(2, os.urandom(16))),
    ]
    samples = [f.encode_frame(frame) for frame in FRAME_SAMPLES] + routed
    answers: Counter[str] = Counter()
    inputs = 0

    def fuzz(link: _LiveLink) -> None:
        @_settings(LIVE * 2)
        @given(plaintext=hostile(samples, 5000))
        def frames(plaintext: bytes) -> None:
            nonlocal inputs
            inputs += 1
            link.send_frame(plaintext[: f.MAX_FRAME])
            for frame in link.sync():
                assert isinstance(frame, _RELAY_FRAMES), frame
                if isinstance(frame, f.ErrorFrame):
                    assert frame.code in _KNOWN_CODES, frame
                    assert f.ErrorCode(frame.code) not in _LINK_FATAL, frame
                    answers[f"ERROR {frame.code}"] += 1
                else:
                    answers[type(frame).__name__] += 1

        frames()

    with _LiveLink.open(fuzzer, live.target) as link:
        fuzz(link)
    # Garbage that is not a transport message at all: the link cannot go on (M-LINK-7).
    garbage = 0
    for data in [os.urandom(n) for n in (0, 1, 15, 16, 17, 64, 1000)] * scaled(2, 20):
        with _LiveLink.open(fuzzer, live.target) as link:
            link.ws.send(data)
            assert _drain_to_close(link) == f.CLOSE_CODES[f.ErrorCode.MALFORMED_FRAME]
        garbage += 1
    _healthy(live.relay.url)
    assert inputs >= 2 * LIVE
    record(SUITE, "live link: garbage after the handshake",
           {"fuzzed_frames": inputs, "garbage_transport_messages": garbage}
           | {f"answered {k}": v for k, v in sorted(answers.items())},
           {"undocumented_answer": 0, "link_lost": 0, "healthz_failed": 0})  # fmt: skip


_LINK_FATAL = {f.ErrorCode.REPLACED, f.ErrorCode.REVOKED, f.ErrorCode.SUSPENDED,
               f.ErrorCode.INTERNAL_ERROR}  # fmt: skip


def _drain_to_close(link: _LiveLink) -> int | None:
    try:
        while True:
            link.ws.recv(10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


def _envelope(recipient: bytes, bucket: int) -> bytes:
    routing = Routing(EnvelopeKind.MESSAGE, recipient, os.urandom(16), Precedence.ROUTINE,
                      int(time.time()) + 3600)  # fmt: skip
    head = routing.encode()
    return head + os.urandom(bucket - len(head))


def test_live_enrollment_garbage(live: Live) -> None:
    """SPEC.md §5.4: /v1/enroll answers random bodies, mutated enrollment messages and validly
    encrypted but mutated requests with a 400 problem document, or with an authenticated
    EnrollResponse carrying a documented code -- never a 5xx. The code stays single-use."""
    code = EnrollmentCode.parse(live.pending_code)
    relay_public = live.target.relay_public
    identity = IdentityKeyPair.generate()
    link = X25519KeyPair.generate()
    request = build_request(
        code.secret, identity, bytes(link.public),
        SignedPrekey.create(identity, 1, X25519KeyPair.generate()),
        SignedKemPrekey.create(identity, 2, KemKeyPair.generate()),
        tuple(OneTimePrekey(i, X25519KeyPair.generate().public) for i in (7, 8)),
    )  # fmt: skip
    message1 = EnrollmentInitiator(link.private_bytes(), relay_public).request(request)
    documented = {v for k, v in vars(EnrollError).items() if k.isupper()}
    outcomes: Counter[str] = Counter()

    def encrypted(case: tuple[bytes, int]) -> tuple[HandshakeState, bytes]:
        """Message 1 from the request's own link key (so that a mutation the signatures do
        not cover, e.g. a one-time prekey, can really enroll), with a seeded ephemeral."""
        payload, seed = case
        handshake = HandshakeState(
            "Noise_IK_25519_ChaChaPoly_BLAKE2b", True, prologue=ENROLL_PROLOGUE,
            s=link.private_bytes(), rs=relay_public, rng=StreamRng(seed.to_bytes(8, "big")),
        )  # fmt: skip
        return handshake, handshake.write_message(payload[:60000])

    plain = request.encode()

    def field_flip(case: tuple[tuple[int, int], int, int]) -> bytes:
        """``plain`` with one bit flipped inside one field (SPEC.md §5.4 table): the request
        still parses, so the relay's checks behind the parser (code, signatures, keys) run."""
        (start, end), where, bit = case
        at = start + where % (end - start)
        return plain[:at] + bytes([plain[at] ^ (1 << bit)]) + plain[at + 1 :]

    fields = [(0, 1), (1, 21), (21, 53), (53, 117), (117, 121), (121, 153), (153, 217),
              (217, 221), (221, 1405), (1405, 1469), (1469, 1471), (1471, len(plain))]  # fmt: skip
    flips = st.tuples(st.sampled_from(fields), st.integers(0, 2**16), st.integers(0, 7))

    @_settings(LIVE * 3)
    @given(case=st.one_of(
        hostile([message1], 9000).map(lambda b: (None, b)),
        st.tuples(hostile([plain], 9000), st.integers(0, 2**63)).map(encrypted),
        st.tuples(flips.map(field_flip), st.integers(0, 2**63)).map(encrypted),
    ))  # fmt: skip
    def bodies(case: tuple[HandshakeState | None, bytes]) -> None:
        handshake, body = case
        response = http.post("/v1/enroll", content=body)
        if response.status_code == 400:
            problem = response.json()
            assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
            assert (problem["status"], problem["code"]) == (400, "bad_request")
            outcomes["400 bad_request"] += 1
            return
        assert response.status_code == 200, response.text
        assert handshake is not None, "an unauthenticated message was answered"
        answer = EnrollResponse.decode(handshake.read_message(response.content))
        assert answer.error is None or answer.error in documented, answer
        outcomes[f"200 {answer.error or 'enrolled'}"] += 1

    with httpx.Client(base_url=live.relay.url, timeout=30) as http:
        bodies()
    # The code was live all along: either a mutation the signatures do not cover enrolled the
    # cell (and the code is spent), or the real request enrolls it now -- once.
    expected = "code_used" if outcomes["200 enrolled"] else None
    for attempt in (expected, "code_used"):
        fresh = EnrollmentInitiator(link.private_bytes(), relay_public)
        reply = httpx.post(f"{live.relay.url}/v1/enroll", content=fresh.request(request),
                           timeout=30)  # fmt: skip
        assert fresh.response(reply.content).error == attempt
    assert outcomes["200 enrolled"] <= 1
    _healthy(live.relay.url)
    inputs = sum(outcomes.values())
    assert inputs >= 3 * LIVE
    record(SUITE, "live enrollment endpoint", {"inputs": inputs} | dict(sorted(outcomes.items())),
           {"5xx": 0, "undocumented_answer": 0, "code_reused": 0, "healthz_failed": 0})  # fmt: skip


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),  # what JSON can carry
    st.text(max_size=80),
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_RESERVED = {"fuzzer", "peer", "pending"}  # the other live scenarios' cells: never touched
_names = st.one_of(
    st.sampled_from(["x", "alpha", "bravo", "a" * 64, "a" * 65, "-x", "X", ""]),
    st.text(max_size=70),
).filter(lambda n: n not in _RESERVED)


def _admin_requests() -> st.SearchStrategy[tuple[str, str, Any]]:
    """(method, path, JSON body or raw bytes) against every admin endpoint."""
    extra = st.dictionaries(st.text(max_size=5), _json, max_size=2)
    named = st.builds(lambda n, d: {"name": n} | d, _names, extra)
    pair = st.builds(lambda a, b: {"a": a, "b": b}, _names, _names)
    body = st.one_of(_json, named, pair, st.binary(max_size=200))
    segment = _names.map(lambda n: quote(n, safe="") or "%20")
    token = st.one_of(
        st.integers(2, 10**12).map(str),
        segment.filter(lambda t: not any(c.isdigit() for c in t)),  # never token 1, ours
    )
    operation = st.sampled_from(["codes", "suspend", "resume", "revoke"])
    return st.one_of(
        st.tuples(st.just("POST"),
                  st.sampled_from(["/admin/cells", "/admin/channels", "/admin/tokens"]), body),
        st.tuples(st.just("POST"),
                  st.builds(lambda n, op: f"/admin/cells/{n}/{op}", segment, operation), body),
        st.tuples(st.just("DELETE"),
                  st.builds(lambda a, b: f"/admin/channels/{a}/{b}", segment, segment),
                  st.none()),
        st.tuples(st.just("DELETE"), token.map(lambda t: f"/admin/tokens/{t}"), st.none()),
        st.tuples(st.just("GET"), st.one_of(
            st.just("/admin/cells"),
            segment.map(lambda n: f"/admin/cells/{n}"),
            st.text(max_size=12).map(lambda q: f"/admin/audit?limit={quote(q, safe='')}"),
        ), st.none()),
    )  # fmt: skip


def test_live_admin_json_fuzz(live: Live) -> None:
    """Random JSON (and non-JSON) POSTed to every admin endpoint with a valid token: a 2xx, or
    an RFC 9457 problem whose status the relay's OpenAPI document lists for that operation --
    never a 5xx. Token 1 (the one used) is never revoked by the fuzzer."""
    spec = httpx.get(f"{live.relay.url}/openapi.json", timeout=30).json()
    headers = {"Authorization": f"Bearer {live.relay.admin_token}"}
    statuses: Counter[str] = Counter()
    client = httpx.Client(base_url=live.relay.url, headers=headers, timeout=30)

    @_settings(LIVE * 2)
    @given(case=_admin_requests())
    def requests(case: tuple[str, str, Any]) -> None:
        method, path, body = case
        if isinstance(body, bytes):
            response = client.request(method, path, content=body,
                                      headers={"content-type": "application/json"})  # fmt: skip
        elif body is None:
            response = client.request(method, path)
        else:
            response = client.request(method, path, json=body)
        status = response.status_code
        statuses[f"{method} {status}"] += 1
        assert status < 500, response.text
        if status >= 400:
            problem = response.json()
            assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
            assert problem["status"] == status
            assert problem["type"] == f"urn:liaison:problem:{problem['code']}"
            documented = _documented_statuses(spec, method, path)
            if documented is not None:  # None: the path matched no operation (404 / 405)
                assert str(status) in documented, (method, path, status, documented)
            else:
                assert status in (404, 405), (method, path, status)

    try:
        requests()
    finally:
        client.close()
    assert (httpx.get(f"{live.relay.url}/admin/cells", headers=headers)).status_code == 200
    _healthy(live.relay.url)
    inputs = sum(statuses.values())
    assert inputs >= 2 * LIVE
    record(SUITE, "live admin API: random JSON", {"requests": inputs}
           | dict(sorted(statuses.items())),
           {"5xx": 0, "undocumented_status": 0, "not_a_problem_document": 0})  # fmt: skip


def _documented_statuses(spec: dict[str, Any], method: str, path: str) -> set[str] | None:
    path = httpx.URL(path).path  # decoded, without the query
    for template, operations in spec["paths"].items():
        parts = template.strip("/").split("/")
        given_parts = path.strip("/").split("/")
        if len(parts) != len(given_parts):
            continue
        if all(p.startswith("{") or p == g for p, g in zip(parts, given_parts, strict=True)):
            operation = operations.get(method.lower())
            return None if operation is None else set(operation["responses"])
    return None


# -- schemathesis against the relay's own OpenAPI document ------------------------------------

# Per-operation expectations schemathesis cannot derive from the schema, each with its reason.
_SCHEMATHESIS_CONFIG = """
# A channel joining a cell to itself is schema-valid but refused with 422 (docs/admin.md).
[[operations]]
include-name = "POST /admin/channels"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "401", "403", "404", "409", "422", "429",
]

# A schema-valid body is still not a Noise message encrypted to this relay's key: 400.
[[operations]]
include-name = "POST /v1/enroll"
checks.positive_data_acceptance.expected-statuses = ["200", "400"]
"""


@dataclass
class SchemathesisRun:
    exit_code: int
    output: str
    generated: int
    statuses: Counter[int]
    admin_2xx: int


def _schemathesis(relay: RunningRelay, directory: Path, token: str | None) -> SchemathesisRun:
    config = directory / "schemathesis.toml"
    config.write_text(_SCHEMATHESIS_CONFIG)
    reports = directory / "reports"
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run",
        f"{relay.url}/openapi.json", "--checks", "all", "--workers", "1",
        "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--report", "json,har",
        "--report-dir", str(reports), "--request-timeout", "30", "--no-color",
    ]  # fmt: skip
    if token is not None:
        # The checks that drop the credential on purpose are the no-token run's job. Revoking
        # a token is left out here: schemathesis would revoke its own and spend the rest of
        # the run on 401s (the no-token run and the admin fuzzer above cover that operation).
        command += ["--header", f"Authorization: Bearer {token}",
                    "--exclude-checks", "missing_required_header,ignored_auth",
                    "--exclude-name", "DELETE /admin/tokens/{token_id}"]  # fmt: skip
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True,
                            timeout=900, check=False)  # fmt: skip
    output = result.stdout + result.stderr
    summary = json.loads(next(reports.glob("json-*.json")).read_text())
    entries = json.loads(next(reports.glob("har-*.json")).read_text())["log"]["entries"]
    statuses = Counter(int(e["response"]["status"]) for e in entries)
    admin_2xx = sum(
        1 for e in entries
        if "/admin/" in e["request"]["url"] and 200 <= e["response"]["status"] < 300
    )  # fmt: skip
    return SchemathesisRun(result.returncode, output, summary["test_cases"]["generated"],
                           statuses, admin_2xx)  # fmt: skip


@pytest.mark.parametrize("with_token", [True, False], ids=["admin-token", "no-token"])
def test_schemathesis_against_the_relays_openapi(tmp_path: Path, with_token: bool) -> None:
    """Every operation of /openapi.json, by schemathesis (examples, coverage, fuzzing and
    stateful phases, all checks): no 5xx, every status code, content type, header and body as
    the document says. Without a token nothing under /admin succeeds."""
    with running_relay(tmp_path) as relay:
        run = _schemathesis(relay, tmp_path, relay.admin_token if with_token else None)
        _healthy(relay.url)
    assert run.exit_code == 0, run.output[-6000:]
    server_errors = sum(n for status, n in run.statuses.items() if status >= 500)
    assert server_errors == 0
    requests = sum(run.statuses.values())
    assert requests >= 100, run.output[-3000:]
    if with_token:
        assert run.admin_2xx > 0, "the token opened nothing"
    else:
        assert run.admin_2xx == 0, "an admin operation succeeded without a token"
    record(SUITE, f"schemathesis ({'admin token' if with_token else 'no token'})",
           {"test_cases": run.generated, "requests": requests, "admin_2xx": run.admin_2xx}
           | {f"status_{s}": n for s, n in sorted(run.statuses.items())},
           {"5xx": 0, "schema_violations": 0}
           | ({} if with_token else {"admin_2xx_without_token": 0}))  # fmt: skip
