"""Link-layer frame codecs (SPEC.md §10 Frames): literal vectors, strictness, properties."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.protocol.errors import MalformedData
from liaison.protocol.frames import (
    CLOSE_CODES,
    MAX_BUNDLE,
    MAX_ENVELOPE,
    MAX_ERROR_REASON_LEN,
    MAX_FRAME,
    MAX_PREKEYS_PER_UPLOAD,
    AcceptedFrame,
    AckFrame,
    BundleFrame,
    DeliverFrame,
    ErrorCode,
    ErrorFrame,
    ExpiredFrame,
    FetchBundleFrame,
    Frame,
    FrameType,
    ListPeersFrame,
    OneTimePrekey,
    PeerEntry,
    PeerRevokedFrame,
    PeersFrame,
    PingFrame,
    PongFrame,
    PrekeysLowFrame,
    SendFrame,
    UploadedFrame,
    UploadPrekeysFrame,
    decode_frame,
    encode_frame,
    known_code,
)

ID_A = bytes(range(0x10))  # 000102...0f
ID_B = bytes(range(0x10, 0x20))  # 101112...1f
KEY_1 = b"\x11" * 32
KEY_2 = b"\x22" * 32

# (id, wire bytes written out by hand with a space between fields, the frame they mean).
# Never produced by the encoder.
VECTORS: list[tuple[str, str, Frame]] = [
    ("send", "01 c0ffee", SendFrame(b"\xc0\xff\xee")),
    ("send-min", "01 42", SendFrame(b"B")),
    (
        "accepted",
        "02 000102030405060708090a0b0c0d0e0f 0102030405060708",
        AcceptedFrame(ID_A, 0x0102030405060708),
    ),
    (
        "deliver",
        "03 ffffffffffffffff 000102030405060708090a0b0c0d0e0f 0000018bcfe56800 abcd",
        DeliverFrame(2**64 - 1, ID_A, 1_700_000_000_000, b"\xab\xcd"),
    ),
    (
        "deliver-min",
        "03 0000000000000000 101112131415161718191a1b1c1d1e1f 0000000000000000 00",
        DeliverFrame(0, ID_B, 0, b"\x00"),
    ),
    ("ack", "04 0000000000000000", AckFrame(0)),
    ("ack-max", "04 ffffffffffffffff", AckFrame(2**64 - 1)),
    (
        "fetch-bundle",
        "05 deadbeef 101112131415161718191a1b1c1d1e1f",
        FetchBundleFrame(0xDEADBEEF, ID_B),
    ),
    ("bundle-no-otp", "06 00000007 01 62756e646c65", BundleFrame(7, True, b"bundle")),
    ("bundle-min", "06 00000000 00 ff", BundleFrame(0, False, b"\xff")),
    (
        "upload-prekeys",
        "07 00000009 0002"
        " 00000001 1111111111111111111111111111111111111111111111111111111111111111"
        " fffffffe 2222222222222222222222222222222222222222222222222222222222222222",
        UploadPrekeysFrame(9, (OneTimePrekey(1, KEY_1), OneTimePrekey(0xFFFFFFFE, KEY_2))),
    ),
    (
        "upload-prekeys-one",
        "07 00000000 0001"
        " 00000000 1111111111111111111111111111111111111111111111111111111111111111",
        UploadPrekeysFrame(0, (OneTimePrekey(0, KEY_1),)),
    ),
    ("prekeys-low", "08 00000005", PrekeysLowFrame(5)),
    (
        "error",
        "09 0a 71756575655f66756c6c 04 0000002a 0003 68c3a9",
        ErrorFrame("queue_full", b"\x00\x00\x00\x2a", "hé"),
    ),
    ("error-min", "09 01 78 00 0000", ErrorFrame("x")),
    (
        "error-msg-ref",
        "09 07 7265766f6b6564 10 000102030405060708090a0b0c0d0e0f 0000",
        ErrorFrame("revoked", ID_A),
    ),
    ("peer-revoked", "0a 000102030405060708090a0b0c0d0e0f", PeerRevokedFrame(ID_A)),
    (
        "expired",
        "0b 000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
        ExpiredFrame(ID_A, ID_B),
    ),
    ("ping", "0c 0102030405060708", PingFrame(b"\x01\x02\x03\x04\x05\x06\x07\x08")),
    ("pong", "0d 0102030405060708", PongFrame(b"\x01\x02\x03\x04\x05\x06\x07\x08")),
    ("uploaded", "0e 00000009 00c8", UploadedFrame(9, 200)),
    ("list-peers", "0f 0000002a", ListPeersFrame(42)),
    ("peers-empty", "10 00000007 0000", PeersFrame(7, ())),
    (
        "peers-one",
        "10 00000007 0001 000102030405060708090a0b0c0d0e0f 03"
        " 1111111111111111111111111111111111111111111111111111111111111111 01 61",
        PeersFrame(7, (PeerEntry(ID_A, "revoked", b"\x11" * 32, "a"),)),
    ),
]
VECTOR_IDS = [v[0] for v in VECTORS]
VECTOR_CASES = [(bytes.fromhex(h), f) for _, h, f in VECTORS]


def _rest(frame: Frame) -> bytes | None:
    """The trailing variable-length field of a frame, or ``None`` for a fully delimited frame."""
    if isinstance(frame, SendFrame | DeliverFrame):
        return frame.envelope
    if isinstance(frame, BundleFrame):
        return frame.bundle
    return None


# --- literal vectors --------------------------------------------------------------------------


def test_vectors_cover_every_frame_type() -> None:
    """SPEC.md §10 Frames: every frame type has at least one literal vector."""
    assert {type(f).TYPE for _, _, f in VECTORS} == set(FrameType)


@pytest.mark.parametrize(("data", "frame"), VECTOR_CASES, ids=VECTOR_IDS)
def test_decode_literal(data: bytes, frame: Frame) -> None:
    """SPEC.md §10 Frames: the literal bytes decode to the expected frame object."""
    assert decode_frame(data) == frame


@pytest.mark.parametrize(("data", "frame"), VECTOR_CASES, ids=VECTOR_IDS)
def test_encode_literal(data: bytes, frame: Frame) -> None:
    """SPEC.md §10 Frames: the frame object encodes to exactly the literal bytes."""
    assert encode_frame(frame) == data
    assert data[0] == type(frame).TYPE


# --- strictness -------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "frame"), VECTOR_CASES, ids=VECTOR_IDS)
def test_every_truncation_rejected(data: bytes, frame: Frame) -> None:
    """SPEC.md §10 Frames: every prefix shorter than the frame is malformed.

    For frames ending in a variable "rest" field, the prefixes that cut into the fixed part or
    leave the rest field empty are malformed (longer prefixes are valid, shorter frames).
    """
    rest = _rest(frame)
    limit = len(data) if rest is None else len(data) - len(rest) + 1
    for n in range(limit):
        with pytest.raises(MalformedData):
            decode_frame(data[:n])


@pytest.mark.parametrize(("data", "frame"), VECTOR_CASES, ids=VECTOR_IDS)
def test_trailing_byte_rejected(data: bytes, frame: Frame) -> None:
    """SPEC.md §10 Frames: one trailing byte is malformed (rest fields: past their maximum)."""
    if isinstance(frame, SendFrame):
        data = b"\x01" + b"\x00" * MAX_ENVELOPE
    elif isinstance(frame, DeliverFrame):
        data = data[: 1 + 8 + 16 + 8] + b"\x00" * MAX_ENVELOPE
    elif isinstance(frame, BundleFrame):
        data = data[: 1 + 4 + 1] + b"\x00" * MAX_BUNDLE
    decode_frame(data)  # still valid at the maximum
    with pytest.raises(MalformedData):
        decode_frame(data + b"\x00")


@pytest.mark.parametrize("data", ["", "00", "11", "ff", "1100000000", "800102"])
def test_unknown_or_missing_type_rejected(data: str) -> None:
    """SPEC.md §10 Frames: an empty frame or an unknown type byte is malformed."""
    with pytest.raises(MalformedData, match="frame"):
        decode_frame(bytes.fromhex(data))


def test_frame_larger_than_max_frame_rejected() -> None:
    """SPEC.md §10 Frames: nothing longer than MAX_FRAME is parsed."""
    assert MAX_FRAME == 65519
    with pytest.raises(MalformedData, match="MAX_FRAME"):
        decode_frame(b"\x01" + b"\x00" * MAX_FRAME)


def test_send_envelope_bounds() -> None:
    """SPEC.md §10 Frames: SEND needs an envelope of 1..MAX_ENVELOPE bytes."""
    with pytest.raises(MalformedData, match="SEND frame: field 'envelope'"):
        decode_frame(bytes.fromhex("01"))
    assert decode_frame(b"\x01" + b"\xee" * MAX_ENVELOPE) == SendFrame(b"\xee" * MAX_ENVELOPE)
    with pytest.raises(MalformedData, match="envelope"):
        decode_frame(b"\x01" + b"\xee" * (MAX_ENVELOPE + 1))
    with pytest.raises(MalformedData):
        SendFrame(b"")
    with pytest.raises(MalformedData):
        SendFrame(b"\xee" * (MAX_ENVELOPE + 1))


@pytest.mark.parametrize(
    "body",
    [
        "0002 c328",  # bad continuation byte
        "0001 ff",  # never valid in UTF-8
        "0003 eda080",  # an encoded surrogate
        "0002 c0af",  # overlong encoding of "/"
        "0001 c3",  # truncated sequence
    ],
)
def test_error_reason_bad_utf8_rejected(body: str) -> None:
    """SPEC.md §10 Frames: an ERROR reason must be valid UTF-8; the bytes are not echoed."""
    with pytest.raises(MalformedData, match="ERROR frame: field 'reason'") as exc:
        decode_frame(bytes.fromhex(f"09 01 78 00 {body}"))
    assert "\\x" not in str(exc.value)
    assert exc.value.__cause__ is None


@pytest.mark.parametrize(
    ("code", "field"),
    [
        ("01 51", "'code'"),  # "Q": uppercase
        ("04 51554555", "'code'"),  # "QUEU"
        ("03 712075", "'code'"),  # "q u": space
        ("01 2d", "'code'"),  # "-"
        ("02 c3a9", "'code'"),  # "é": not ASCII
        ("01 00", "'code'"),  # NUL
        ("00", "'code_len'"),  # empty code
        ("41 " + "61" * 65, "'code_len'"),  # 65 characters
    ],
)
def test_error_code_charset_and_length(code: str, field: str) -> None:
    """SPEC.md §10 Frames: an ERROR code is 1..64 characters of [a-z0-9_]."""
    with pytest.raises(MalformedData, match=f"ERROR frame: field {field}"):
        decode_frame(bytes.fromhex(f"09 {code} 00 0000"))


def test_error_length_limits() -> None:
    """SPEC.md §10 Frames: ERROR ref is at most 32 bytes, reason at most 1024 bytes."""
    code = "40 " + "61" * 64  # 64 characters: the maximum
    assert decode_frame(bytes.fromhex(f"09 {code} 00 0000")) == ErrorFrame("a" * 64)
    frame = decode_frame(bytes.fromhex("09 01 78 20" + " 00" * 32 + " 0000"))
    assert isinstance(frame, ErrorFrame)
    assert frame.ref == bytes(32)
    with pytest.raises(MalformedData, match="'ref_len'"):
        decode_frame(bytes.fromhex("09 01 78 21" + " 00" * 33 + " 0000"))
    reason = "0400 " + "61" * 1024
    assert decode_frame(bytes.fromhex(f"09 01 78 00 {reason}")) == ErrorFrame(
        "x", reason="a" * 1024
    )
    with pytest.raises(MalformedData, match="'reason_len'"):
        decode_frame(bytes.fromhex("09 01 78 00 0401 " + "61" * 1025))


@pytest.mark.parametrize("flags", ["02", "03", "80", "ff", "fe"])
def test_bundle_reserved_flag_bits_rejected(flags: str) -> None:
    """SPEC.md §10 Frames: BUNDLE flags bits 1..7 are reserved and must be zero."""
    with pytest.raises(MalformedData, match="BUNDLE frame: field 'flags'"):
        decode_frame(bytes.fromhex(f"06 00000001 {flags} aa"))


def test_bundle_size_bounds() -> None:
    """SPEC.md §10 Frames: a BUNDLE carries 1..8192 bundle bytes."""
    with pytest.raises(MalformedData, match="'bundle'"):
        decode_frame(bytes.fromhex("06 00000001 00"))
    with pytest.raises(MalformedData, match="'bundle'"):
        BundleFrame(1, False, b"\x00" * (MAX_BUNDLE + 1))


def _prekey_entries(count: int) -> str:
    return "".join(f" {i:08x} " + "33" * 32 for i in range(count))


def test_upload_prekeys_count_bounds() -> None:
    """SPEC.md §10 Frames: UPLOAD_PREKEYS count is 1..200."""
    with pytest.raises(MalformedData, match="UPLOAD_PREKEYS frame: field 'count'"):
        decode_frame(bytes.fromhex("07 00000001 0000"))
    frame = decode_frame(bytes.fromhex("07 00000001 00c8" + _prekey_entries(200)))
    assert isinstance(frame, UploadPrekeysFrame)
    assert len(frame.prekeys) == MAX_PREKEYS_PER_UPLOAD
    with pytest.raises(MalformedData, match="'count'"):
        decode_frame(bytes.fromhex("07 00000001 00c9" + _prekey_entries(201)))
    with pytest.raises(MalformedData, match="'count'"):
        decode_frame(bytes.fromhex("07 00000001 ffff"))


def test_upload_prekeys_count_mismatch() -> None:
    """SPEC.md §10 Frames: the count must match the number of entries exactly."""
    with pytest.raises(MalformedData, match="truncated"):
        decode_frame(bytes.fromhex("07 00000001 0002" + _prekey_entries(1)))
    with pytest.raises(MalformedData, match="trailing"):
        decode_frame(bytes.fromhex("07 00000001 0001" + _prekey_entries(2)))


def test_upload_prekeys_duplicate_ids_rejected() -> None:
    """SPEC.md §10 Frames: prekey ids within one upload are distinct."""
    entry = " 00000007 " + "33" * 32
    with pytest.raises(MalformedData, match="duplicate"):
        decode_frame(bytes.fromhex("07 00000001 0002" + entry + entry))


# --- construction-time validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: AcceptedFrame(ID_A[:15], 0), "ACCEPTED frame: field 'message_id'"),
        (lambda: AcceptedFrame(ID_A, -1), "ACCEPTED frame: field 'relay_seq'"),
        (lambda: AckFrame(2**64), "ACK frame: field 'relay_seq'"),
        (lambda: AckFrame(True), "must be an int"),
        (lambda: DeliverFrame(0, ID_A + b"\x00", 0, b"e"), "'sender_cell_id'"),
        (lambda: FetchBundleFrame(2**32, ID_A), "FETCH_BUNDLE frame: field 'request_id'"),
        (lambda: PeerRevokedFrame(bytearray(ID_A)), "must be bytes"),  # type: ignore[arg-type]
        (lambda: PingFrame(b"\x00" * 7), "PING frame: field 'opaque'"),
        (lambda: PongFrame(b"\x00" * 9), "PONG frame: field 'opaque'"),
        (lambda: UploadedFrame(0, 2**16), "UPLOADED frame: field 'stored'"),
        (lambda: PrekeysLowFrame(-1), "PREKEYS_LOW frame: field 'remaining'"),
        (lambda: BundleFrame(0, 1, b"b"), "'no_one_time_prekey'"),  # type: ignore[arg-type]
        (lambda: OneTimePrekey(0, KEY_1[:31]), "'public_key'"),
        (lambda: UploadPrekeysFrame(0, ()), "'count'"),
        (lambda: UploadPrekeysFrame(0, [OneTimePrekey(0, KEY_1)]), "'prekeys'"),  # type: ignore[arg-type]
        (lambda: ErrorFrame(""), "'code'"),
        (lambda: ErrorFrame("Queue_full"), "'code'"),
        (lambda: ErrorFrame("é"), "'code'"),
        (lambda: ErrorFrame("x" * 65), "'code'"),
        (lambda: ErrorFrame("x", b"\x00" * 33), "'ref'"),
        (lambda: ErrorFrame("x", reason="\ud800"), "'reason'"),
        (lambda: ErrorFrame("x", reason="é" * 513), "'reason'"),
    ],
)
def test_invalid_frames_cannot_be_built(build: Callable[[], object], match: str) -> None:
    """SPEC.md §10 Frames: a frame object exists only if it is valid (MalformedData otherwise)."""
    with pytest.raises(MalformedData, match=match):
        build()


def test_error_code_enum_stored_as_plain_str() -> None:
    """SPEC.md §10 Frames: ErrorFrame.code is a str; known_code maps it back to ErrorCode."""
    frame = ErrorFrame(ErrorCode.QUEUE_FULL, reason="x" * MAX_ERROR_REASON_LEN)
    assert type(frame.code) is str
    assert frame == decode_frame(encode_frame(frame))
    assert known_code(frame) is ErrorCode.QUEUE_FULL
    assert known_code(ErrorFrame("from_a_newer_peer_2")) is None


def test_error_messages_do_not_echo_bytes() -> None:
    """SPEC.md §10 Frames: errors name frame and field, never the offending bytes."""
    secret = b"\x9f\x8e" * 8
    with pytest.raises(MalformedData) as exc:
        decode_frame(b"\x03" + b"\x00" * 8 + secret[:15])
    message = str(exc.value)
    assert message.startswith("DELIVER frame: field 'sender_cell_id'")
    assert secret[:4].hex() not in message
    assert "\\x9f" not in message


# --- close codes ------------------------------------------------------------------------------


def test_close_codes_complete_distinct_and_private() -> None:
    """SPEC.md §10 Frames: every ErrorCode has one distinct close code in 4000..4999."""
    assert set(CLOSE_CODES) == set(ErrorCode)
    assert len(set(CLOSE_CODES.values())) == len(CLOSE_CODES)
    assert all(4000 <= code <= 4999 for code in CLOSE_CODES.values())
    for code in ErrorCode:  # every wire code is a valid ERROR frame code
        assert decode_frame(encode_frame(ErrorFrame(code))) == ErrorFrame(code.value)


# --- properties -------------------------------------------------------------------------------

_ids = st.binary(min_size=16, max_size=16)
_u16 = st.integers(0, 2**16 - 1)
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)
_envelopes = st.binary(min_size=1, max_size=MAX_ENVELOPE)
_opaque = st.binary(min_size=8, max_size=8)
_prekeys = st.lists(
    st.builds(OneTimePrekey, st.integers(0, 2**32 - 2), st.binary(min_size=32, max_size=32)),
    min_size=1,
    max_size=MAX_PREKEYS_PER_UPLOAD,
    unique_by=lambda p: p.prekey_id,
).map(tuple)

STRATEGIES: dict[FrameType, st.SearchStrategy[Frame]] = {
    FrameType.SEND: st.builds(SendFrame, _envelopes),
    FrameType.ACCEPTED: st.builds(AcceptedFrame, _ids, _u64),
    FrameType.DELIVER: st.builds(DeliverFrame, _u64, _ids, _u64, _envelopes),
    FrameType.ACK: st.builds(AckFrame, _u64),
    FrameType.FETCH_BUNDLE: st.builds(FetchBundleFrame, _u32, _ids),
    FrameType.BUNDLE: st.builds(
        BundleFrame, _u32, st.booleans(), st.binary(min_size=1, max_size=MAX_BUNDLE)
    ),
    FrameType.UPLOAD_PREKEYS: st.builds(UploadPrekeysFrame, _u32, _prekeys),
    FrameType.PREKEYS_LOW: st.builds(PrekeysLowFrame, _u32),
    FrameType.ERROR: st.builds(
        ErrorFrame,
        st.from_regex(r"[a-z0-9_]{1,64}", fullmatch=True),
        st.binary(max_size=32),
        st.text(max_size=MAX_ERROR_REASON_LEN // 4),  # ≤ 4 UTF-8 bytes per character
    ),
    FrameType.PEER_REVOKED: st.builds(PeerRevokedFrame, _ids),
    FrameType.EXPIRED: st.builds(ExpiredFrame, _ids, _ids),
    FrameType.PING: st.builds(PingFrame, _opaque),
    FrameType.PONG: st.builds(PongFrame, _opaque),
    FrameType.UPLOADED: st.builds(UploadedFrame, _u32, _u16),
    FrameType.LIST_PEERS: st.builds(ListPeersFrame, _u32),
    FrameType.PEERS: st.builds(
        PeersFrame,
        _u32,
        st.lists(
            st.builds(
                PeerEntry,
                _ids,
                st.sampled_from(["pending", "active", "suspended", "revoked"]),
                st.binary(min_size=32, max_size=32),
                st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True),
            ),
            max_size=5,
            unique_by=lambda p: p.cell_id,
        ).map(tuple),
    ),
}
_any_frame = st.one_of(*STRATEGIES.values())


def _decodes_canonically_or_rejects(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except MalformedData:
        return
    assert encode_frame(frame) == data


def test_strategies_cover_every_frame_type() -> None:
    """SPEC.md §10 Frames: the property tests generate every frame type."""
    assert set(STRATEGIES) == set(FrameType)


@pytest.mark.parametrize("frame_type", list(FrameType), ids=[t.name for t in FrameType])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_round_trip(frame_type: FrameType, data: st.DataObject) -> None:
    """SPEC.md §10 Frames: decode(encode(frame)) == frame for generated valid frames."""
    frame = data.draw(STRATEGIES[frame_type])
    wire = encode_frame(frame)
    assert wire[0] == frame_type
    assert len(wire) <= MAX_FRAME
    assert decode_frame(wire) == frame


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_rejected_or_canonical(data: bytes) -> None:
    """SPEC.md §10 Frames: arbitrary bytes raise only MalformedData or decode canonically."""
    _decodes_canonically_or_rejects(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(FrameType)), st.binary(max_size=2000))
def test_typed_garbage_rejected_or_canonical(frame_type: FrameType, body: bytes) -> None:
    """SPEC.md §10 Frames: a known type byte followed by garbage parses strictly."""
    _decodes_canonically_or_rejects(bytes([frame_type]) + body)


@settings(max_examples=300, deadline=None)
@given(_any_frame, st.data())
def test_mutated_frames_rejected_or_canonical(frame: Frame, data: st.DataObject) -> None:
    """SPEC.md §10 Frames: a valid frame with one byte changed, cut or added parses strictly."""
    wire = bytearray(encode_frame(frame))
    index = data.draw(st.integers(0, len(wire)))
    action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    byte = data.draw(st.integers(0, 255))
    if action == "insert":
        wire.insert(index, byte)
    elif index < len(wire):
        if action == "delete":
            del wire[index]
        else:
            wire[index] = byte
    _decodes_canonically_or_rejects(bytes(wire))


def test_upload_prekeys_reserved_id_refused() -> None:
    """SPEC.md §10, M-FRM-4: prekey id 0xFFFFFFFF means "none" in a setup block, so it can
    never be uploaded, built or decoded."""
    with pytest.raises(MalformedData, match="reserved"):
        OneTimePrekey(0xFFFFFFFF, KEY_1)
    data = bytes.fromhex("07 00000009 0001 ffffffff".replace(" ", "")) + bytes.fromhex("11" * 32)
    with pytest.raises(MalformedData, match="reserved"):
        decode_frame(data)


def test_list_peers_and_peers_literal_bytes() -> None:
    """SPEC.md §10: LIST_PEERS and PEERS, both directions, against literal bytes."""
    assert decode_frame(bytes.fromhex("0f0000002a")) == ListPeersFrame(42)
    assert encode_frame(ListPeersFrame(42)) == bytes.fromhex("0f0000002a")
    entry = PeerEntry(bytes(range(16)), "active", b"\x11" * 32, "fr-paris")
    wire = (
        bytes.fromhex("10000000070001000102030405060708090a0b0c0d0e0f01" + "11" * 32 + "08")
        + b"fr-paris"
    )
    assert encode_frame(PeersFrame(7, (entry,))) == wire
    assert decode_frame(wire) == PeersFrame(7, (entry,))
    assert decode_frame(bytes.fromhex("10000000070000")) == PeersFrame(7, ())


@pytest.mark.parametrize(
    "wire",
    [
        "10 00000007 0001 000102030405060708090a0b0c0d0e0f 04" + "11" * 32 + "01 61",  # status
        "10 00000007 0001 000102030405060708090a0b0c0d0e0f 01" + "11" * 32 + "00",  # empty name
        "10 00000007 0001 000102030405060708090a0b0c0d0e0f 01" + "11" * 32 + "01 41",  # 'A'
        "10 00000007 01f5",  # count 501
        "10 00000007 0001 0001",  # truncated entry
    ],
)
def test_peers_strictness(wire: str) -> None:
    with pytest.raises(MalformedData):
        decode_frame(bytes.fromhex(wire.replace(" ", "")))
