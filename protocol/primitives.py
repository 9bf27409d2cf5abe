"""Thin, typed wrappers over the cryptographic primitives Liaison uses.

Theory of operation: every primitive the protocol calls goes through this module, so that

* lengths are checked before libsodium or OpenSSL sees the bytes (``InvalidKey``),
* every AEAD authentication failure becomes the one opaque ``DecryptionError``,
* an all-zero X25519 output (a low-order peer point) becomes ``UnsafeKeyAgreement``,
* randomness and ML-KEM encapsulation can be injected, so vectors are reproducible.

Primitives (SPEC.md §4): X25519, Ed25519, XChaCha20-Poly1305 (end-to-end), ChaCha20-Poly1305
IETF (Noise link), HKDF-SHA256 (RFC 5869), keyed BLAKE2b (chain KDF), BLAKE2b (Noise hash) and
ML-KEM-768 (FIPS 203).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import mlkem
from nacl import bindings as _nacl
from nacl import exceptions as _nacl_exc

from liaison.protocol.errors import BadSignature, DecryptionError, InvalidKey, UnsafeKeyAgreement

__all__ = [
    "AEAD_KEY_LEN",
    "AEAD_TAG_LEN",
    "ED25519_PUBLIC_LEN",
    "ED25519_SEED_LEN",
    "ED25519_SIGNATURE_LEN",
    "MLKEM768_CIPHERTEXT_LEN",
    "MLKEM768_PUBLIC_LEN",
    "MLKEM768_SEED_LEN",
    "MLKEM768_SHARED_LEN",
    "X25519_LEN",
    "XCHACHA_NONCE_LEN",
    "Encapsulate",
    "MlKemPrivate",
    "RandomBytes",
    "chacha20poly1305_decrypt",
    "chacha20poly1305_encrypt",
    "ct_equal",
    "ed25519_public_from_seed",
    "ed25519_public_to_x25519",
    "ed25519_seed_to_x25519",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "kdf_chain",
    "mlkem768_decapsulate",
    "mlkem768_encapsulate",
    "mlkem768_private_from_seed",
    "mlkem768_public",
    "system_random",
    "x25519",
    "x25519_public",
    "xchacha20poly1305_decrypt",
    "xchacha20poly1305_encrypt",
]

X25519_LEN = 32
ED25519_SEED_LEN = 32
ED25519_PUBLIC_LEN = 32
ED25519_SIGNATURE_LEN = 64
AEAD_KEY_LEN = 32
AEAD_TAG_LEN = 16
XCHACHA_NONCE_LEN = 24
CHACHA_NONCE_LEN = 12
MLKEM768_SEED_LEN = 64
MLKEM768_PUBLIC_LEN = 1184
MLKEM768_CIPHERTEXT_LEN = 1088
MLKEM768_SHARED_LEN = 32

RandomBytes = Callable[[int], bytes]
"""A source of random bytes: ``rng(n)`` returns exactly ``n`` bytes."""

Encapsulate = Callable[[bytes], tuple[bytes, bytes]]
"""ML-KEM-768 encapsulation: ``encaps(public_key) -> (ciphertext, shared_secret)``."""

_ZERO32 = bytes(32)


def system_random(n: int) -> bytes:
    """The operating system's CSPRNG. The default for every ``rng`` parameter."""
    return os.urandom(n)


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two byte strings."""
    return hmac.compare_digest(a, b)


def _check_len(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise InvalidKey(f"{name} must be {length} bytes, got {len(value)}")


# --- X25519 -----------------------------------------------------------------------------------


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key for a 32-byte private scalar (clamped as RFC 7748 says)."""
    _check_len("X25519 private key", private, X25519_LEN)
    return bytes(_nacl.crypto_scalarmult_base(private))


def x25519(private: bytes, public: bytes) -> bytes:
    """X25519 agreement. Raises ``UnsafeKeyAgreement`` when the result is all zero.

    libsodium refuses all-zero outputs itself; the explicit check keeps that guarantee
    whatever the backend.
    """
    _check_len("X25519 private key", private, X25519_LEN)
    _check_len("X25519 public key", public, X25519_LEN)
    try:
        shared = bytes(_nacl.crypto_scalarmult(private, public))
    except _nacl_exc.RuntimeError as exc:
        raise UnsafeKeyAgreement("X25519 produced the all-zero output") from exc
    if hmac.compare_digest(shared, _ZERO32):
        raise UnsafeKeyAgreement("X25519 produced the all-zero output")
    return shared


# --- Ed25519 ----------------------------------------------------------------------------------


def ed25519_public_from_seed(seed: bytes) -> bytes:
    _check_len("Ed25519 seed", seed, ED25519_SEED_LEN)
    public, _secret = _nacl.crypto_sign_seed_keypair(seed)
    return bytes(public)


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """A detached 64-byte Ed25519 signature (RFC 8032, pure Ed25519)."""
    _check_len("Ed25519 seed", seed, ED25519_SEED_LEN)
    _public, secret = _nacl.crypto_sign_seed_keypair(seed)
    signed = _nacl.crypto_sign(message, secret)
    return bytes(signed[:ED25519_SIGNATURE_LEN])


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Verify a detached signature; raise ``BadSignature`` on any failure.

    libsodium's verifier rejects non-canonical encodings and small-order public keys.
    """
    if len(public) != ED25519_PUBLIC_LEN or len(signature) != ED25519_SIGNATURE_LEN:
        raise BadSignature("signature or public key has the wrong length")
    try:
        _nacl.crypto_sign_open(signature + message, public)
    except (_nacl_exc.BadSignatureError, _nacl_exc.ValueError, _nacl_exc.RuntimeError) as exc:
        raise BadSignature("signature does not verify") from exc


def ed25519_public_to_x25519(public: bytes) -> bytes:
    """The X25519 (Montgomery) form of an Ed25519 public key."""
    _check_len("Ed25519 public key", public, ED25519_PUBLIC_LEN)
    try:
        return bytes(_nacl.crypto_sign_ed25519_pk_to_curve25519(public))
    except (_nacl_exc.RuntimeError, _nacl_exc.ValueError) as exc:
        raise InvalidKey("Ed25519 public key is not a valid curve point") from exc


def ed25519_seed_to_x25519(seed: bytes) -> bytes:
    """The X25519 private scalar matching ``ed25519_public_to_x25519`` of the seed's key."""
    _check_len("Ed25519 seed", seed, ED25519_SEED_LEN)
    _public, secret = _nacl.crypto_sign_seed_keypair(seed)
    return bytes(_nacl.crypto_sign_ed25519_sk_to_curve25519(secret))


# --- AEADs ------------------------------------------------------------------------------------


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): ciphertext with the 16-byte tag appended."""
    _check_len("XChaCha20-Poly1305 key", key, AEAD_KEY_LEN)
    _check_len("XChaCha20-Poly1305 nonce", nonce, XCHACHA_NONCE_LEN)
    return bytes(_nacl.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))


def xchacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Decrypt and authenticate; any failure raises the opaque ``DecryptionError``."""
    _check_len("XChaCha20-Poly1305 key", key, AEAD_KEY_LEN)
    _check_len("XChaCha20-Poly1305 nonce", nonce, XCHACHA_NONCE_LEN)
    try:
        return bytes(_nacl.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key))
    except (_nacl_exc.CryptoError, ValueError, TypeError) as exc:
        raise DecryptionError() from exc


def chacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """ChaCha20-Poly1305 as in RFC 8439 (96-bit nonce)."""
    _check_len("ChaCha20-Poly1305 key", key, AEAD_KEY_LEN)
    _check_len("ChaCha20-Poly1305 nonce", nonce, CHACHA_NONCE_LEN)
    return bytes(_nacl.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))


def chacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    _check_len("ChaCha20-Poly1305 key", key, AEAD_KEY_LEN)
    _check_len("ChaCha20-Poly1305 nonce", nonce, CHACHA_NONCE_LEN)
    try:
        return bytes(_nacl.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key))
    except (_nacl_exc.CryptoError, ValueError, TypeError) as exc:
        raise DecryptionError() from exc


# --- KDFs -------------------------------------------------------------------------------------


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869). An empty ``salt`` means 32 zero bytes, as the RFC says."""
    if not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF-SHA256 output length must be 1..8160, got {length}")
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]


_CHAIN_PERSON = b"LiaisonChain\x00v1"


def kdf_chain(chain_key: bytes) -> tuple[bytes, bytes]:
    """The symmetric-key ratchet step (SPEC.md §8.2): ``(next_chain_key, message_key)``.

    ``BLAKE2b-512(key=chain_key, person="LiaisonChain\\0v1", data=0x01)`` split in two halves.
    Keyed BLAKE2b is a PRF (RFC 7693 §2.3), so the halves are independent keys.
    """
    out = hashlib.blake2b(b"\x01", key=chain_key, person=_CHAIN_PERSON).digest()
    return out[:32], out[32:]


# --- ML-KEM-768 -------------------------------------------------------------------------------


MlKemPrivate = mlkem.MLKEM768PrivateKey


def mlkem768_private_from_seed(seed: bytes) -> MlKemPrivate:
    """Expand a 64-byte FIPS 203 seed (d || z) into a private key object (reuse it: expansion
    costs about as much as a decapsulation)."""
    _check_len("ML-KEM-768 seed", seed, MLKEM768_SEED_LEN)
    return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)


def mlkem768_public(private: MlKemPrivate) -> bytes:
    """The 1184-byte encapsulation key of a private key."""
    return private.public_key().public_bytes_raw()


def mlkem768_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to a public key: ``(ciphertext, shared_secret)``. Randomness from OpenSSL."""
    _check_len("ML-KEM-768 public key", public, MLKEM768_PUBLIC_LEN)
    try:
        key = mlkem.MLKEM768PublicKey.from_public_bytes(public)
    except ValueError as exc:
        raise InvalidKey("ML-KEM-768 public key fails the FIPS 203 modulus check") from exc
    shared, ciphertext = key.encapsulate()
    return ciphertext, shared


def mlkem768_decapsulate(private: MlKemPrivate, ciphertext: bytes) -> bytes:
    """Decapsulate with the private key given by its seed.

    ML-KEM decapsulation never fails on a well-sized ciphertext: a tampered one yields an
    unrelated (implicitly rejected) secret, so the later AEAD fails instead.
    """
    if len(ciphertext) != MLKEM768_CIPHERTEXT_LEN:
        raise DecryptionError()
    return private.decapsulate(ciphertext)
