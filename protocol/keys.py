"""Typed key classes: exact-length construction, constant-time equality, no loose bytes.

Theory of operation: a key object can only exist if its bytes have the right length, so code
that receives an ``IdentityKey`` never re-checks it. Public keys compare in constant time and
hash by value; private keys never print their bytes (``repr`` shows only the kind) and expose
their raw form only through an explicitly named ``private_bytes()``.

Key kinds (SPEC.md §5):

=====================  ===========================  ======================================
class                  bytes                        use
=====================  ===========================  ======================================
IdentityKeyPair        32-byte Ed25519 seed         signs prekeys; X25519 form used in DH
IdentityKey            32-byte Ed25519 public       pinned by peers, shown as safety number
X25519KeyPair          32-byte X25519 scalar        link static, signed/one-time prekeys,
                                                    ratchet keys
X25519PublicKey        32 bytes
KemKeyPair             64-byte ML-KEM-768 seed      signed KEM prekey, ratchet KEM keys
KemPublicKey           1184 bytes
SignedPrekey           id + X25519 public + sig     in a prekey bundle
SignedKemPrekey        id + KEM public + sig        in a prekey bundle
OneTimePrekey          id + X25519 public           in a prekey bundle, used once
=====================  ===========================  ======================================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from liaison.protocol import primitives as p
from liaison.protocol.errors import InvalidKey

__all__ = [
    "IdentityKey",
    "IdentityKeyPair",
    "KemKeyPair",
    "KemPublicKey",
    "OneTimePrekey",
    "SignedKemPrekey",
    "SignedPrekey",
    "X25519KeyPair",
    "X25519PublicKey",
]

SPK_SIGNATURE_CONTEXT = b"Liaison v1 signed prekey"
KEM_SIGNATURE_CONTEXT = b"Liaison v1 signed kem prekey"


class _PublicBytes:
    """Fixed-length public bytes with constant-time equality and value hashing."""

    LENGTH: ClassVar[int]
    KIND: ClassVar[str]
    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        if len(data) != self.LENGTH:
            raise InvalidKey(f"{self.KIND} must be {self.LENGTH} bytes, got {len(data)}")
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _PublicBytes)
        return p.ct_equal(self._data, other._data)

    def __hash__(self) -> int:
        return hash((self.KIND, self._data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data[:4].hex()}…)"


class X25519PublicKey(_PublicBytes):
    LENGTH = p.X25519_LEN
    KIND = "X25519 public key"
    __slots__ = ()


class KemPublicKey(_PublicBytes):
    LENGTH = p.MLKEM768_PUBLIC_LEN
    KIND = "ML-KEM-768 public key"
    __slots__ = ()


class IdentityKey(_PublicBytes):
    """A cell's Ed25519 identity public key."""

    LENGTH = p.ED25519_PUBLIC_LEN
    KIND = "Ed25519 identity key"
    __slots__ = ("_x25519",)

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._x25519: X25519PublicKey | None = None

    @property
    def x25519(self) -> X25519PublicKey:
        """The Montgomery (X25519) form, used in the session-setup DH.

        Computed on first use (the conversion validates the point and costs ~70 µs); raises
        ``InvalidKey`` when the bytes are not a valid Ed25519 point.
        """
        if self._x25519 is None:
            self._x25519 = X25519PublicKey(p.ed25519_public_to_x25519(self._data))
        return self._x25519

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise ``BadSignature`` unless ``signature`` is this key's signature of ``message``."""
        p.ed25519_verify(self._data, message, signature)


class _PrivateBytes:
    LENGTH: ClassVar[int]
    KIND: ClassVar[str]
    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != self.LENGTH:
            raise InvalidKey(f"{self.KIND} must be {self.LENGTH} bytes, got {len(secret)}")
        self._secret = bytes(secret)

    def private_bytes(self) -> bytes:
        """The raw private bytes, for sealed local storage only. Never send or log them."""
        return self._secret

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _PrivateBytes)
        return p.ct_equal(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash((self.KIND, self._secret))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    @classmethod
    def generate(cls, rng: p.RandomBytes = p.system_random) -> Self:
        return cls(rng(cls.LENGTH))


class IdentityKeyPair(_PrivateBytes):
    """A cell's Ed25519 identity, held as its 32-byte seed."""

    LENGTH = p.ED25519_SEED_LEN
    KIND = "Ed25519 seed"
    __slots__ = ("_dh_private", "public")

    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        self.public = IdentityKey(p.ed25519_public_from_seed(self._secret))
        self._dh_private = p.ed25519_seed_to_x25519(self._secret)

    def sign(self, message: bytes) -> bytes:
        return p.ed25519_sign(self._secret, message)

    def dh(self, peer: X25519PublicKey) -> bytes:
        """X25519 between this identity's Montgomery form and ``peer``."""
        return p.x25519(self._dh_private, bytes(peer))


class X25519KeyPair(_PrivateBytes):
    LENGTH = p.X25519_LEN
    KIND = "X25519 private key"
    __slots__ = ("public",)

    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        self.public = X25519PublicKey(p.x25519_public(self._secret))

    def dh(self, peer: X25519PublicKey) -> bytes:
        return p.x25519(self._secret, bytes(peer))


class KemKeyPair(_PrivateBytes):
    """An ML-KEM-768 key pair, held as its 64-byte FIPS 203 seed (d || z)."""

    LENGTH = p.MLKEM768_SEED_LEN
    KIND = "ML-KEM-768 seed"
    __slots__ = ("_private", "public")

    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        self._private = p.mlkem768_private_from_seed(self._secret)
        self.public = KemPublicKey(p.mlkem768_public(self._private))

    def decapsulate(self, ciphertext: bytes) -> bytes:
        return p.mlkem768_decapsulate(self._private, ciphertext)


_ID = struct.Struct(">I")


def _check_id(prekey_id: int) -> None:
    if not 0 <= prekey_id < 0xFFFFFFFF:
        raise InvalidKey(f"prekey id must be in 0..2**32-2, got {prekey_id}")


@dataclass(frozen=True, slots=True)
class SignedPrekey:
    """An X25519 prekey signed by the identity: ``sig = Sign(IK, ctx || id || public)``."""

    prekey_id: int
    public: X25519PublicKey
    signature: bytes

    def __post_init__(self) -> None:
        _check_id(self.prekey_id)
        if len(self.signature) != p.ED25519_SIGNATURE_LEN:
            raise InvalidKey("signed prekey signature must be 64 bytes")

    @staticmethod
    def signed_data(prekey_id: int, public: X25519PublicKey) -> bytes:
        return SPK_SIGNATURE_CONTEXT + _ID.pack(prekey_id) + bytes(public)

    @classmethod
    def create(cls, identity: IdentityKeyPair, prekey_id: int, key: X25519KeyPair) -> SignedPrekey:
        _check_id(prekey_id)
        return cls(prekey_id, key.public, identity.sign(cls.signed_data(prekey_id, key.public)))

    def verify(self, identity: IdentityKey) -> None:
        """Raise ``BadSignature`` unless ``identity`` signed this prekey."""
        identity.verify(self.signed_data(self.prekey_id, self.public), self.signature)


@dataclass(frozen=True, slots=True)
class SignedKemPrekey:
    """An ML-KEM-768 prekey signed by the identity."""

    prekey_id: int
    public: KemPublicKey
    signature: bytes

    def __post_init__(self) -> None:
        _check_id(self.prekey_id)
        if len(self.signature) != p.ED25519_SIGNATURE_LEN:
            raise InvalidKey("signed KEM prekey signature must be 64 bytes")

    @staticmethod
    def signed_data(prekey_id: int, public: KemPublicKey) -> bytes:
        return KEM_SIGNATURE_CONTEXT + _ID.pack(prekey_id) + bytes(public)

    @classmethod
    def create(cls, identity: IdentityKeyPair, prekey_id: int, key: KemKeyPair) -> SignedKemPrekey:
        _check_id(prekey_id)
        return cls(prekey_id, key.public, identity.sign(cls.signed_data(prekey_id, key.public)))

    def verify(self, identity: IdentityKey) -> None:
        identity.verify(self.signed_data(self.prekey_id, self.public), self.signature)


@dataclass(frozen=True, slots=True)
class OneTimePrekey:
    prekey_id: int
    public: X25519PublicKey

    def __post_init__(self) -> None:
        _check_id(self.prekey_id)
