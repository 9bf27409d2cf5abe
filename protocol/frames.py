"""Link-layer frames: the one message format spoken over a Liaison link (SPEC.md §10 Frames).

Theory of operation
-------------------
Each WebSocket binary message carries one Noise transport message, and the plaintext of that
message is exactly one *frame*: ``type (u8) || body``. This module is pure and sans-I/O: it turns
frame objects into bytes (:func:`encode_frame`) and bytes into frame objects
(:func:`decode_frame`), and does nothing else. It never parses envelopes or prekey bundles;
those travel as opaque bytes and are checked by their own codecs.

Every frame type is a frozen, slotted dataclass. A frame object can only exist if it is valid:
``__post_init__`` checks every length and range and raises :class:`MalformedData` otherwise,
whether the object was built locally or by the decoder. (A locally built invalid frame is a
caller bug, but using one exception keeps the rule "no invalid frame object exists" simple.)

The decoder is strict and canonical: an unknown type, a truncated field, a wrong fixed length,
trailing bytes, a reserved bit set, an out-of-range count or length, bad UTF-8 or a bad error
code all raise :class:`MalformedData` naming the frame and field (never echoing the bytes), and
no other exception type escapes. Any accepted input re-encodes to exactly the same bytes.

Byte layout (all integers big-endian; ``id`` fields are exactly 16 bytes)::

    0x01 SEND            envelope (rest, 1..MAX_ENVELOPE)
    0x02 ACCEPTED        message_id (16) || relay_seq (u64)
    0x03 DELIVER         relay_seq (u64) || sender_cell_id (16) || received_at_ms (u64)
                         || envelope (rest, 1..MAX_ENVELOPE)
    0x04 ACK             relay_seq (u64)
    0x05 FETCH_BUNDLE    request_id (u32) || cell_id (16)
    0x06 BUNDLE          request_id (u32) || flags (u8) || bundle (rest, 1..MAX_BUNDLE)
                         flags bit 0 = no one-time prekey was left; bits 1..7 must be zero
    0x07 UPLOAD_PREKEYS  request_id (u32) || count (u16, 1..200)
                         || count x (prekey_id (u32) || x25519_public (32)); ids unique
    0x08 PREKEYS_LOW     remaining (u32)
    0x09 ERROR           code_len (u8, 1..64) || code ([a-z0-9_]) || ref_len (u8, 0..32)
                         || ref || reason_len (u16, 0..1024) || reason (UTF-8)
    0x0A PEER_REVOKED    cell_id (16)
    0x0B EXPIRED         message_id (16) || recipient_cell_id (16)
    0x0C PING            opaque (8)
    0x0D PONG            opaque (8)
    0x0E UPLOADED        request_id (u32) || stored (u16)
    0x0F LIST_PEERS      request_id (u32)
    0x10 PEERS           request_id (u32) || count (u16, 0..500) || count x (cell_id (16) ||
                         status (u8: 0 pending, 1 active, 2 suspended, 3 revoked) ||
                         identity (32, zeros until enrolled) || name_len (u8) || name (ASCII))
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, Self, TypeAlias, get_args, get_origin, get_type_hints

from liaison.protocol.errors import MalformedData

__all__ = [
    "CLOSE_CODES",
    "ID_LEN",
    "MAX_BUNDLE",
    "MAX_ENVELOPE",
    "MAX_ERROR_CODE_LEN",
    "MAX_ERROR_REASON_LEN",
    "MAX_ERROR_REF_LEN",
    "MAX_FRAME",
    "MAX_PEERS",
    "MAX_PREKEYS_PER_UPLOAD",
    "PEER_STATUSES",
    "PING_LEN",
    "X25519_PUBLIC_LEN",
    "AcceptedFrame",
    "AckFrame",
    "BundleFrame",
    "DeliverFrame",
    "ErrorCode",
    "ErrorFrame",
    "ExpiredFrame",
    "FetchBundleFrame",
    "Frame",
    "FrameType",
    "ListPeersFrame",
    "OneTimePrekey",
    "PeerEntry",
    "PeerRevokedFrame",
    "PeersFrame",
    "PingFrame",
    "PongFrame",
    "PrekeysLowFrame",
    "SendFrame",
    "UploadPrekeysFrame",
    "UploadedFrame",
    "decode_frame",
    "encode_frame",
    "known_code",
]

MAX_FRAME = 65535 - 16
"""Largest frame: the Noise transport message limit minus the 16-byte AEAD tag."""
MAX_ENVELOPE = 65280
"""Largest envelope carried by SEND or DELIVER."""
MAX_BUNDLE = 8192
MAX_PREKEYS_PER_UPLOAD = 200
MAX_ERROR_CODE_LEN = 64
MAX_ERROR_REF_LEN = 32
MAX_ERROR_REASON_LEN = 1024
ID_LEN = 16
PING_LEN = 8
X25519_PUBLIC_LEN = 32

_BUNDLE_FLAG_NO_OTP = 0x01
_CODE_RE = re.compile(rb"[a-z0-9_]+")


class FrameType(enum.IntEnum):
    """The frame type byte."""

    SEND = 0x01
    ACCEPTED = 0x02
    DELIVER = 0x03
    ACK = 0x04
    FETCH_BUNDLE = 0x05
    BUNDLE = 0x06
    UPLOAD_PREKEYS = 0x07
    PREKEYS_LOW = 0x08
    ERROR = 0x09
    PEER_REVOKED = 0x0A
    EXPIRED = 0x0B
    PING = 0x0C
    PONG = 0x0D
    UPLOADED = 0x0E
    LIST_PEERS = 0x0F
    PEERS = 0x10


class ErrorCode(enum.StrEnum):
    """Wire error codes shared by relay and client (the ``code`` of an ERROR frame).

    Each has a WebSocket close code in :data:`CLOSE_CODES`, used when the error ends the link.
    """

    MALFORMED_FRAME = "malformed_frame"
    UNSUPPORTED_VERSION = "unsupported_version"
    ENVELOPE_TOO_LARGE = "envelope_too_large"
    BAD_EXPIRY = "bad_expiry"
    NOT_ENROLLED = "not_enrolled"
    NOT_PAIRED = "not_paired"
    UNKNOWN_CELL = "unknown_cell"
    NO_BUNDLE = "no_bundle"
    REVOKED = "revoked"
    SUSPENDED = "suspended"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    PREKEY_LIMIT = "prekey_limit"
    REPLACED = "replaced"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    INTERNAL_ERROR = "internal_error"


CLOSE_CODES: dict[ErrorCode, int] = {
    # 40xx: the peer broke the wire protocol.
    ErrorCode.MALFORMED_FRAME: 4000,  # a frame or envelope failed to parse
    ErrorCode.UNSUPPORTED_VERSION: 4001,  # a protocol version this side does not speak
    ErrorCode.ENVELOPE_TOO_LARGE: 4002,  # an envelope above the relay's accepted size
    ErrorCode.BAD_EXPIRY: 4003,  # an envelope expiry in the past or too far ahead
    # 41xx: identity, enrolment and pairing.
    ErrorCode.NOT_ENROLLED: 4100,  # the static key is not an enrolled cell
    ErrorCode.NOT_PAIRED: 4101,  # sender and recipient are not paired
    ErrorCode.UNKNOWN_CELL: 4102,  # no such cell id
    ErrorCode.NO_BUNDLE: 4103,  # the cell has published no prekey bundle
    ErrorCode.REVOKED: 4104,  # this cell was revoked: never reconnect
    ErrorCode.SUSPENDED: 4105,  # this cell is suspended by the operator: retry later
    # 42xx: quotas and limits.
    ErrorCode.QUEUE_FULL: 4200,  # the recipient's queue is full
    ErrorCode.RATE_LIMITED: 4201,  # too many frames or connections: back off
    ErrorCode.PREKEY_LIMIT: 4202,  # the upload would exceed the stored prekey limit
    # 43xx: connection lifecycle.
    ErrorCode.REPLACED: 4300,  # the same cell opened a newer connection
    ErrorCode.HANDSHAKE_TIMEOUT: 4301,  # the Noise handshake did not finish in time
    ErrorCode.IDLE_TIMEOUT: 4302,  # no frame (not even PING) within the idle limit
    # 45xx: the relay failed.
    ErrorCode.INTERNAL_ERROR: 4500,  # unexpected server-side failure: retry later
}
"""WebSocket close code (private range 4000-4999) for each error code; the one source of truth.

Per-request errors (``not_paired``, ``unknown_cell``, ``no_bundle``, ``queue_full``, ...) are
normally sent as ERROR frames on a link that stays open; their close codes exist so that any
endpoint that does close because of one uses a consistent number.
"""


def _bad(frame: FrameType, field: str, problem: str) -> MalformedData:
    return MalformedData(f"{frame.name} frame: field {field!r} {problem}")


def _check_uint(frame: FrameType, field: str, value: object, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(frame, field, "must be an int")
    if not 0 <= value < 1 << bits:
        raise _bad(frame, field, f"is out of range for u{bits}")


def _check_type(frame: FrameType, field: str, value: object, kind: type) -> None:
    if not isinstance(value, kind):
        article = "an" if kind.__name__[0].lower() in "aeiou" else "a"
        raise _bad(frame, field, f"must be {article} {kind.__name__}")


def _check_bytes(frame: FrameType, field: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, bytes):
        raise _bad(frame, field, "must be bytes")
    if not lo <= len(value) <= hi:
        size = f"exactly {lo}" if lo == hi else f"{lo}..{hi}"
        raise _bad(frame, field, f"must be {size} bytes, got {len(value)}")


class _Reader:
    """Bounds-checked cursor over one frame body; every failure is a ``MalformedData``."""

    __slots__ = ("_data", "_frame", "_pos")

    def __init__(self, frame: FrameType, data: bytes) -> None:
        self._frame = frame
        self._data = data
        self._pos = 1  # past the type byte

    def take(self, n: int, field: str) -> bytes:
        left = len(self._data) - self._pos
        if n > left:
            raise _bad(self._frame, field, f"is truncated: needs {n} bytes, {left} left")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def bounded(self, size: int, field: str, lo: int, hi: int) -> int:
        value = self.uint(size, field)
        if not lo <= value <= hi:
            raise _bad(self._frame, field, f"must be {lo}..{hi}, got {value}")
        return value

    def rest(self) -> bytes:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out

    def done(self) -> None:
        extra = len(self._data) - self._pos
        if extra:
            raise MalformedData(f"{self._frame.name} frame: {extra} trailing byte(s)")


def _u(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


_UINT, _FIXED, _REST = "uint", "fixed", "rest"


@dataclass(frozen=True, slots=True)
class _Wire:
    """How one field of a :class:`_Layout` frame is encoded: a ``uint`` of ``size`` bytes,
    ``fixed`` bytes of exactly ``size``, or the ``rest`` of the frame (1..``size`` bytes)."""

    kind: str
    size: int


_U16 = Annotated[int, _Wire(_UINT, 2)]
_U32 = Annotated[int, _Wire(_UINT, 4)]
_U64 = Annotated[int, _Wire(_UINT, 8)]
_Id = Annotated[bytes, _Wire(_FIXED, ID_LEN)]
_Opaque = Annotated[bytes, _Wire(_FIXED, PING_LEN)]
_Envelope = Annotated[bytes, _Wire(_REST, MAX_ENVELOPE)]


class _Layout:
    """Mixin for frames that are a plain sequence of fields, in dataclass field order.

    The wire form of each field comes from its ``Annotated`` type (``_U64``, ``_Id``, ...);
    :func:`_bind_layout` collects them into ``LAYOUT`` once, at import time.
    """

    __slots__ = ()
    TYPE: ClassVar[FrameType]
    LAYOUT: ClassVar[tuple[tuple[str, _Wire], ...]] = ()

    def __post_init__(self) -> None:
        for name, wire in self.LAYOUT:
            value = getattr(self, name)
            if wire.kind == _UINT:
                _check_uint(self.TYPE, name, value, 8 * wire.size)
            else:
                low = wire.size if wire.kind == _FIXED else 1
                _check_bytes(self.TYPE, name, value, low, wire.size)

    def _body(self) -> bytes:
        return b"".join(
            _u(getattr(self, name), wire.size) if wire.kind == _UINT else getattr(self, name)
            for name, wire in self.LAYOUT
        )

    @classmethod
    def _parse(cls, r: _Reader) -> Self:
        values = [
            r.uint(wire.size, name)
            if wire.kind == _UINT
            else r.take(wire.size, name)
            if wire.kind == _FIXED
            else r.rest()
            for name, wire in cls.LAYOUT
        ]
        factory: Callable[..., Self] = cls
        return factory(*values)


def _bind_layout(cls: type[_Layout]) -> None:
    layout: list[tuple[str, _Wire]] = []
    for name, hint in get_type_hints(cls, include_extras=True).items():  # in field order
        if get_origin(hint) is ClassVar:
            continue
        wires = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, _Wire)]
        if len(wires) != 1 or any(w.kind == _REST for _, w in layout):
            raise TypeError(f"{cls.__name__}.{name}: bad wire annotation")
        layout.append((name, wires[0]))
    cls.LAYOUT = tuple(layout)


@dataclass(frozen=True, slots=True)
class SendFrame(_Layout):
    """Cell → relay: store and forward this envelope."""

    TYPE: ClassVar[FrameType] = FrameType.SEND
    envelope: _Envelope


@dataclass(frozen=True, slots=True)
class AcceptedFrame(_Layout):
    """Relay → cell: the message was stored durably under ``relay_seq``."""

    TYPE: ClassVar[FrameType] = FrameType.ACCEPTED
    message_id: _Id
    relay_seq: _U64


@dataclass(frozen=True, slots=True)
class DeliverFrame(_Layout):
    """Relay → cell: an envelope from ``sender_cell_id``, queued as ``relay_seq``."""

    TYPE: ClassVar[FrameType] = FrameType.DELIVER
    relay_seq: _U64
    sender_cell_id: _Id
    received_at_ms: _U64
    envelope: _Envelope


@dataclass(frozen=True, slots=True)
class AckFrame(_Layout):
    """Cell → relay: ``relay_seq`` is stored on the cell; the relay may delete it."""

    TYPE: ClassVar[FrameType] = FrameType.ACK
    relay_seq: _U64


@dataclass(frozen=True, slots=True)
class FetchBundleFrame(_Layout):
    """Cell → relay: request the prekey bundle of ``cell_id``."""

    TYPE: ClassVar[FrameType] = FrameType.FETCH_BUNDLE
    request_id: _U32
    cell_id: _Id


@dataclass(frozen=True, slots=True)
class BundleFrame:
    """Relay → cell: the answer to FETCH_BUNDLE; ``bundle`` is parsed by the bundle codec."""

    TYPE: ClassVar[FrameType] = FrameType.BUNDLE
    request_id: int
    no_one_time_prekey: bool
    bundle: bytes

    def __post_init__(self) -> None:
        _check_uint(self.TYPE, "request_id", self.request_id, 32)
        _check_type(self.TYPE, "no_one_time_prekey", self.no_one_time_prekey, bool)
        _check_bytes(self.TYPE, "bundle", self.bundle, 1, MAX_BUNDLE)

    def _body(self) -> bytes:
        flags = _BUNDLE_FLAG_NO_OTP if self.no_one_time_prekey else 0
        return _u(self.request_id, 4) + _u(flags, 1) + self.bundle

    @classmethod
    def _parse(cls, r: _Reader) -> BundleFrame:
        request_id = r.uint(4, "request_id")
        flags = r.uint(1, "flags")
        if flags & ~_BUNDLE_FLAG_NO_OTP:
            raise _bad(cls.TYPE, "flags", "has reserved bits set")
        return cls(request_id, bool(flags), r.rest())


@dataclass(frozen=True, slots=True)
class OneTimePrekey:
    """One entry of UPLOAD_PREKEYS: a prekey id and its X25519 public key."""

    prekey_id: int
    public_key: bytes

    def __post_init__(self) -> None:
        _check_uint(FrameType.UPLOAD_PREKEYS, "prekey_id", self.prekey_id, 32)
        if self.prekey_id == 0xFFFFFFFF:  # reserved: "no one-time prekey" in a setup block
            raise _bad(FrameType.UPLOAD_PREKEYS, "prekey_id", "0xFFFFFFFF is reserved")
        size = X25519_PUBLIC_LEN
        _check_bytes(FrameType.UPLOAD_PREKEYS, "public_key", self.public_key, size, size)


def _check_count(count: int) -> None:
    if not 1 <= count <= MAX_PREKEYS_PER_UPLOAD:
        problem = f"must be 1..{MAX_PREKEYS_PER_UPLOAD}, got {count}"
        raise _bad(FrameType.UPLOAD_PREKEYS, "count", problem)


@dataclass(frozen=True, slots=True)
class UploadPrekeysFrame:
    """Cell → relay: publish 1..200 one-time prekeys with distinct ids."""

    TYPE: ClassVar[FrameType] = FrameType.UPLOAD_PREKEYS
    request_id: int
    prekeys: tuple[OneTimePrekey, ...]

    def __post_init__(self) -> None:
        _check_uint(self.TYPE, "request_id", self.request_id, 32)
        _check_type(self.TYPE, "prekeys", self.prekeys, tuple)
        if not all(isinstance(p, OneTimePrekey) for p in self.prekeys):
            raise _bad(self.TYPE, "prekeys", "must contain only OneTimePrekey")
        _check_count(len(self.prekeys))
        if len({p.prekey_id for p in self.prekeys}) != len(self.prekeys):
            raise _bad(self.TYPE, "prekeys", "has duplicate prekey_id values")

    def _body(self) -> bytes:
        entries = b"".join(_u(p.prekey_id, 4) + p.public_key for p in self.prekeys)
        return _u(self.request_id, 4) + _u(len(self.prekeys), 2) + entries

    @classmethod
    def _parse(cls, r: _Reader) -> UploadPrekeysFrame:
        request_id = r.uint(4, "request_id")
        count = r.uint(2, "count")
        _check_count(count)
        prekeys = tuple(
            OneTimePrekey(r.uint(4, "prekey_id"), r.take(X25519_PUBLIC_LEN, "public_key"))
            for _ in range(count)
        )
        return cls(request_id, prekeys)


@dataclass(frozen=True, slots=True)
class PrekeysLowFrame(_Layout):
    """Relay → cell: only ``remaining`` one-time prekeys are left; upload more."""

    TYPE: ClassVar[FrameType] = FrameType.PREKEYS_LOW
    remaining: _U32


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Either direction: an error ``code`` about ``ref`` (message id, request id or empty).

    ``code`` is a plain ``str`` so that codes from a newer peer still parse; see
    :func:`known_code`. An :class:`ErrorCode` may be passed and is stored as its value.
    """

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: str
    ref: bytes = b""
    reason: str = ""

    def __post_init__(self) -> None:
        _check_type(self.TYPE, "code", self.code, str)
        object.__setattr__(self, "code", str(self.code))  # an ErrorCode becomes a plain str
        if not 1 <= len(self.code) <= MAX_ERROR_CODE_LEN:
            raise _bad(self.TYPE, "code", f"must be 1..{MAX_ERROR_CODE_LEN} characters")
        if not self.code.isascii() or not _CODE_RE.fullmatch(self.code.encode("ascii")):
            raise _bad(self.TYPE, "code", "must contain only [a-z0-9_]")
        _check_bytes(self.TYPE, "ref", self.ref, 0, MAX_ERROR_REF_LEN)
        _check_type(self.TYPE, "reason", self.reason, str)
        try:
            size = len(self.reason.encode("utf-8"))
        except UnicodeEncodeError:
            raise _bad(self.TYPE, "reason", "is not encodable as UTF-8") from None
        if size > MAX_ERROR_REASON_LEN:
            raise _bad(self.TYPE, "reason", f"must be at most {MAX_ERROR_REASON_LEN} bytes")

    def _body(self) -> bytes:
        code, reason = self.code.encode("ascii"), self.reason.encode("utf-8")
        head = _u(len(code), 1) + code + _u(len(self.ref), 1) + self.ref
        return head + _u(len(reason), 2) + reason

    @classmethod
    def _parse(cls, r: _Reader) -> ErrorFrame:
        code = r.take(r.bounded(1, "code_len", 1, MAX_ERROR_CODE_LEN), "code")
        if not _CODE_RE.fullmatch(code):
            raise _bad(cls.TYPE, "code", "must contain only [a-z0-9_]")
        ref = r.take(r.bounded(1, "ref_len", 0, MAX_ERROR_REF_LEN), "ref")
        raw_reason = r.take(r.bounded(2, "reason_len", 0, MAX_ERROR_REASON_LEN), "reason")
        try:
            reason = raw_reason.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(cls.TYPE, "reason", "is not valid UTF-8") from None
        return cls(code.decode("ascii"), ref, reason)


@dataclass(frozen=True, slots=True)
class PeerRevokedFrame(_Layout):
    """Relay → cell: the paired cell ``cell_id`` was revoked."""

    TYPE: ClassVar[FrameType] = FrameType.PEER_REVOKED
    cell_id: _Id


@dataclass(frozen=True, slots=True)
class ExpiredFrame(_Layout):
    """Relay → sender: ``message_id`` expired before ``recipient_cell_id`` fetched it."""

    TYPE: ClassVar[FrameType] = FrameType.EXPIRED
    message_id: _Id
    recipient_cell_id: _Id


@dataclass(frozen=True, slots=True)
class PingFrame(_Layout):
    """Either direction: liveness probe; the peer answers PONG with the same ``opaque``."""

    TYPE: ClassVar[FrameType] = FrameType.PING
    opaque: _Opaque


@dataclass(frozen=True, slots=True)
class PongFrame(_Layout):
    """Either direction: the answer to PING, echoing its ``opaque``."""

    TYPE: ClassVar[FrameType] = FrameType.PONG
    opaque: _Opaque


@dataclass(frozen=True, slots=True)
class UploadedFrame(_Layout):
    """Relay → cell: the answer to UPLOAD_PREKEYS; ``stored`` prekeys were kept."""

    TYPE: ClassVar[FrameType] = FrameType.UPLOADED
    request_id: _U32
    stored: _U16


@dataclass(frozen=True, slots=True)
class ListPeersFrame(_Layout):
    """Cell → relay: which cells share a channel with me?"""

    TYPE: ClassVar[FrameType] = FrameType.LIST_PEERS
    request_id: _U32


PEER_STATUSES = ("pending", "active", "suspended", "revoked")
MAX_PEERS = 500
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One PEERS entry: a paired cell, its status, its identity key (zeros until enrolled)."""

    cell_id: bytes
    status: str
    identity: bytes
    name: str

    def __post_init__(self) -> None:
        t = FrameType.PEERS
        _check_bytes(t, "cell_id", self.cell_id, ID_LEN, ID_LEN)
        if self.status not in PEER_STATUSES:
            raise _bad(t, "status", f"must be one of {PEER_STATUSES}")
        _check_bytes(t, "identity", self.identity, 32, 32)
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise _bad(t, "name", "must be 1..64 characters of [a-z0-9._-], starting [a-z0-9]")

    def _body(self) -> bytes:
        name = self.name.encode("ascii")
        status = PEER_STATUSES.index(self.status)
        return self.cell_id + _u(status, 1) + self.identity + _u(len(name), 1) + name


@dataclass(frozen=True, slots=True)
class PeersFrame:
    """Relay → cell: the answer to LIST_PEERS, at most 500 entries."""

    TYPE: ClassVar[FrameType] = FrameType.PEERS
    request_id: int
    peers: tuple[PeerEntry, ...]

    def __post_init__(self) -> None:
        _check_uint(self.TYPE, "request_id", self.request_id, 32)
        _check_type(self.TYPE, "peers", self.peers, tuple)
        if not all(isinstance(p, PeerEntry) for p in self.peers):
            raise _bad(self.TYPE, "peers", "must contain only PeerEntry")
        if len(self.peers) > MAX_PEERS:
            raise _bad(self.TYPE, "count", f"must be at most {MAX_PEERS}")
        if len({p.cell_id for p in self.peers}) != len(self.peers):
            raise _bad(self.TYPE, "peers", "has duplicate cell ids")

    def _body(self) -> bytes:
        entries = b"".join(p._body() for p in self.peers)
        return _u(self.request_id, 4) + _u(len(self.peers), 2) + entries

    @classmethod
    def _parse(cls, r: _Reader) -> PeersFrame:
        request_id = r.uint(4, "request_id")
        count = r.bounded(2, "count", 0, MAX_PEERS)
        peers = []
        for _ in range(count):
            cell_id = r.take(ID_LEN, "cell_id")
            status = r.bounded(1, "status", 0, len(PEER_STATUSES) - 1)
            identity = r.take(32, "identity")
            name = r.take(r.bounded(1, "name_len", 1, 64), "name")
            try:
                text = name.decode("ascii")
            except UnicodeDecodeError:
                raise _bad(cls.TYPE, "name", "is not ASCII") from None
            peers.append(PeerEntry(cell_id, PEER_STATUSES[status], identity, text))
        return cls(request_id, tuple(peers))


Frame: TypeAlias = (
    SendFrame
    | AcceptedFrame
    | DeliverFrame
    | AckFrame
    | FetchBundleFrame
    | BundleFrame
    | UploadPrekeysFrame
    | PrekeysLowFrame
    | ErrorFrame
    | PeerRevokedFrame
    | ExpiredFrame
    | PingFrame
    | PongFrame
    | UploadedFrame
    | ListPeersFrame
    | PeersFrame
)
"""Any link-layer frame."""

_FRAME_CLASSES: tuple[type[Frame], ...] = get_args(Frame)
_PARSERS: dict[int, Callable[[_Reader], Frame]] = {cls.TYPE: cls._parse for cls in _FRAME_CLASSES}
for _cls in _FRAME_CLASSES:
    if issubclass(_cls, _Layout):
        _bind_layout(_cls)
del _cls


def encode_frame(frame: Frame) -> bytes:
    """Serialize a frame to ``type || body``. The frame was validated when it was built."""
    return bytes((frame.TYPE,)) + frame._body()


def decode_frame(data: bytes) -> Frame:
    """Parse exactly one frame; raise :class:`MalformedData` on anything not canonical."""
    data = bytes(data)
    if not data:
        raise MalformedData("frame: empty, no type byte")
    if len(data) > MAX_FRAME:
        raise MalformedData(f"frame: {len(data)} bytes exceeds MAX_FRAME ({MAX_FRAME})")
    parse = _PARSERS.get(data[0])
    if parse is None:
        raise MalformedData(f"frame: unknown type 0x{data[0]:02x}")
    reader = _Reader(FrameType(data[0]), data)
    frame = parse(reader)
    reader.done()
    return frame


def known_code(frame: ErrorFrame) -> ErrorCode | None:
    """The :class:`ErrorCode` of an ERROR frame, or ``None`` if this version does not know it."""
    try:
        return ErrorCode(frame.code)
    except ValueError:
        return None
