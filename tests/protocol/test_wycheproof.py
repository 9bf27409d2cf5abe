"""Wycheproof vectors against Liaison's own primitive wrappers (``liaison.protocol.primitives``).

Every test case of every file in ``tests/vectors/wycheproof`` is one parametrized test (ids such
as ``x25519-tc17``), and every case is asserted: ``valid`` cases must reproduce the expected
output exactly, ``invalid`` cases must be rejected with the error our wrapper documents, and
``acceptable`` X25519 cases must either agree with the vector or be refused as an unsafe key
agreement. A case of a kind our wrapper does not implement (another nonce or key size) is never
skipped: the test asserts that the wrapper rejects it with our own error. The ``*_counts`` tests
check that the parametrization covers each file's ``numberOfTests``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import pytest

from liaison.protocol.errors import (
    BadSignature,
    DecryptionError,
    InvalidKey,
    LiaisonError,
    UnsafeKeyAgreement,
)
from liaison.protocol.primitives import (
    AEAD_KEY_LEN,
    AEAD_TAG_LEN,
    CHACHA_NONCE_LEN,
    MLKEM768_CIPHERTEXT_LEN,
    MLKEM768_PUBLIC_LEN,
    MLKEM768_SEED_LEN,
    MLKEM768_SHARED_LEN,
    XCHACHA_NONCE_LEN,
    chacha20poly1305_decrypt,
    chacha20poly1305_encrypt,
    ed25519_verify,
    hkdf_sha256,
    mlkem768_decapsulate,
    mlkem768_encapsulate,
    mlkem768_private_from_seed,
    mlkem768_public,
    x25519,
    xchacha20poly1305_decrypt,
    xchacha20poly1305_encrypt,
)
from tests.vectorload import load_json

AeadFunction = Callable[[bytes, bytes, bytes, bytes], bytes]


class Vector(NamedTuple):
    """One Wycheproof test case together with the parameters of its test group."""

    group: Mapping[str, Any]
    case: Mapping[str, Any]

    @property
    def result(self) -> str:
        result = self.case["result"]
        assert isinstance(result, str)
        return result

    def hex(self, field: str) -> bytes:
        value = self.case[field]
        assert isinstance(value, str)
        return bytes.fromhex(value)

    def optional_hex(self, field: str) -> bytes | None:
        """The field's bytes, or ``None`` when the case leaves the field out."""
        return self.hex(field) if field in self.case else None


class VectorFile(NamedTuple):
    prefix: str
    number_of_tests: int
    vectors: list[Vector]
    ids: list[str]


def _load(name: str, prefix: str) -> VectorFile:
    data = load_json(f"wycheproof/{name}")
    vectors = [Vector(group, case) for group in data["testGroups"] for case in group["tests"]]
    ids = [f"{prefix}-tc{vector.case['tcId']}" for vector in vectors]
    return VectorFile(prefix, int(data["numberOfTests"]), vectors, ids)


X25519 = _load("x25519_test.json", "x25519")
ED25519 = _load("ed25519_test.json", "ed25519")
CHACHA = _load("chacha20_poly1305_test.json", "chacha20poly1305")
XCHACHA = _load("xchacha20_poly1305_test.json", "xchacha20poly1305")
HKDF = _load("hkdf_sha256_test.json", "hkdf-sha256")
MLKEM = _load("mlkem_768_test.json", "mlkem768")
MLKEM_KEYGEN = _load("mlkem_768_keygen_seed_test.json", "mlkem768-keygen")

ALL_FILES = [X25519, ED25519, CHACHA, XCHACHA, HKDF, MLKEM, MLKEM_KEYGEN]

# The verdicts each file may use; a new one appearing in an updated file must fail loudly.
EXPECTED_RESULTS = {
    "x25519": {"valid", "acceptable"},
    "ed25519": {"valid", "invalid"},
    "chacha20poly1305": {"valid", "invalid"},
    "xchacha20poly1305": {"valid", "invalid"},
    "hkdf-sha256": {"valid", "invalid"},
    "mlkem768": {"valid", "invalid"},
    "mlkem768-keygen": {"valid"},
}


# --- coverage of the files --------------------------------------------------------------------


@pytest.mark.parametrize("vector_file", ALL_FILES, ids=[f.prefix for f in ALL_FILES])
def test_every_case_is_parametrized(vector_file: VectorFile) -> None:
    assert len(vector_file.vectors) == vector_file.number_of_tests
    assert len(set(vector_file.ids)) == len(vector_file.ids), "duplicate tcId"
    results = {vector.result for vector in vector_file.vectors}
    assert results == EXPECTED_RESULTS[vector_file.prefix]


# --- X25519 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", X25519.vectors, ids=X25519.ids)
def test_x25519(vector: Vector) -> None:
    assert vector.group["curve"] == "curve25519"
    private = vector.hex("private")
    public = vector.hex("public")
    shared = vector.hex("shared")
    if vector.result == "valid":
        assert x25519(private, public) == shared
    elif vector.result == "acceptable":
        if shared == bytes(32):
            # A low-order peer point: our wrapper must refuse the all-zero output.
            with pytest.raises(UnsafeKeyAgreement):
                x25519(private, public)
        else:
            # Twist points, non-canonical encodings and similar: computing the RFC 7748 result
            # and refusing the key are both acceptable, returning anything else is not.
            try:
                out = x25519(private, public)
            except UnsafeKeyAgreement:
                return
            assert out == shared
    else:
        assert vector.result == "invalid"
        with pytest.raises(LiaisonError):
            x25519(private, public)


# --- Ed25519 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", ED25519.vectors, ids=ED25519.ids)
def test_ed25519_verify(vector: Vector) -> None:
    key = vector.group["publicKey"]
    assert key["curve"] == "edwards25519"
    public = bytes.fromhex(key["pk"])
    message = vector.hex("msg")
    signature = vector.hex("sig")
    if vector.result == "valid":
        ed25519_verify(public, message, signature)  # returns None: no exception is success
    else:
        assert vector.result == "invalid"
        with pytest.raises(BadSignature):
            ed25519_verify(public, message, signature)


# --- AEADs ------------------------------------------------------------------------------------


def _check_aead(
    vector: Vector, nonce_len: int, encrypt: AeadFunction, decrypt: AeadFunction
) -> None:
    key = vector.hex("key")
    nonce = vector.hex("iv")
    aad = vector.hex("aad")
    message = vector.hex("msg")
    sealed = vector.hex("ct") + vector.hex("tag")
    # The group's declared sizes must describe the case's bytes.
    assert int(vector.group["ivSize"]) == 8 * len(nonce)
    assert int(vector.group["keySize"]) == 8 * len(key)

    if len(key) != AEAD_KEY_LEN or len(nonce) != nonce_len:
        # A key or nonce size our wrapper does not implement: both directions refuse it.
        assert vector.result == "invalid"
        with pytest.raises(InvalidKey):
            encrypt(key, nonce, message, aad)
        with pytest.raises(InvalidKey):
            decrypt(key, nonce, sealed, aad)
        return

    if int(vector.group["tagSize"]) != 8 * AEAD_TAG_LEN:
        # Truncated tags are not a mode of ours: whatever the verdict, decryption refuses it.
        with pytest.raises(DecryptionError):
            decrypt(key, nonce, sealed, aad)
        return

    if vector.result == "valid":
        assert encrypt(key, nonce, message, aad) == sealed
        assert decrypt(key, nonce, sealed, aad) == message
    else:
        assert vector.result == "invalid"
        assert encrypt(key, nonce, message, aad) != sealed
        with pytest.raises(DecryptionError):
            decrypt(key, nonce, sealed, aad)


@pytest.mark.parametrize("vector", CHACHA.vectors, ids=CHACHA.ids)
def test_chacha20poly1305(vector: Vector) -> None:
    _check_aead(vector, CHACHA_NONCE_LEN, chacha20poly1305_encrypt, chacha20poly1305_decrypt)


@pytest.mark.parametrize("vector", XCHACHA.vectors, ids=XCHACHA.ids)
def test_xchacha20poly1305(vector: Vector) -> None:
    _check_aead(vector, XCHACHA_NONCE_LEN, xchacha20poly1305_encrypt, xchacha20poly1305_decrypt)


# --- HKDF-SHA256 ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", HKDF.vectors, ids=HKDF.ids)
def test_hkdf_sha256(vector: Vector) -> None:
    ikm = vector.hex("ikm")
    salt = vector.hex("salt")
    info = vector.hex("info")
    size = int(vector.case["size"])
    if vector.result == "valid":
        assert hkdf_sha256(ikm, salt, info, size) == vector.hex("okm")
    else:
        # The only invalid HKDF-SHA256 cases ask for more than 255 * 32 bytes of output.
        assert vector.result == "invalid"
        with pytest.raises(ValueError, match="output length"):
            hkdf_sha256(ikm, salt, info, size)


# --- ML-KEM-768 -------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", MLKEM.vectors, ids=MLKEM.ids)
def test_mlkem768_decapsulate(vector: Vector) -> None:
    assert vector.group["parameterSet"] == "ML-KEM-768"
    seed = vector.hex("seed")
    public = vector.optional_hex("ek")  # left out of the cases with a malformed seed
    ciphertext = vector.hex("c")
    if vector.result == "valid":
        assert public is not None
        private = mlkem768_private_from_seed(seed)
        assert mlkem768_public(private) == public
        assert mlkem768_decapsulate(private, ciphertext) == vector.hex("K")
        # The vector's encapsulation key is accepted and round-trips through our wrappers.
        fresh_ciphertext, fresh_shared = mlkem768_encapsulate(public)
        assert len(fresh_ciphertext) == MLKEM768_CIPHERTEXT_LEN
        assert len(fresh_shared) == MLKEM768_SHARED_LEN
        assert mlkem768_decapsulate(private, fresh_ciphertext) == fresh_shared
        return

    assert vector.result == "invalid"
    if len(seed) != MLKEM768_SEED_LEN:
        # "Private key too short/long": the seed is refused before any decapsulation.
        with pytest.raises(InvalidKey):
            mlkem768_private_from_seed(seed)
        return
    # "Ciphertext too short/long": the key is fine, the ciphertext is refused.
    private = mlkem768_private_from_seed(seed)
    if public is not None:
        assert mlkem768_public(private) == public
    assert len(ciphertext) != MLKEM768_CIPHERTEXT_LEN
    with pytest.raises(DecryptionError):
        mlkem768_decapsulate(private, ciphertext)


@pytest.mark.parametrize("vector", MLKEM_KEYGEN.vectors, ids=MLKEM_KEYGEN.ids)
def test_mlkem768_keygen_from_seed(vector: Vector) -> None:
    assert vector.group["parameterSet"] == "ML-KEM-768"
    seed = vector.hex("seed")
    assert vector.result == "valid"
    public = mlkem768_public(mlkem768_private_from_seed(seed))
    assert public == vector.hex("ek")
    # Our wrapper keeps the private key as its seed, so the 2400-byte expanded decapsulation key
    # cannot be compared whole; FIPS 203 dk = dk_pke (1152) || ek || H(ek) || z, and every part
    # but dk_pke is checked against our output.
    dk = vector.hex("dk")
    assert len(dk) == 1152 + MLKEM768_PUBLIC_LEN + 32 + 32
    assert dk[1152 : 1152 + MLKEM768_PUBLIC_LEN] == public
    assert dk[1152 + MLKEM768_PUBLIC_LEN : -32] == hashlib.sha3_256(public).digest()
    assert dk[-32:] == seed[32:]


def test_mlkem768_encapsulate_rejects_bad_public_key() -> None:
    """Not a Wycheproof case: the FIPS 203 modulus check and the length check of
    ``mlkem768_encapsulate``, on a key derived from the first keygen vector."""
    public = MLKEM_KEYGEN.vectors[0].hex("ek")
    mlkem768_encapsulate(public)  # the unmodified key is accepted
    # The first 12-bit coefficient becomes 0xFFF = 4095 >= q = 3329.
    out_of_range = bytes([0xFF, public[1] | 0x0F]) + public[2:]
    with pytest.raises(InvalidKey):
        mlkem768_encapsulate(out_of_range)
    with pytest.raises(InvalidKey):
        mlkem768_encapsulate(public[:-1])
    with pytest.raises(InvalidKey):
        mlkem768_encapsulate(public + b"\x00")
