"""Prekey bundles: what a cell publishes so peers can start sessions with it (SPEC.md §5.3).

Layout (big-endian)::

    16    cell id
    32    identity key (Ed25519)
    4+32+64     signed prekey: id, X25519 public, signature
    4+1184+64   signed ML-KEM-768 prekey: id, public, signature
    1     0 = no one-time prekey, 1 = one follows
    4+32  one-time prekey: id, X25519 public (only when the flag is 1)

The relay stores and serves bundles without understanding sessions; cells verify both
signatures before using any key (``PrekeyBundle.verify``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from liaison.protocol import primitives as p
from liaison.protocol.errors import MalformedData
from liaison.protocol.keys import (
    IdentityKey,
    KemPublicKey,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519PublicKey,
)

__all__ = ["PrekeyBundle"]

CELL_ID_LEN = 16

_BUNDLE_HEAD = struct.Struct(">16s32sI32s64sI")
_KEM_SIG = 64
_OTK = struct.Struct(">I32s")


@dataclass(frozen=True, slots=True)
class PrekeyBundle:
    """What a cell publishes so that peers can start sessions with it (SPEC.md §5.3)."""

    cell_id: bytes
    identity: IdentityKey
    signed_prekey: SignedPrekey
    kem_prekey: SignedKemPrekey
    one_time_prekey: OneTimePrekey | None = None

    def __post_init__(self) -> None:
        if len(self.cell_id) != CELL_ID_LEN:
            raise MalformedData(f"bundle cell id must be {CELL_ID_LEN} bytes")

    def verify(self) -> None:
        """Raise ``BadSignature`` unless both prekeys are signed by the bundle's identity."""
        self.signed_prekey.verify(self.identity)
        self.kem_prekey.verify(self.identity)

    def encode(self) -> bytes:
        spk, kem, otk = self.signed_prekey, self.kem_prekey, self.one_time_prekey
        out = _BUNDLE_HEAD.pack(self.cell_id, bytes(self.identity), spk.prekey_id,
                                bytes(spk.public), spk.signature, kem.prekey_id)  # fmt: skip
        out += bytes(kem.public) + kem.signature
        if otk is None:
            return out + b"\x00"
        return out + b"\x01" + _OTK.pack(otk.prekey_id, bytes(otk.public))

    @classmethod
    def decode(cls, data: bytes) -> PrekeyBundle:
        base = _BUNDLE_HEAD.size + p.MLKEM768_PUBLIC_LEN + _KEM_SIG + 1
        if len(data) not in (base, base + _OTK.size):
            raise MalformedData(f"prekey bundle must be {base} or {base + _OTK.size} bytes")
        cell_id, ik, spk_id, spk_pub, spk_sig, kem_id = _BUNDLE_HEAD.unpack_from(data)
        offset = _BUNDLE_HEAD.size
        kem_pub = data[offset : offset + p.MLKEM768_PUBLIC_LEN]
        offset += p.MLKEM768_PUBLIC_LEN
        kem_sig = data[offset : offset + _KEM_SIG]
        offset += _KEM_SIG
        flag = data[offset]
        offset += 1
        if flag != (len(data) == base + _OTK.size):
            raise MalformedData("prekey bundle one-time-prekey flag does not match its length")
        try:
            identity = IdentityKey(ik)
            otk = None
            if flag:
                otk_id, otk_pub = _OTK.unpack_from(data, offset)
                otk = OneTimePrekey(otk_id, X25519PublicKey(otk_pub))
            return cls(cell_id, identity, SignedPrekey(spk_id, X25519PublicKey(spk_pub), spk_sig),
                       SignedKemPrekey(kem_id, KemPublicKey(kem_pub), kem_sig), otk)  # fmt: skip
        except ValueError as exc:
            raise MalformedData(f"prekey bundle has an invalid field: {exc}") from exc
