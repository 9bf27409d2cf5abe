"""Envelope, routing header, setup block and body codecs (SPEC.md §9, §7.4), and robustness of every
decoder of relay- or storage-supplied bytes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.protocol.envelope import (
    BUCKETS,
    MAX_ENVELOPE,
    MAX_MARKING,
    ROUTING_LEN,
    SETUP_LEN,
    Body,
    ContentType,
    Envelope,
    EnvelopeKind,
    Precedence,
    Routing,
    SessionSetup,
    body_capacity,
)
from liaison.protocol.errors import (
    LiaisonError,
    MalformedData,
    MessageTooLarge,
    UnsupportedVersion,
)
from liaison.protocol.keys import IdentityKey, IdentityKeyPair, X25519PublicKey
from liaison.protocol.ratchet import HEADER_CIPHERTEXT_LEN, RatchetState
from liaison.protocol.session import PrekeyBundle, Session
from tests.protocol.sessions import (
    make_responder,
    new_pair,
    receive,
    send,
    state_bytes,
)

SEED_01_PUBLIC = bytes.fromhex("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c")

# Routing(PREKEY, recipient 00..0f, message id 10..1f, IMMEDIATE, expires 0x0102030405060708)
ROUTING_HEX = (
    "01"  # version
    "02"  # kind: prekey message
    "000102030405060708090a0b0c0d0e0f"  # recipient cell id
    "101112131415161718191a1b1c1d1e1f"  # message id
    "01"  # precedence: IMMEDIATE
    "0102030405060708"  # expires at
)
ROUTING = Routing(
    EnvelopeKind.PREKEY,
    bytes(range(16)),
    bytes(range(16, 32)),
    Precedence.IMMEDIATE,
    0x0102030405060708,
)

KEM_CT = bytes(range(256)) * 4 + bytes(range(64))
SETUP = SessionSetup(
    IdentityKey(SEED_01_PUBLIC),
    X25519PublicKey(bytes([0x22]) * 32),
    0x01020304,
    0x05060708,
    0x090A0B0C,
    KEM_CT,
)
SETUP_HEAD_HEX = (
    "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"  # identity
    "2222222222222222222222222222222222222222222222222222222222222222"  # ephemeral
    "01020304"  # signed prekey id
    "05060708"  # KEM prekey id
)

BODY = Body(ContentType.TEXT, 0x0102030405060708, 0x1112131415161718, b"hi", "NATO SECRET")
BODY_HEX = (
    "01"  # content type TEXT
    "00"  # flags
    "0102030405060708"  # channel sequence number
    "1112131415161718"  # sent at (ms)
    "000b"  # marking length
    "4e41544f20534543524554"  # "NATO SECRET"
    "00000002"  # payload length
    "6869"  # payload
)
BODY_FIXED = 20 + 4  # head + payload length field


def _message_envelope_bytes() -> bytes:
    """A 4096-byte MESSAGE envelope with patterned crypto fields."""
    routing = Routing(
        EnvelopeKind.MESSAGE, bytes(range(16)), bytes(range(16, 32)), Precedence.ROUTINE, 99
    )
    body_len = 4096 - ROUTING_LEN - 24 - HEADER_CIPHERTEXT_LEN
    return Envelope(
        routing,
        None,
        bytes([0x33]) * 24,
        bytes([0x44]) * HEADER_CIPHERTEXT_LEN,
        bytes([0x55]) * body_len,
    ).encode()


def _with(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1 :]


# --- routing header ---------------------------------------------------------------------------


def test_routing_encode_literal() -> None:
    """SPEC.md §9.1: the 43-byte routing header, big-endian, field by field."""
    assert ROUTING.encode() == bytes.fromhex(ROUTING_HEX)
    assert len(bytes.fromhex(ROUTING_HEX)) == ROUTING_LEN == 43


@pytest.mark.parametrize("bucket", BUCKETS)
def test_routing_decode_literal(bucket: int) -> None:
    """SPEC.md §9.1: the relay parses the routing header from a whole bucket-sized envelope."""
    data = bytes.fromhex(ROUTING_HEX) + bytes(bucket - ROUTING_LEN)
    assert Routing.decode(data) == ROUTING


def test_routing_rejects_bad_field_lengths() -> None:
    """SPEC.md §9.1: cell ids and message ids are 16 bytes; expiry is a 63-bit unix time."""
    with pytest.raises(MalformedData):
        Routing(EnvelopeKind.MESSAGE, bytes(15), bytes(16), Precedence.FLASH, 0)
    with pytest.raises(MalformedData):
        Routing(EnvelopeKind.MESSAGE, bytes(16), bytes(17), Precedence.FLASH, 0)
    with pytest.raises(MalformedData):
        Routing(EnvelopeKind.MESSAGE, bytes(16), bytes(16), Precedence.FLASH, -1)
    with pytest.raises(MalformedData):
        Routing(EnvelopeKind.MESSAGE, bytes(16), bytes(16), Precedence.FLASH, 2**63)


# --- setup block ------------------------------------------------------------------------------


def test_session_setup_literal_with_one_time_prekey() -> None:
    """SPEC.md §7.4: identity || ephemeral || spk id || kem id || otk id || KEM ciphertext."""
    expected = bytes.fromhex(SETUP_HEAD_HEX + "090a0b0c") + KEM_CT
    assert len(expected) == SETUP_LEN == 1164
    assert SETUP.encode() == expected
    assert SessionSetup.decode(expected) == SETUP


def test_session_setup_literal_without_one_time_prekey() -> None:
    """SPEC.md §7.4: "no one-time prekey" is encoded as id 0xFFFFFFFF."""
    setup = SessionSetup(SETUP.identity, SETUP.ephemeral, 0x01020304, 0x05060708, None, KEM_CT)
    expected = bytes.fromhex(SETUP_HEAD_HEX + "ffffffff") + KEM_CT
    assert setup.encode() == expected
    decoded = SessionSetup.decode(expected)
    assert decoded == setup
    assert decoded.one_time_prekey_id is None


def test_session_setup_rejects_bad_values() -> None:
    """SPEC.md §7.4 [M-SES-5]: wrong length, reserved prekey ids and a short KEM ciphertext are
    MalformedData."""
    encoded = SETUP.encode()
    for bad in (encoded[:-1], encoded + b"\x00", b""):
        with pytest.raises(MalformedData):
            SessionSetup.decode(bad)
    for offset in (64, 68):  # signed prekey id, KEM prekey id = 0xFFFFFFFF
        with pytest.raises(MalformedData):
            SessionSetup.decode(encoded[:offset] + b"\xff" * 4 + encoded[offset + 4 :])
    with pytest.raises(MalformedData):
        SessionSetup(SETUP.identity, SETUP.ephemeral, 1, 2, None, KEM_CT[:-1])


# --- body -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EnvelopeKind))
def test_body_encode_literal_and_padding(kind: EnvelopeKind) -> None:
    """SPEC.md §9.2: body layout, zero-padded to the capacity of the smallest bucket."""
    capacity = body_capacity(kind, BUCKETS[0])
    assert capacity == (1685 if kind == EnvelopeKind.MESSAGE else 521)
    unpadded = bytes.fromhex(BODY_HEX)
    encoded = BODY.encode(kind)
    assert encoded == unpadded + bytes(capacity - len(unpadded))
    assert Body.decode(encoded) == BODY


def test_body_capacity_table() -> None:
    """SPEC.md §9.2: body capacity is bucket - 2411 (MESSAGE) or bucket - 3575 (PREKEY)."""
    table = {
        4096: (1685, 521),
        8192: (5781, 4617),
        16384: (13973, 12809),
        32768: (30357, 29193),
        65280: (62869, 61705),
    }
    assert tuple(table) == BUCKETS
    for bucket, (message, prekey) in table.items():
        assert body_capacity(EnvelopeKind.MESSAGE, bucket) == message == bucket - 2411
        assert body_capacity(EnvelopeKind.PREKEY, bucket) == prekey == bucket - 3575


@pytest.mark.parametrize("kind", list(EnvelopeKind))
def test_body_bucket_boundaries(kind: EnvelopeKind) -> None:
    """SPEC.md §9.2: a body fills exactly one bucket; one byte more moves to the next bucket."""
    for i, bucket in enumerate(BUCKETS):
        capacity = body_capacity(kind, bucket)
        fits = Body(ContentType.FILE_CHUNK, 1, 2, bytes(capacity - BODY_FIXED)).encode(kind)
        assert len(fits) == capacity
        if i + 1 < len(BUCKETS):
            over = Body(ContentType.FILE_CHUNK, 1, 2, bytes(capacity - BODY_FIXED + 1))
            assert len(over.encode(kind)) == body_capacity(kind, BUCKETS[i + 1])


@pytest.mark.parametrize("kind", list(EnvelopeKind))
@pytest.mark.parametrize("marking", ["", "SECRET//REL TO NATO"])
def test_message_too_large(kind: EnvelopeKind, marking: str) -> None:
    """SPEC.md §9.2: a payload that cannot fit the 65280-byte bucket is MessageTooLarge
    (a ValueError); the largest payload that fits does."""
    largest = body_capacity(kind, MAX_ENVELOPE) - BODY_FIXED - len(marking.encode())
    if kind == EnvelopeKind.MESSAGE and not marking:
        assert largest == 62845
    assert len(Body(ContentType.TEXT, 1, 0, bytes(largest), marking).encode(kind)) == (
        body_capacity(kind, MAX_ENVELOPE)
    )
    with pytest.raises(MessageTooLarge) as info:
        Body(ContentType.TEXT, 1, 0, bytes(largest + 1), marking).encode(kind)
    assert isinstance(info.value, ValueError)


def test_seal_message_too_large_leaves_session_unchanged() -> None:
    """SPEC.md §9.2: Session.seal raises MessageTooLarge before touching any state; the
    channel sequence number is not consumed."""
    pair = new_pair()
    receive(pair.alice, send(pair.bob, b"reply"))  # Alice now sends MESSAGE envelopes
    largest = body_capacity(EnvelopeKind.MESSAGE, MAX_ENVELOPE) - BODY_FIXED
    before = state_bytes(pair.alice)
    with pytest.raises(MessageTooLarge):
        send(pair.alice, bytes(largest + 1))
    assert state_bytes(pair.alice) == before
    data = send(pair.alice, bytes(largest))
    assert len(data) == MAX_ENVELOPE
    body = Envelope.decode(data)
    opened = pair.bob.open(body)
    assert opened.payload == bytes(largest)
    assert opened.seq == 2  # "hello bob" was 1: no gap


@pytest.mark.parametrize(
    ("message_id", "expires_at"),
    [(bytes(15), 0), (bytes(17), 0), (bytes(16), -1), (bytes(16), 2**63)],
    ids=["id-15", "id-17", "expiry-negative", "expiry-2**63"],
)
def test_seal_rejects_bad_routing_fields_without_state_change(
    message_id: bytes, expires_at: int
) -> None:
    """SPEC.md §9.1 [M-ENV-1]: Session.seal refuses a message id that is not 16 bytes or an
    expiry outside 0..2**63-1 (a LiaisonError), before touching the session."""
    pair = new_pair()
    before = state_bytes(pair.alice)
    with pytest.raises(LiaisonError):
        send(pair.alice, b"x", message_id=message_id, expires_at=expires_at)
    assert state_bytes(pair.alice) == before
    assert receive(pair.bob, send(pair.alice, b"ok")) == b"ok"


@pytest.mark.parametrize("payload_len", [0, 1, 1600, 1700, 8000, 40000])
def test_sealed_envelope_length_is_a_bucket(payload_len: int) -> None:
    """SPEC.md §9.1: every envelope is exactly one of the size buckets."""
    pair = new_pair()
    for session in (pair.alice, pair.bob):
        data = send(session, bytes(payload_len))
        assert len(data) in BUCKETS
        kind = Routing.decode(data).kind
        smallest = min(b for b in BUCKETS if body_capacity(kind, b) >= payload_len + BODY_FIXED)
        assert len(data) == smallest
        receive(pair.bob if session is pair.alice else pair.alice, data)


def _body_raw(
    *,
    ctype: int = 1,
    flags: int = 0,
    marking: bytes = b"",
    marking_len: int | None = None,
    payload: bytes = b"abc",
    payload_len: int | None = None,
    pad: int = 100,
) -> bytes:
    head = struct.pack(
        ">BBQQH", ctype, flags, 1, 2, len(marking) if marking_len is None else marking_len
    )
    length = len(payload) if payload_len is None else payload_len
    return head + marking + struct.pack(">I", length) + payload + bytes(pad)


def test_body_decode_accepts_the_helper_layout() -> None:
    """SPEC.md §9.2: sanity check of the raw-body builder used below."""
    assert Body.decode(_body_raw(marking=b"M")) == Body(ContentType.TEXT, 1, 2, b"abc", "M")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_body_raw()[:-1] + b"\x01", id="last-padding-byte"),
        pytest.param(_body_raw(pad=1)[:-1] + b"\x80", id="first-padding-byte"),
        pytest.param(_body_raw(pad=0) + b"\x00\x00\xff\x00", id="middle-padding-byte"),
        pytest.param(_body_raw(flags=1), id="flags-1"),
        pytest.param(_body_raw(flags=0x80), id="flags-0x80"),
        pytest.param(_body_raw(ctype=0), id="content-type-0"),
        pytest.param(_body_raw(ctype=7), id="content-type-7"),  # 6 is FILE (§9.4)
        pytest.param(_body_raw(ctype=255), id="content-type-255"),
        pytest.param(_body_raw(marking=b"\xff\xfe"), id="marking-not-utf8"),
        pytest.param(_body_raw(marking=b"ok\xc3"), id="marking-truncated-utf8"),
        pytest.param(_body_raw(marking=b"\xed\xa0\x80"), id="marking-surrogate"),
        pytest.param(_body_raw(marking=b"m" * 257), id="marking-257"),
        pytest.param(_body_raw(marking=b"", marking_len=0xFFFF), id="marking-len-65535"),
        pytest.param(_body_raw(marking=b"m" * 10, marking_len=200, pad=0), id="marking-past-end"),
        pytest.param(_body_raw(payload_len=104), id="payload-len-overflow-by-1"),
        pytest.param(_body_raw(payload_len=0xFFFFFFFF), id="payload-len-max"),
        pytest.param(_body_raw()[:25], id="truncated-in-payload"),
        pytest.param(_body_raw()[:22], id="truncated-in-payload-length"),
        pytest.param(_body_raw()[:19], id="truncated-head"),
        pytest.param(b"", id="empty"),
    ],
)
def test_body_decode_rejects(raw: bytes) -> None:
    """SPEC.md §9.2: non-zero padding, flags != 0, unknown content type, bad UTF-8 marking,
    marking > 256 bytes, and lengths past the end are all MalformedData."""
    with pytest.raises(MalformedData):
        Body.decode(raw)


def test_body_marking_limits() -> None:
    """SPEC.md §9.2: the marking is at most 256 bytes of UTF-8 (bytes, not characters)."""
    assert (
        Body.decode(
            Body(ContentType.TEXT, 1, 0, b"", "m" * MAX_MARKING).encode(EnvelopeKind.MESSAGE)
        ).marking
        == "m" * MAX_MARKING
    )
    assert Body.decode(_body_raw(marking=b"m" * 256)).marking == "m" * 256
    with pytest.raises(MalformedData):
        Body(ContentType.TEXT, 1, 0, b"", "m" * (MAX_MARKING + 1))
    with pytest.raises(MalformedData):
        Body(ContentType.TEXT, 1, 0, b"", "é" * 129)  # 129 characters, 258 bytes


def test_body_marking_not_encodable_raises_liaison_error() -> None:
    """SPEC.md §9.2 [M-ENV-6] / errors.py ("every error ... derives from LiaisonError"): a
    marking that cannot be encoded as UTF-8 (a lone surrogate) is MalformedData, like a marking
    over 256 bytes — not a bare UnicodeEncodeError — both for Body and for Session.seal, which
    then leaves the session unchanged."""
    with pytest.raises(MalformedData):
        Body(ContentType.TEXT, 1, 0, b"", "\ud800")
    pair = new_pair()
    before = state_bytes(pair.alice)
    with pytest.raises(MalformedData):
        send(pair.alice, b"payload", marking="SECRET \udcff")
    assert state_bytes(pair.alice) == before


def test_body_rejects_out_of_range_counters() -> None:
    """SPEC.md §9.2: the sequence number and timestamp are unsigned 64-bit."""
    for seq, sent in ((-1, 0), (2**64, 0), (0, -1), (0, 2**64)):
        with pytest.raises(MalformedData):
            Body(ContentType.TEXT, seq, sent, b"")


# --- envelope ---------------------------------------------------------------------------------


def test_envelope_literal_message() -> None:
    """SPEC.md §9.1: routing || nonce || encrypted header || encrypted body, 4096 bytes."""
    data = _message_envelope_bytes()
    expected = (
        bytes.fromhex(
            "0101000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f030000000000000063"
        )
        + bytes([0x33]) * 24
        + bytes([0x44]) * 2328
        + bytes([0x55]) * 1701
    )
    assert data == expected
    envelope = Envelope.decode(data)
    assert envelope.setup is None
    assert envelope.routing.kind == EnvelopeKind.MESSAGE
    assert envelope.header_nonce == bytes([0x33]) * 24
    assert envelope.header_ciphertext == bytes([0x44]) * 2328
    assert envelope.body_ciphertext == bytes([0x55]) * 1701
    assert envelope.associated_data() == data[:ROUTING_LEN]
    assert envelope.encode() == data


def test_envelope_literal_prekey() -> None:
    """SPEC.md §9.1: a prekey envelope carries the setup block right after the routing header,
    and both are associated data."""
    body_len = 4096 - ROUTING_LEN - SETUP_LEN - 24 - HEADER_CIPHERTEXT_LEN
    assert body_len == 537
    envelope = Envelope(ROUTING, SETUP, bytes(24), bytes(HEADER_CIPHERTEXT_LEN), bytes(body_len))
    data = envelope.encode()
    assert data[:ROUTING_LEN] == bytes.fromhex(ROUTING_HEX)
    assert data[ROUTING_LEN : ROUTING_LEN + SETUP_LEN] == SETUP.encode()
    assert envelope.associated_data() == data[: ROUTING_LEN + SETUP_LEN]
    assert Envelope.decode(data) == envelope


def test_envelope_rejects_inconsistent_fields() -> None:
    """SPEC.md §9.1: setup block with (and only with) kind 2; fixed nonce/header lengths;
    the body holds at least its tag; the total is a bucket."""
    message = Routing(EnvelopeKind.MESSAGE, bytes(16), bytes(16), Precedence.ROUTINE, 0)
    header = bytes(HEADER_CIPHERTEXT_LEN)
    with pytest.raises(MalformedData):
        Envelope(message, SETUP, bytes(24), header, bytes(16))
    with pytest.raises(MalformedData):
        Envelope(ROUTING, None, bytes(24), header, bytes(16))
    with pytest.raises(MalformedData):
        Envelope(message, None, bytes(23), header, bytes(16))
    with pytest.raises(MalformedData):
        Envelope(message, None, bytes(24), header[:-1], bytes(16))
    with pytest.raises(MalformedData):
        Envelope(message, None, bytes(24), header, bytes(15))
    with pytest.raises(MalformedData):
        Envelope(message, None, bytes(24), header, bytes(16)).encode()


@pytest.mark.parametrize(
    "length", [0, 1, 42, 43, 4095, 4097, 8191, 8193, 16383, 32769, 65279, 65281, 65536, 131072]
)
def test_envelope_length_not_a_bucket(length: int) -> None:
    """SPEC.md §9.1: an envelope whose length is not one of BUCKETS is MalformedData."""
    data = (_message_envelope_bytes() * 32)[:length]
    with pytest.raises(MalformedData):
        Envelope.decode(data)
    with pytest.raises(MalformedData):
        Routing.decode(data)


@pytest.mark.parametrize("version", [0, 2, 3, 0x7F, 0xFF])
def test_envelope_unsupported_version(version: int) -> None:
    """SPEC.md §9.1: a version byte other than 1 is UnsupportedVersion."""
    with pytest.raises(UnsupportedVersion):
        Envelope.decode(_with(_message_envelope_bytes(), 0, version))


@pytest.mark.parametrize("kind", [0, 3, 4, 0x81, 0xFF])
def test_envelope_unknown_kind(kind: int) -> None:
    """SPEC.md §9.1: kinds other than 1 and 2 are MalformedData (not a version error)."""
    with pytest.raises(MalformedData) as info:
        Envelope.decode(_with(_message_envelope_bytes(), 1, kind))
    assert type(info.value) is MalformedData


@pytest.mark.parametrize("precedence", [4, 5, 0x80, 0xFF])
def test_envelope_unknown_precedence(precedence: int) -> None:
    """SPEC.md §9.1: precedence 4 and above is MalformedData."""
    with pytest.raises(MalformedData) as info:
        Envelope.decode(_with(_message_envelope_bytes(), 34, precedence))
    assert type(info.value) is MalformedData


def test_envelope_expiry_above_63_bits() -> None:
    """SPEC.md §9.1: an expiry with the top bit set is MalformedData."""
    with pytest.raises(MalformedData):
        Envelope.decode(_with(_message_envelope_bytes(), 35, 0x80))


@pytest.mark.parametrize("precedence", list(Precedence))
def test_envelope_all_precedences_decode(precedence: Precedence) -> None:
    """SPEC.md §9.1: FLASH(0) .. ROUTINE(3) are the precedences."""
    assert Routing.decode(_with(_message_envelope_bytes(), 34, precedence)).precedence is (
        precedence
    )


# --- hypothesis round trips -------------------------------------------------------------------


def _expand(seed: bytes, n: int) -> bytes:
    return hashlib.shake_256(seed).digest(n)


routings = st.builds(
    Routing,
    st.sampled_from(EnvelopeKind),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    st.sampled_from(Precedence),
    st.integers(0, 2**63 - 1),
)
prekey_ids = st.integers(0, 0xFFFFFFFE)
setups = st.builds(
    SessionSetup,
    st.builds(lambda seed: IdentityKeyPair(seed).public, st.binary(min_size=32, max_size=32)),
    st.builds(X25519PublicKey, st.binary(min_size=32, max_size=32)),
    prekey_ids,
    prekey_ids,
    st.none() | prekey_ids,
    st.builds(lambda seed: _expand(seed, 1088), st.binary(min_size=8, max_size=8)),
)
markings = st.text(max_size=80).filter(lambda m: len(m.encode()) <= MAX_MARKING)
bodies = st.builds(
    Body,
    st.sampled_from(ContentType),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=2000),
    markings,
)


@settings(max_examples=60, deadline=None)
@given(routing=routings, bucket=st.sampled_from(BUCKETS), filler=st.integers(0, 255))
def test_routing_round_trip(routing: Routing, bucket: int, filler: int) -> None:
    """SPEC.md §9.1: decode(encode(r) || anything up to a bucket) == r."""
    encoded = routing.encode()
    assert len(encoded) == ROUTING_LEN
    assert Routing.decode(encoded + bytes([filler]) * (bucket - ROUTING_LEN)) == routing


@settings(max_examples=40, deadline=None)
@given(setup=setups)
def test_session_setup_round_trip(setup: SessionSetup) -> None:
    """SPEC.md §7.4: decode(encode(s)) == s and the encoding is 1164 bytes."""
    encoded = setup.encode()
    assert len(encoded) == SETUP_LEN
    assert SessionSetup.decode(encoded) == setup


@settings(max_examples=60, deadline=None)
@given(body=bodies, kind=st.sampled_from(EnvelopeKind))
def test_body_round_trip(body: Body, kind: EnvelopeKind) -> None:
    """SPEC.md §9.2: decode(encode(b)) == b; the encoding fills the smallest fitting bucket."""
    encoded = body.encode(kind)
    unpadded = BODY_FIXED + len(body.marking.encode()) + len(body.payload)
    smallest = min(b for b in BUCKETS if body_capacity(kind, b) >= unpadded)
    assert len(encoded) == body_capacity(kind, smallest)
    assert encoded[unpadded:] == bytes(len(encoded) - unpadded)
    assert Body.decode(encoded) == body


@settings(max_examples=40, deadline=None)
@given(
    routing=routings,
    setup=setups,
    bucket=st.sampled_from(BUCKETS),
    seed=st.binary(min_size=8, max_size=8),
)
def test_envelope_round_trip(
    routing: Routing, setup: SessionSetup, bucket: int, seed: bytes
) -> None:
    """SPEC.md §9.1: decode(encode(e)) == e for every kind and bucket."""
    block = setup if routing.kind == EnvelopeKind.PREKEY else None
    body_len = bucket - ROUTING_LEN - (SETUP_LEN if block else 0) - 24 - HEADER_CIPHERTEXT_LEN
    stream = _expand(seed, 24 + HEADER_CIPHERTEXT_LEN + body_len)
    envelope = Envelope(
        routing,
        block,
        stream[:24],
        stream[24 : 24 + HEADER_CIPHERTEXT_LEN],
        stream[24 + HEADER_CIPHERTEXT_LEN :],
    )
    data = envelope.encode()
    assert len(data) == bucket
    assert Envelope.decode(data) == envelope
    assert Routing.decode(data) == routing


# --- decoders never raise anything but LiaisonError -------------------------------------------


def _prekey_bundle_samples() -> list[bytes]:
    return [make_responder(one_time=flag).bundle().encode() for flag in (True, False)]


@functools.cache
def _samples() -> dict[str, list[bytes]]:
    """Valid encodings for every decoder, from a real conversation."""
    pair = new_pair()
    prekey_env = send(pair.alice, b"second")  # still a prekey envelope
    alice_ahead = [send(pair.alice, b"a%d" % i) for i in range(3)]
    receive(pair.bob, alice_ahead[2])  # Bob keeps two skipped keys
    reply = send(pair.bob, b"reply", marking="RESTRICTED")
    alice_before_reply = state_bytes(pair.alice)
    receive(pair.alice, reply)
    message_env = send(pair.alice, b"x" * 5000)
    envelopes = [pair.first, prekey_env, reply, message_env]
    decoded = [Envelope.decode(e) for e in envelopes]
    bodies = [
        Body(ContentType.JSON, 3, 4, b"{}", "M").encode(EnvelopeKind.MESSAGE),
        Body(ContentType.RECEIPT, 5, 6, b"", "").encode(EnvelopeKind.PREKEY),
    ]
    sessions = [alice_before_reply, state_bytes(pair.alice), state_bytes(pair.bob)]
    return {
        "Envelope.decode": envelopes,
        "Routing.decode": envelopes,
        "Body.decode": bodies,
        "SessionSetup.decode": [e.setup.encode() for e in decoded if e.setup is not None],
        "PrekeyBundle.decode": _prekey_bundle_samples(),
        "RatchetState.from_bytes": [
            Session.from_bytes(s).ratchet.state.to_bytes() for s in sessions
        ],
        "Session.from_bytes": sessions,
    }


DECODERS: dict[str, Callable[[bytes], object]] = {
    "Envelope.decode": Envelope.decode,
    "Routing.decode": Routing.decode,
    "Body.decode": Body.decode,
    "SessionSetup.decode": SessionSetup.decode,
    "PrekeyBundle.decode": PrekeyBundle.decode,
    "RatchetState.from_bytes": RatchetState.from_bytes,
    "Session.from_bytes": Session.from_bytes,
}


def _only_liaison_errors(decoder: Callable[[bytes], object], data: bytes) -> None:
    # LiaisonError is the only acceptable failure; anything else propagates and fails the test.
    with contextlib.suppress(LiaisonError):
        decoder(data)


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoders_accept_their_samples(name: str) -> None:
    """SPEC.md §5.3, §7.4, §8.8, §9: the valid samples used for mutation do decode."""
    for sample in _samples()[name]:
        DECODERS[name](sample)


@pytest.mark.parametrize("name", list(DECODERS))
@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=300) | st.binary(min_size=4000, max_size=4200))
def test_decoders_on_arbitrary_bytes(name: str, data: bytes) -> None:
    """SPEC.md §5.3, §7.4, §8.8, §9: arbitrary bytes raise only LiaisonError subclasses."""
    _only_liaison_errors(DECODERS[name], data)


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.binary(max_size=1300),
    bucket=st.sampled_from(BUCKETS),
    version_kind=st.sampled_from([b"\x01\x01", b"\x01\x02", b""]),
)
def test_envelope_decoders_on_bucket_sized_garbage(
    prefix: bytes, bucket: int, version_kind: bytes
) -> None:
    """SPEC.md §9.1: bucket-sized garbage (valid-looking version/kind or not) raises only
    LiaisonError subclasses."""
    data = (version_kind + prefix)[:bucket]
    data += bytes(bucket - len(data))
    _only_liaison_errors(Envelope.decode, data)
    _only_liaison_errors(Routing.decode, data)


@st.composite
def _mutations(draw: st.DrawFn, base: bytes) -> bytes:
    op = draw(st.sampled_from(["truncate", "flip", "append", "overwrite", "delete", "set"]))
    if op == "truncate":
        return base[: draw(st.integers(0, len(base) - 1))]
    if op == "append":
        return base + draw(st.binary(min_size=1, max_size=64))
    index = draw(st.integers(0, len(base) - 1))
    if op == "flip":
        return base[:index] + bytes([base[index] ^ draw(st.integers(1, 255))]) + base[index + 1 :]
    if op == "set":
        return (
            base[:index]
            + bytes([draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF]))])
            + (base[index + 1 :])
        )
    if op == "delete":
        return base[:index] + base[index + draw(st.integers(1, 64)) :]
    chunk = draw(st.binary(min_size=1, max_size=16))
    return base[:index] + chunk + base[index + len(chunk) :]


@pytest.mark.parametrize("name", list(DECODERS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_decoders_on_mutated_valid_encodings(name: str, data: st.DataObject) -> None:
    """SPEC.md §5.3, §7.4, §8.8, §9: truncations, byte changes, insertions and appended bytes of
    valid encodings raise only LiaisonError subclasses (never IndexError, struct.error, ...)."""
    base = data.draw(st.sampled_from(_samples()[name]))
    _only_liaison_errors(DECODERS[name], data.draw(_mutations(base)))
