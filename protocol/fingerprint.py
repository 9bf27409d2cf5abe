"""Safety numbers: Signal's displayable and scannable fingerprints, and Liaison's cell variant.

Theory of operation
-------------------
Two parties who want to rule out a machine-in-the-middle compare, out of band, a number derived
from both of their long-term identity keys. The derivation is the one Signal deploys
(libsignal ``rust/protocol/src/fingerprint.rs``), reproduced here byte for byte so that the
libsignal test values check it:

1. **Per-party fingerprint.** For one party with serialized identity key ``key`` and stable
   identifier ``stable_id``::

       h_0 = SHA-512(version as 2 bytes big-endian || key || stable_id || key)
       h_i = SHA-512(h_{i-1} || key)               for i = 1 .. iterations - 1

   ``iterations`` counts every SHA-512 call, ``h_0`` included (libsignal uses 5,200 and
   version 0). The iteration makes a brute-force search for a second key with the same
   displayed digits ``iterations`` times more expensive; hashing the key in at every step
   binds each round to the key, and the stable identifier binds the key to one account.

2. **Displayable number.** The first 30 bytes of the final hash are read as six 5-byte
   big-endian integers, each taken modulo 100,000 and zero-padded to 5 digits: 30 digits per
   party. The two 30-digit strings are concatenated in sorted (lexicographic) order, so both
   parties compute the *same* 60 digits whichever of them is "local". The result is usually
   shown as 12 groups of 5 digits (:func:`format_safety_number`).

3. **Scannable fingerprint.** The QR-code form is the protobuf message::

       message LogicalFingerprint   { optional bytes content = 1; }
       message CombinedFingerprints { optional uint32 version = 1;
                                      optional LogicalFingerprint local_fingerprint = 2;
                                      optional LogicalFingerprint remote_fingerprint = 3; }

   where ``content`` is the first 32 bytes of each party's final hash. Unlike the displayable
   number it is *not* symmetric: the scanner compares the code's ``local`` with its own
   ``remote`` and vice versa. It is encoded here by hand (fields in number order, as protobuf
   serializers do) so that no protobuf dependency is needed.

Liaison's variant
-----------------
A Liaison cell's identity is an Ed25519 public key and its stable identifier is its 16-byte cell
id. :func:`cell_safety_number` serializes the identity as ``0x07 || ed25519_public`` before
running Signal's algorithm (version 0, 5,200 iterations). The type byte ``0x07`` differs from
Signal's ``0x05`` (a DJB/X25519 key), so a Liaison safety number can never be equal to a Signal
one computed from the same 32 bytes.

Errors: a key or cell id of the wrong length raises :class:`~liaison.protocol.errors.InvalidKey`;
out-of-range numeric parameters (``iterations``, ``version``) and a malformed digit string given
to :func:`format_safety_number` raise :class:`ValueError`.
"""

from __future__ import annotations

import hashlib

from liaison.protocol.errors import InvalidKey

__all__ = [
    "CELL_ID_LEN",
    "DEFAULT_ITERATIONS",
    "FINGERPRINT_VERSION",
    "LIAISON_KEY_TYPE",
    "SAFETY_NUMBER_DIGITS",
    "SCANNABLE_VERSION",
    "cell_safety_number",
    "format_safety_number",
    "safety_number",
    "scannable_fingerprint",
]

DEFAULT_ITERATIONS = 5200
"""SHA-512 calls per party, as in libsignal."""

FINGERPRINT_VERSION = 0
"""The 2-byte version prefix hashed into ``h_0`` (libsignal's ``FINGERPRINT_VERSION``)."""

SCANNABLE_VERSION = 2
"""The ``CombinedFingerprints.version`` libsignal's current clients put in the QR code."""

LIAISON_KEY_TYPE = b"\x07"
"""Type byte prefixed to a cell's Ed25519 identity key (Signal's X25519 keys use ``0x05``)."""

CELL_ID_LEN = 16
"""Length of a cell id, the stable identifier of a Liaison cell."""

SAFETY_NUMBER_DIGITS = 60
"""Digits in a displayable safety number: 30 per party."""

_ED25519_PUBLIC_LEN = 32
_PARTY_DIGITS = 30
_CHUNKS = 6
_CHUNK_BYTES = 5
_SCANNABLE_CONTENT_LEN = 32
_GROUP = 5


def _check_parameters(iterations: int, version: int) -> None:
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if not 0 <= version <= 0xFFFF:
        raise ValueError(f"version must fit in 2 bytes (0..65535), got {version}")


def _check_party(name: str, key: bytes) -> None:
    if not key:
        raise InvalidKey(f"{name} identity key must not be empty")


def _party_hash(key: bytes, stable_id: bytes, iterations: int, version: int) -> bytes:
    """``h_{iterations-1}`` for one party: the 64-byte iterated SHA-512 of step 1."""
    digest = hashlib.sha512(version.to_bytes(2, "big") + key + stable_id + key).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha512(digest + key).digest()
    return digest


def _party_digits(fingerprint: bytes) -> str:
    """The 30 displayable digits of one party's hash (step 2)."""
    chunks = (
        int.from_bytes(fingerprint[i * _CHUNK_BYTES : (i + 1) * _CHUNK_BYTES], "big") % 100_000
        for i in range(_CHUNKS)
    )
    return "".join(f"{chunk:05d}" for chunk in chunks)


def safety_number(
    local_key: bytes,
    local_id: bytes,
    remote_key: bytes,
    remote_id: bytes,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    version: int = FINGERPRINT_VERSION,
) -> str:
    """Signal's displayable fingerprint: 60 decimal digits, the same for both parties.

    ``local_key``/``remote_key`` are the *serialized* identity keys (for Signal, 33 bytes:
    ``0x05 || X25519 public``) and ``local_id``/``remote_id`` the stable identifiers. Swapping
    local and remote does not change the result.
    """
    _check_parameters(iterations, version)
    _check_party("local", local_key)
    _check_party("remote", remote_key)
    local = _party_digits(_party_hash(local_key, local_id, iterations, version))
    remote = _party_digits(_party_hash(remote_key, remote_id, iterations, version))
    first, second = sorted((local, remote))
    return first + second


def format_safety_number(digits: str) -> str:
    """Display form of a 60-digit safety number: 12 groups of 5 digits separated by spaces."""
    if len(digits) != SAFETY_NUMBER_DIGITS or not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"a safety number is {SAFETY_NUMBER_DIGITS} ASCII digits")
    return " ".join(digits[i : i + _GROUP] for i in range(0, SAFETY_NUMBER_DIGITS, _GROUP))


# --- protobuf (just the wire types CombinedFingerprints needs) ----------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def scannable_fingerprint(
    local_key: bytes,
    local_id: bytes,
    remote_key: bytes,
    remote_id: bytes,
    *,
    scannable_version: int = SCANNABLE_VERSION,
    iterations: int = DEFAULT_ITERATIONS,
    version: int = FINGERPRINT_VERSION,
) -> bytes:
    """The serialized ``CombinedFingerprints`` protobuf shown as the local party's QR code.

    ``version`` is the hash version of :func:`safety_number`; ``scannable_version`` is the
    message's own ``version`` field (libsignal has used 1 and 2). The result depends on which
    party is local: each side's code lists its own fingerprint first.
    """
    _check_parameters(iterations, version)
    if not 0 <= scannable_version <= 0xFFFFFFFF:
        raise ValueError(f"scannable_version must be a uint32, got {scannable_version}")
    _check_party("local", local_key)
    _check_party("remote", remote_key)
    local = _party_hash(local_key, local_id, iterations, version)[:_SCANNABLE_CONTENT_LEN]
    remote = _party_hash(remote_key, remote_id, iterations, version)[:_SCANNABLE_CONTENT_LEN]
    return (
        _field_varint(1, scannable_version)
        + _field_bytes(2, _field_bytes(1, local))
        + _field_bytes(3, _field_bytes(1, remote))
    )


# --- Liaison ----------------------------------------------------------------------------------


def _cell_key(name: str, identity: bytes, cell_id: bytes) -> bytes:
    if len(identity) != _ED25519_PUBLIC_LEN:
        raise InvalidKey(
            f"{name} identity must be a {_ED25519_PUBLIC_LEN}-byte Ed25519 public key,"
            f" got {len(identity)} bytes"
        )
    if len(cell_id) != CELL_ID_LEN:
        raise InvalidKey(f"{name} cell id must be {CELL_ID_LEN} bytes, got {len(cell_id)}")
    return LIAISON_KEY_TYPE + identity


def cell_safety_number(
    local_identity: bytes,
    local_cell_id: bytes,
    remote_identity: bytes,
    remote_cell_id: bytes,
) -> str:
    """The 60-digit safety number of two Liaison cells (the same on both sides).

    Identities are 32-byte Ed25519 public keys, serialized as ``0x07 || key``; the stable
    identifiers are the 16-byte cell ids; hash version 0 and 5,200 iterations.
    """
    local_key = _cell_key("local", local_identity, local_cell_id)
    remote_key = _cell_key("remote", remote_identity, remote_cell_id)
    return safety_number(
        local_key,
        local_cell_id,
        remote_key,
        remote_cell_id,
        iterations=DEFAULT_ITERATIONS,
        version=FINGERPRINT_VERSION,
    )
