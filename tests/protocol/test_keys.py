"""Typed key classes (SPEC.md §5; §4 [M-PRIM-2/4/10]): exact lengths, constant-time equality,
hashing, private-key hygiene, and signed prekeys."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.protocol import primitives as p
from liaison.protocol.errors import BadSignature, InvalidKey, LiaisonError
from liaison.protocol.keys import (
    KEM_SIGNATURE_CONTEXT,
    SPK_SIGNATURE_CONTEXT,
    IdentityKey,
    IdentityKeyPair,
    KemKeyPair,
    KemPublicKey,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
    X25519PublicKey,
)

# Ed25519 public key of the seed 0x01 * 32 (RFC 8032 key derivation; also used by the
# fingerprint tests).
SEED_01 = bytes([1]) * 32
SEED_01_PUBLIC = bytes.fromhex("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c")

# (class, exact length, a valid value of that length)
KeyFactory = Callable[[bytes], object]
KEY_CLASSES: list[tuple[KeyFactory, int, bytes]] = [
    (X25519PublicKey, 32, bytes(range(32))),
    (KemPublicKey, 1184, bytes(KemKeyPair(bytes(64)).public)),
    (IdentityKey, 32, SEED_01_PUBLIC),
    (IdentityKeyPair, 32, SEED_01),
    (X25519KeyPair, 32, bytes(range(32))),
    (KemKeyPair, 64, bytes(range(64))),
]
KEY_IDS = [
    "X25519PublicKey",
    "KemPublicKey",
    "IdentityKey",
    "IdentityKeyPair",
    "X25519KeyPair",
    "KemKeyPair",
]

PRIVATE_CLASSES: list[tuple[type[IdentityKeyPair | X25519KeyPair | KemKeyPair], int]] = [
    (IdentityKeyPair, 32),
    (X25519KeyPair, 32),
    (KemKeyPair, 64),
]


def _wrong_lengths(length: int) -> list[int]:
    return [0, 1, length - 1, length + 1, 2 * length]


# --- exact-length construction ----------------------------------------------------------------


@pytest.mark.parametrize(("factory", "length", "valid"), KEY_CLASSES, ids=KEY_IDS)
def test_exact_length_is_accepted(factory: KeyFactory, length: int, valid: bytes) -> None:
    """SPEC.md §5: a key object exists only for bytes of exactly its length."""
    assert len(valid) == length
    key = factory(valid)
    if isinstance(key, X25519PublicKey | KemPublicKey | IdentityKey):
        assert bytes(key) == valid
    else:
        assert isinstance(key, IdentityKeyPair | X25519KeyPair | KemKeyPair)
        assert key.private_bytes() == valid


@pytest.mark.parametrize(("factory", "length", "valid"), KEY_CLASSES, ids=KEY_IDS)
def test_wrong_length_raises_invalid_key(factory: KeyFactory, length: int, valid: bytes) -> None:
    """SPEC.md §5: every other length is InvalidKey, which is a ValueError and a LiaisonError;
    the message never carries the key bytes."""
    for bad_length in _wrong_lengths(length):
        data = (valid * 3)[:bad_length]
        with pytest.raises(InvalidKey) as info:
            factory(data)
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, LiaisonError)
        if len(data) >= 4:
            assert data.hex() not in str(info.value)
            assert data[:4].hex() not in str(info.value)


def test_invalid_key_is_a_value_error() -> None:
    """SPEC.md §5 / error tree: InvalidKey can be caught as ValueError."""
    with pytest.raises(ValueError, match="must be 32 bytes"):
        X25519PublicKey(b"short")


@pytest.mark.parametrize(
    "public_hex",
    [
        "0000000000000000000000000000000000000000000000000000000000000000",  # small order
        "0100000000000000000000000000000000000000000000000000000000000000",  # neutral element
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # small order
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p: non-canonical
    ],
)
def test_identity_key_rejects_unusable_points(public_hex: str) -> None:
    """SPEC.md §4 [M-PRIM-4]: an identity that is not a usable Ed25519 point has no X25519 form
    (InvalidKey) and never verifies a signature (BadSignature)."""
    identity = IdentityKey(bytes.fromhex(public_hex))
    with pytest.raises(InvalidKey):
        _ = identity.x25519
    with pytest.raises(BadSignature):
        identity.verify(b"message", bytes(64))


# Minimal Ed25519 (twisted Edwards) arithmetic, only to build a mixed-order test point.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P


def _ed_decode(data: bytes) -> tuple[int, int]:
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    assert (x * x - x2) % _P == 0
    return (_P - x if x & 1 != sign else x), y


def _ed_encode(point: tuple[int, int]) -> bytes:
    x, y = point
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _ed_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


ORDER_8_POINT = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


def test_identity_key_rejects_mixed_order_point() -> None:
    """SPEC.md §4 [M-PRIM-4]: a valid public key plus a torsion point (on the curve, not in the
    prime-order subgroup) has no usable X25519 form."""
    assert _ed_encode(_ed_decode(SEED_01_PUBLIC)) == SEED_01_PUBLIC
    mixed = _ed_encode(_ed_add(_ed_decode(SEED_01_PUBLIC), _ed_decode(ORDER_8_POINT)))
    assert mixed not in (SEED_01_PUBLIC, ORDER_8_POINT)
    with pytest.raises(InvalidKey):
        _ = IdentityKey(mixed).x25519


def test_identity_key_pair_derives_rfc8032_public_key() -> None:
    """SPEC.md §5.1: IdentityKeyPair holds the Ed25519 seed; its public key is RFC 8032's."""
    assert bytes(IdentityKeyPair(SEED_01).public) == SEED_01_PUBLIC


def test_identity_x25519_forms_agree() -> None:
    """SPEC.md §5.1/[M-PRIM-4]: the identity's Montgomery form is usable in the setup DH from
    both sides."""
    a, b = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    assert a.dh(b.public.x25519) == b.dh(a.public.x25519)
    x = X25519KeyPair.generate()
    assert a.dh(x.public) == x.dh(a.public.x25519)


@pytest.mark.parametrize(("cls", "length"), PRIVATE_CLASSES)
def test_generate_draws_exactly_the_key_length(
    cls: type[IdentityKeyPair | X25519KeyPair | KemKeyPair], length: int
) -> None:
    """SPEC.md §8.7: key generation uses the injected rng for exactly one key's worth of bytes."""
    requests: list[int] = []

    def rng(n: int) -> bytes:
        requests.append(n)
        return bytes([7]) * n

    key = cls.generate(rng)
    assert requests == [length]
    assert key.private_bytes() == bytes([7]) * length
    assert key == cls(bytes([7]) * length)


# --- equality and hashing ---------------------------------------------------------------------


def test_public_key_equality_semantics() -> None:
    """SPEC.md §5: public keys compare by value; other types (bytes, other key kinds with the
    same bytes) are never equal."""
    raw = SEED_01_PUBLIC
    key = X25519PublicKey(raw)
    assert key == X25519PublicKey(raw)
    assert not key != X25519PublicKey(raw)  # noqa: SIM202 - exercise __ne__ explicitly
    assert key != X25519PublicKey(bytes(32))
    assert key != raw
    assert raw != key
    assert key.__eq__(raw) is NotImplemented
    assert key != IdentityKey(raw)
    assert IdentityKey(raw) != key
    assert key.__eq__(IdentityKey(raw)) is NotImplemented
    assert IdentityKey(raw) == IdentityKey(raw)


def test_private_key_equality_semantics() -> None:
    """SPEC.md §5: private keys compare by value, and never across key kinds."""
    secret = bytes(range(32))
    assert X25519KeyPair(secret) == X25519KeyPair(secret)
    assert X25519KeyPair(secret) != X25519KeyPair(bytes(32))
    assert X25519KeyPair(secret) != IdentityKeyPair(secret)
    assert X25519KeyPair(secret) != secret
    assert KemKeyPair(bytes(64)) == KemKeyPair(bytes(64))
    assert KemKeyPair(bytes(64)) != KemKeyPair(bytes([1]) * 64)


def test_equality_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC.md §4 [M-PRIM-10]: key equality goes through the constant-time comparison."""
    calls: list[tuple[bytes, bytes]] = []
    real = p.ct_equal

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(p, "ct_equal", spy)
    raw = bytes(range(32))
    assert X25519PublicKey(raw) == X25519PublicKey(raw)
    assert X25519PublicKey(raw) != X25519PublicKey(bytes(32))
    assert X25519KeyPair(raw) == X25519KeyPair(raw)
    assert calls == [(raw, raw), (raw, bytes(32)), (raw, raw)]


def test_hashing_by_value() -> None:
    """SPEC.md §5: equal keys hash equally, so keys work as set members and dict keys."""
    raw = SEED_01_PUBLIC
    assert hash(X25519PublicKey(raw)) == hash(X25519PublicKey(raw))
    assert len({X25519PublicKey(raw), X25519PublicKey(raw), X25519PublicKey(bytes(32))}) == 2
    assert len({X25519PublicKey(raw), IdentityKey(raw)}) == 2
    table = {IdentityKey(raw): "alice"}
    assert table[IdentityKey(raw)] == "alice"
    kem = KemKeyPair(bytes(64))
    assert hash(kem.public) == hash(KemPublicKey(bytes(kem.public)))
    assert hash(X25519KeyPair(raw)) == hash(X25519KeyPair(raw))
    assert len({X25519KeyPair(raw), X25519KeyPair(raw)}) == 1


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=64, max_size=64))
def test_private_repr_never_shows_the_secret(secret: bytes) -> None:
    """SPEC.md §5.1 [M-KEY-3]: repr/str/format of a private key never contain any 4-byte run of
    its secret in hex."""
    for cls, length in PRIVATE_CLASSES:
        key = cls(secret[:length])
        hexed = key.private_bytes().hex()
        for text in (repr(key), str(key), f"{key}", f"{key!r}"):
            for start in range(0, len(hexed) - 7, 2):
                assert hexed[start : start + 8] not in text
            assert repr(key.private_bytes()) not in text
        assert repr(key) == f"<{cls.__name__}>"


def test_public_repr_is_short() -> None:
    """SPEC.md §5: a public key's repr shows only a 4-byte prefix."""
    assert repr(X25519PublicKey(bytes(range(32)))) == "X25519PublicKey(00010203…)"


# --- signed prekeys ---------------------------------------------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_signed_prekey_signed_data_layout() -> None:
    """SPEC.md §5.2: Sign(IK, context || id (u32 BE) || public) for both prekey kinds."""
    public = X25519PublicKey(bytes(range(32)))
    assert SignedPrekey.signed_data(0x01020304, public) == (
        b"Liaison v1 signed prekey" + bytes.fromhex("01020304") + bytes(range(32))
    )
    kem_public = KemKeyPair(bytes(64)).public
    assert SignedKemPrekey.signed_data(7, kem_public) == (
        b"Liaison v1 signed kem prekey" + struct.pack(">I", 7) + bytes(kem_public)
    )
    assert SPK_SIGNATURE_CONTEXT != KEM_SIGNATURE_CONTEXT


def test_signed_prekey_verifies() -> None:
    """SPEC.md §5.2: a signed prekey verifies under the identity that created it."""
    identity = IdentityKeyPair.generate()
    spk = SignedPrekey.create(identity, 5, X25519KeyPair.generate())
    spk.verify(identity.public)
    kem = SignedKemPrekey.create(identity, 6, KemKeyPair.generate())
    kem.verify(identity.public)


@pytest.mark.parametrize("index", [0, 17, 31, 32, 50, 63])
def test_signed_prekey_rejects_tampered_signature(index: int) -> None:
    """SPEC.md §5.2: any change to the signature is BadSignature."""
    identity = IdentityKeyPair.generate()
    spk = SignedPrekey.create(identity, 5, X25519KeyPair.generate())
    kem = SignedKemPrekey.create(identity, 6, KemKeyPair.generate())
    with pytest.raises(BadSignature):
        SignedPrekey(spk.prekey_id, spk.public, _flip(spk.signature, index)).verify(identity.public)
    with pytest.raises(BadSignature):
        SignedKemPrekey(kem.prekey_id, kem.public, _flip(kem.signature, index)).verify(
            identity.public
        )


def test_signed_prekey_rejects_wrong_identity() -> None:
    """SPEC.md §5.2: a prekey signed by someone else is BadSignature."""
    identity, other = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    spk = SignedPrekey.create(identity, 5, X25519KeyPair.generate())
    kem = SignedKemPrekey.create(identity, 6, KemKeyPair.generate())
    with pytest.raises(BadSignature):
        spk.verify(other.public)
    with pytest.raises(BadSignature):
        kem.verify(other.public)


def test_signed_prekey_rejects_changed_id_or_key() -> None:
    """SPEC.md §5.2: the signature covers the prekey id and the public key."""
    identity = IdentityKeyPair.generate()
    spk = SignedPrekey.create(identity, 5, X25519KeyPair.generate())
    kem = SignedKemPrekey.create(identity, 6, KemKeyPair.generate())
    with pytest.raises(BadSignature):
        SignedPrekey(6, spk.public, spk.signature).verify(identity.public)
    with pytest.raises(BadSignature):
        SignedKemPrekey(5, kem.public, kem.signature).verify(identity.public)
    with pytest.raises(BadSignature):
        SignedPrekey(5, X25519KeyPair.generate().public, spk.signature).verify(identity.public)
    with pytest.raises(BadSignature):
        SignedKemPrekey(6, KemKeyPair.generate().public, kem.signature).verify(identity.public)


def test_signature_contexts_are_separated() -> None:
    """SPEC.md §5.2: an X25519-prekey signature is not valid for the KEM-prekey context."""
    identity = IdentityKeyPair.generate()
    spk = SignedPrekey.create(identity, 5, X25519KeyPair.generate())
    with pytest.raises(BadSignature):
        identity.public.verify(
            KEM_SIGNATURE_CONTEXT + struct.pack(">I", 5) + bytes(spk.public), spk.signature
        )


@pytest.mark.parametrize("prekey_id", [-1, 0xFFFFFFFF, 2**32])
def test_prekey_id_range(prekey_id: int) -> None:
    """SPEC.md §5.1 [M-KEY-1]: prekey ids are 0..2**32-2 (0xFFFFFFFF means "no one-time prekey")."""
    identity = IdentityKeyPair.generate()
    key = X25519KeyPair.generate()
    with pytest.raises(InvalidKey):
        SignedPrekey.create(identity, prekey_id, key)
    with pytest.raises(InvalidKey):
        SignedPrekey(prekey_id, key.public, bytes(64))
    with pytest.raises(InvalidKey):
        SignedKemPrekey(prekey_id, KemKeyPair(bytes(64)).public, bytes(64))
    with pytest.raises(InvalidKey):
        OneTimePrekey(prekey_id, key.public)


def test_prekey_id_bounds_are_accepted() -> None:
    """SPEC.md §5.1 [M-KEY-1]: ids 0 and 2**32-2 are valid."""
    identity = IdentityKeyPair.generate()
    for prekey_id in (0, 0xFFFFFFFE):
        SignedPrekey.create(identity, prekey_id, X25519KeyPair.generate()).verify(identity.public)
        assert OneTimePrekey(prekey_id, X25519KeyPair.generate().public).prekey_id == prekey_id


@pytest.mark.parametrize("length", [0, 63, 65])
def test_prekey_signature_length(length: int) -> None:
    """SPEC.md §5.2: a prekey signature is exactly 64 bytes."""
    with pytest.raises(InvalidKey):
        SignedPrekey(1, X25519PublicKey(bytes(32)), bytes(length))
    with pytest.raises(InvalidKey):
        SignedKemPrekey(1, KemKeyPair(bytes(64)).public, bytes(length))
