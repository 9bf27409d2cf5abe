"""The end-to-end envelope and the body inside it (SPEC.md §9).

Theory of operation: an envelope is what a cell hands the relay. Its first 43 bytes, the
*routing header*, are the only part the relay reads (recipient, message id, precedence,
expiry); they are also bound into the associated data of both end-to-end AEADs, so a relay that
alters any of them makes the message undecryptable. The rest is opaque to the relay: an optional
session-setup block (first messages of a session), the encrypted ratchet header and the
encrypted body. Every envelope is exactly one of ``BUCKETS`` bytes long, so its length tells
an observer only a size class; the padding lives inside the encrypted body and must be zero.

Envelope layout (big-endian)::

    off  len   field
    0    1     version (1)
    1    1     kind: 1 = message, 2 = prekey message (carries the setup block)
    2    16    recipient cell id
    18   16    message id (random, chosen by the sender)
    34   1     precedence: 0 FLASH, 1 IMMEDIATE, 2 PRIORITY, 3 ROUTINE
    35   8     expires at (unix seconds)
    43   1164  setup block, only when kind = 2 (see ``SessionSetup``)
    ..   24    header nonce (also the body nonce: the two keys differ)
    ..   2328  encrypted ratchet header (2312 + 16-byte tag)
    ..   rest  encrypted body (at least 16 bytes)

Body plaintext (inside the AEAD)::

    0    1     content type (``ContentType``)
    1    1     flags (must be 0)
    2    8     channel sequence number (per sender -> recipient, from 1; gaps reveal drops)
    10   8     sent at (unix milliseconds, sender's clock)
    18   2     marking length M (<= 256): classification / releasability marking, UTF-8
    20   M     marking
    ..   4     payload length P
    ..   P     payload
    ..   rest  zero padding up to the bucket
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from liaison.protocol import primitives as p
from liaison.protocol.errors import MalformedData, MessageTooLarge, UnsupportedVersion
from liaison.protocol.keys import IdentityKey, X25519PublicKey

__all__ = [
    "BUCKETS",
    "CELL_ID_LEN",
    "MAX_ENVELOPE",
    "MAX_MARKING",
    "MESSAGE_ID_LEN",
    "NO_ONE_TIME_PREKEY",
    "ROUTING_LEN",
    "SETUP_LEN",
    "VERSION",
    "Body",
    "ContentType",
    "Envelope",
    "EnvelopeKind",
    "Precedence",
    "Routing",
    "SessionSetup",
    "body_capacity",
]

VERSION = 1
CELL_ID_LEN = 16
MESSAGE_ID_LEN = 16
MAX_ENVELOPE = 65280
BUCKETS = (4096, 8192, 16384, 32768, MAX_ENVELOPE)
MAX_MARKING = 256
NO_ONE_TIME_PREKEY = 0xFFFFFFFF

# The encrypted ratchet header: dh (32) || kem public (1184) || kem ciphertext (1088) ||
# pn (4) || n (4), plus the tag. (ratchet.HEADER_CIPHERTEXT_LEN is the same; a test checks it.)
HEADER_CIPHERTEXT_LEN = (
    p.X25519_LEN + p.MLKEM768_PUBLIC_LEN + p.MLKEM768_CIPHERTEXT_LEN + 8 + p.AEAD_TAG_LEN
)
_ROUTING = struct.Struct(">BB16s16sBQ")
ROUTING_LEN = _ROUTING.size
_SETUP = struct.Struct(">32s32sIII1088s")
SETUP_LEN = _SETUP.size
_BODY_HEAD = struct.Struct(">BBQQH")
_U32 = struct.Struct(">I")
BODY_OVERHEAD = _BODY_HEAD.size + _U32.size
_CRYPTO_OVERHEAD = p.XCHACHA_NONCE_LEN + HEADER_CIPHERTEXT_LEN + p.AEAD_TAG_LEN
_MAX_EXPIRY = 2**63 - 1


class EnvelopeKind(enum.IntEnum):
    MESSAGE = 1
    PREKEY = 2


class Precedence(enum.IntEnum):
    """Allied message precedence; lower values are delivered first."""

    FLASH = 0
    IMMEDIATE = 1
    PRIORITY = 2
    ROUTINE = 3


class ContentType(enum.IntEnum):
    TEXT = 1
    JSON = 2
    RECEIPT = 3
    FILE_CHUNK = 4
    CONTROL = 5
    FILE = 6
    """A whole small file with its name (SPEC.md §9.4)."""


@dataclass(frozen=True, slots=True)
class Routing:
    """The relay-visible routing header."""

    kind: EnvelopeKind
    recipient: bytes
    message_id: bytes
    precedence: Precedence
    expires_at: int

    def __post_init__(self) -> None:
        if len(self.recipient) != CELL_ID_LEN:
            raise MalformedData(f"recipient cell id must be {CELL_ID_LEN} bytes")
        if len(self.message_id) != MESSAGE_ID_LEN:
            raise MalformedData(f"message id must be {MESSAGE_ID_LEN} bytes")
        if not 0 <= self.expires_at <= _MAX_EXPIRY:
            raise MalformedData("expiry must be a non-negative 63-bit unix time")

    def encode(self) -> bytes:
        return _ROUTING.pack(VERSION, self.kind, self.recipient, self.message_id,
                             self.precedence, self.expires_at)  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Routing:
        """Parse the routing header of a whole envelope (what the relay does).

        Checks the version, the kind, the precedence and that the total length is a bucket.
        """
        if len(data) not in BUCKETS:
            raise MalformedData(
                f"envelope length {len(data)} is not one of the size buckets {BUCKETS}"
            )
        version, kind, recipient, message_id, precedence, expires_at = _ROUTING.unpack_from(data)
        if version != VERSION:
            raise UnsupportedVersion(f"envelope version {version} is not supported")
        if kind not in (1, 2):
            raise MalformedData(f"envelope kind {kind} is unknown")
        if precedence > Precedence.ROUTINE:
            raise MalformedData(f"precedence {precedence} is unknown")
        return cls(EnvelopeKind(kind), recipient, message_id, Precedence(precedence), expires_at)


@dataclass(frozen=True, slots=True)
class SessionSetup:
    """The initiator's session-setup data, sent until the responder first replies."""

    identity: IdentityKey
    ephemeral: X25519PublicKey
    signed_prekey_id: int
    kem_prekey_id: int
    one_time_prekey_id: int | None
    kem_ciphertext: bytes

    def __post_init__(self) -> None:
        if len(self.kem_ciphertext) != p.MLKEM768_CIPHERTEXT_LEN:
            raise MalformedData("setup KEM ciphertext must be 1088 bytes")
        for value in (self.signed_prekey_id, self.kem_prekey_id, self.one_time_prekey_id):
            if value is not None and not 0 <= value < NO_ONE_TIME_PREKEY:
                raise MalformedData("prekey ids must be in 0..2**32-2")

    def encode(self) -> bytes:
        otk = NO_ONE_TIME_PREKEY if self.one_time_prekey_id is None else self.one_time_prekey_id
        return _SETUP.pack(bytes(self.identity), bytes(self.ephemeral), self.signed_prekey_id,
                           self.kem_prekey_id, otk, self.kem_ciphertext)  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> SessionSetup:
        if len(data) != SETUP_LEN:
            raise MalformedData(f"setup block must be {SETUP_LEN} bytes")
        identity, ephemeral, spk_id, kem_id, otk_id, kem_ct = _SETUP.unpack(data)
        return cls(IdentityKey(identity), X25519PublicKey(ephemeral), spk_id, kem_id,
                   None if otk_id == NO_ONE_TIME_PREKEY else otk_id, kem_ct)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Envelope:
    routing: Routing
    setup: SessionSetup | None
    header_nonce: bytes
    header_ciphertext: bytes
    body_ciphertext: bytes

    def __post_init__(self) -> None:
        if (self.setup is None) != (self.routing.kind == EnvelopeKind.MESSAGE):
            raise MalformedData("a setup block goes with, and only with, a prekey envelope")
        if len(self.header_nonce) != p.XCHACHA_NONCE_LEN:
            raise MalformedData("header nonce must be 24 bytes")
        if len(self.header_ciphertext) != HEADER_CIPHERTEXT_LEN:
            raise MalformedData(f"encrypted header must be {HEADER_CIPHERTEXT_LEN} bytes")
        if len(self.body_ciphertext) < p.AEAD_TAG_LEN:
            raise MalformedData("encrypted body is shorter than its tag")

    def associated_data(self) -> bytes:
        """The envelope part of the AEAD associated data: routing header and setup block."""
        setup = self.setup.encode() if self.setup is not None else b""
        return self.routing.encode() + setup

    def encode(self) -> bytes:
        data = (self.associated_data() + self.header_nonce + self.header_ciphertext
                + self.body_ciphertext)  # fmt: skip
        if len(data) not in BUCKETS:
            raise MalformedData(f"envelope length {len(data)} is not a size bucket")
        return data

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        routing = Routing.decode(data)
        offset = ROUTING_LEN
        setup = None
        if routing.kind == EnvelopeKind.PREKEY:
            setup = SessionSetup.decode(data[offset : offset + SETUP_LEN])
            offset += SETUP_LEN
        nonce_end = offset + p.XCHACHA_NONCE_LEN
        header_end = nonce_end + HEADER_CIPHERTEXT_LEN
        return cls(routing, setup, data[offset:nonce_end], data[nonce_end:header_end],
                   data[header_end:])  # fmt: skip


def body_capacity(kind: EnvelopeKind, bucket: int) -> int:
    """The body plaintext length that fills an envelope of ``bucket`` bytes."""
    setup = SETUP_LEN if kind == EnvelopeKind.PREKEY else 0
    return bucket - ROUTING_LEN - setup - _CRYPTO_OVERHEAD


@dataclass(frozen=True, slots=True)
class Body:
    """The decrypted body: content type, ordering data, marking and payload."""

    content_type: ContentType
    seq: int
    sent_at_ms: int
    payload: bytes
    marking: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.seq < 2**64 or not 0 <= self.sent_at_ms < 2**64:
            raise MalformedData("sequence number and timestamp must be unsigned 64-bit")
        try:
            encoded = self.marking.encode()
        except UnicodeEncodeError:
            raise MalformedData("marking is not encodable as UTF-8") from None
        if len(encoded) > MAX_MARKING:
            raise MalformedData(f"marking is longer than {MAX_MARKING} bytes")

    def encode(self, kind: EnvelopeKind) -> bytes:
        """Serialize and zero-pad to the smallest bucket that fits; ``MessageTooLarge`` if
        none does."""
        marking = self.marking.encode()
        unpadded = (
            _BODY_HEAD.pack(self.content_type, 0, self.seq, self.sent_at_ms, len(marking))
            + marking + _U32.pack(len(self.payload)) + self.payload
        )  # fmt: skip
        for bucket in BUCKETS:
            capacity = body_capacity(kind, bucket)
            if len(unpadded) <= capacity:
                return unpadded + bytes(capacity - len(unpadded))
        raise MessageTooLarge(
            f"payload of {len(self.payload)} bytes does not fit the largest envelope "
            f"({MAX_ENVELOPE} bytes)"
        )

    @classmethod
    def decode(cls, data: bytes) -> Body:
        if len(data) < BODY_OVERHEAD:
            raise MalformedData("body is truncated")
        ctype, flags, seq, sent_at, marking_len = _BODY_HEAD.unpack_from(data)
        if flags:
            raise MalformedData("body flags must be zero")
        try:
            content_type = ContentType(ctype)
        except ValueError as exc:
            raise MalformedData(f"content type {ctype} is unknown") from exc
        if marking_len > MAX_MARKING:
            raise MalformedData("marking is too long")
        offset = _BODY_HEAD.size
        if offset + marking_len + _U32.size > len(data):
            raise MalformedData("body is truncated")
        try:
            marking = data[offset : offset + marking_len].decode()
        except UnicodeDecodeError as exc:
            raise MalformedData("marking is not valid UTF-8") from exc
        offset += marking_len
        (length,) = _U32.unpack_from(data, offset)
        offset += _U32.size
        if offset + length > len(data):
            raise MalformedData("payload length exceeds the body")
        payload = data[offset : offset + length]
        if data.count(0, offset + length) != len(data) - offset - length:
            raise MalformedData("padding must be zero bytes")
        return cls(content_type, seq, sent_at, payload, marking)
