"""Tests for the SPEC.md requirements that no other test pinned (see ``requirements.py``).

Every test's docstring starts with the id(s) of the requirement(s) it pins. The tests use real
cryptography only. Where a test re-derives a value independently of ``liaison.protocol`` it uses
``hashlib``/``hmac`` (HKDF, BLAKE2b, SHA-2), raw libsodium through PyNaCl's bindings (X25519,
the AEADs) and the small pure-Python Edwards25519 arithmetic below (point checks and the
Ed25519 -> X25519 map).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import inspect
import itertools
import logging
import os
import pkgutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium
from nacl import exceptions as sodium_errors

import liaison.protocol
from liaison.protocol import primitives as p
from liaison.protocol import ratchet as ratchet_module
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.enrollment import (
    ENROLL_PROLOGUE,
    EnrollmentCode,
    EnrollmentInitiator,
    EnrollmentResponder,
    EnrollRequest,
    EnrollResponse,
    build_request,
    relay_key_fingerprint,
    secret_hash,
)
from liaison.protocol.envelope import (
    Body,
    ContentType,
    Envelope,
    EnvelopeKind,
    Precedence,
    SessionSetup,
)
from liaison.protocol.errors import (
    BadSignature,
    DecryptionError,
    HandshakeFailed,
    InvalidKey,
    MalformedData,
    StateError,
)
from liaison.protocol.frames import AckFrame, PingFrame, decode_frame, encode_frame
from liaison.protocol.keys import (
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
from liaison.protocol.link import LINK_PROLOGUE, MAX_FRAME_LEN, LinkInitiator, LinkTransport
from liaison.protocol.noise import CipherState, HandshakeState
from liaison.protocol.session import Session, initiate, respond

CELL_A = bytes.fromhex("a1" * 16)
"""The initiator's (Alice's) cell id."""
CELL_B = bytes.fromhex("b2" * 16)
"""The responder's (Bob's) cell id."""
EXPIRES_AT = 1_900_000_000
RESERVED_ID = 0xFFFFFFFF

# --- independent re-computations ----------------------------------------------------------------


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 written out from the RFC (extract, then expand)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


CHAIN_PERSON = bytes.fromhex("4c696169736f6e436861696e007631") + b"\x00"
"""SPEC.md [M-PRIM-8]: the 15 bytes "LiaisonChain" 0x00 "v1" zero-padded to 16."""


def chain_kdf(chain_key: bytes) -> tuple[bytes, bytes]:
    """SPEC.md [M-PRIM-8], with every BLAKE2b parameter spelled out."""
    out = hashlib.blake2b(
        b"\x01", digest_size=64, key=chain_key, salt=bytes(16), person=CHAIN_PERSON
    ).digest()
    return out[:32], out[32:]


def root_kdf(root_key: bytes, dh_out: bytes, kem_secret: bytes) -> tuple[bytes, bytes, bytes]:
    """SPEC.md §8.2 ``KDF_RK_HE``."""
    out = hkdf_sha256(dh_out + kem_secret, root_key, b"Liaison v1 ratchet", 96)
    return out[:32], out[32:64], out[64:]


def raw_x25519(private: bytes, public: bytes) -> bytes:
    return bytes(sodium.crypto_scalarmult(private, public))


def xchacha_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return bytes(sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))


def xchacha_open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    return bytes(sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key))


# --- Edwards25519, pure Python (extended coordinates) -------------------------------------------

FIELD_P = 2**255 - 19
GROUP_L = 2**252 + 27742317777372353535851937790883648493
CURVE_D = -121665 * pow(121666, FIELD_P - 2, FIELD_P) % FIELD_P
SQRT_M1 = pow(2, (FIELD_P - 1) // 4, FIELD_P)

Point = tuple[int, int, int, int]
IDENTITY: Point = (0, 1, 1, 0)


def _inv(x: int) -> int:
    return pow(x, FIELD_P - 2, FIELD_P)


def _recover_x(y: int, sign: int) -> int | None:
    """The x with the given sign bit on the curve at ``y``, or None if there is none."""
    x2 = (y * y - 1) * _inv(CURVE_D * y * y + 1) % FIELD_P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (FIELD_P + 3) // 8, FIELD_P)
    if (x * x - x2) % FIELD_P:
        x = x * SQRT_M1 % FIELD_P
    if (x * x - x2) % FIELD_P:
        return None
    return FIELD_P - x if (x & 1) != sign else x


def ed_add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    e1 = (y1 - x1) * (y2 - x2) % FIELD_P
    e2 = (y1 + x1) * (y2 + x2) % FIELD_P
    c = 2 * t1 * t2 * CURVE_D % FIELD_P
    d = 2 * z1 * z2 % FIELD_P
    e, f, g, h = e2 - e1, d - c, d + c, e2 + e1
    return (e * f % FIELD_P, g * h % FIELD_P, f * g % FIELD_P, e * h % FIELD_P)


def ed_mul(scalar: int, point: Point) -> Point:
    result = IDENTITY
    while scalar > 0:
        if scalar & 1:
            result = ed_add(result, point)
        point = ed_add(point, point)
        scalar >>= 1
    return result


def ed_encode(point: Point) -> bytes:
    x, y, z, _ = point
    zi = _inv(z)
    x, y = x * zi % FIELD_P, y * zi % FIELD_P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def ed_decode(data: bytes, *, lax: bool = False) -> Point:
    """Decode a point; ``lax`` reduces a non-canonical y mod p, as a careless verifier would."""
    value = int.from_bytes(data, "little")
    y, sign = value & (2**255 - 1), value >> 255
    if lax:
        y %= FIELD_P
    assert y < FIELD_P, "non-canonical encoding"
    x = _recover_x(y, sign)
    assert x is not None, "not a curve point"
    return (x, y, 1, x * y % FIELD_P)


_BASE_Y = 4 * _inv(5) % FIELD_P
_BASE_X = _recover_x(_BASE_Y, 0)
assert _BASE_X is not None
BASE: Point = (_BASE_X, _BASE_Y, 1, _BASE_X * _BASE_Y % FIELD_P)
TORSION_2 = ed_decode(bytes.fromhex("ec" + "ff" * 30 + "7f"))  # (0, -1): order 2
TORSION_8 = ed_decode(
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
)


def ed_secret_scalar(seed: bytes) -> int:
    """RFC 8032 §5.1.5: the clamped first half of SHA-512(seed), as an integer."""
    return int.from_bytes(clamped_scalar(seed), "little")


def clamped_scalar(seed: bytes) -> bytes:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def ed_challenge(r_enc: bytes, a_enc: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r_enc + a_enc + message).digest(), "little") % GROUP_L


def montgomery_u(ed_public: bytes) -> bytes:
    """SPEC.md [M-PRIM-4]: u = (1 + y) / (1 - y) mod p."""
    y = int.from_bytes(ed_public, "little") & (2**255 - 1)
    return ((1 + y) * _inv(1 - y) % FIELD_P).to_bytes(32, "little")


def sign_as_mixed_order(seed: bytes, message: bytes) -> tuple[bytes, bytes]:
    """The encoding of ``A + T2`` (``A`` the seed's public key, ``T2`` of order 2: a point
    outside the prime-order subgroup) and a signature of ``message`` under it that passes the
    cofactorless equation (the nonce is ground until ``k`` is even, so ``[k]T2`` vanishes)."""
    a = ed_secret_scalar(seed)
    mixed = ed_encode(ed_add(ed_mul(a, BASE), TORSION_2))
    for r in itertools.count(1):
        r_enc = ed_encode(ed_mul(r, BASE))
        k = ed_challenge(r_enc, mixed, message)
        if k % 2 == 0:
            return mixed, r_enc + ((r + k * a) % GROUP_L).to_bytes(32, "little")
    raise AssertionError("unreachable")


# --- sessions -------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingRng:
    """OS randomness that remembers every draw."""

    def __init__(self) -> None:
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = os.urandom(n)
        self.draws.append(out)
        return out


class RecordingEncaps:
    """Real ML-KEM-768 encapsulation that remembers ``(public key, ciphertext, secret)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes, bytes]] = []

    def __call__(self, public: bytes) -> tuple[bytes, bytes]:
        ciphertext, shared = p.mlkem768_encapsulate(public)
        self.calls.append((public, ciphertext, shared))
        return ciphertext, shared


_message_ids = itertools.count(1)


def seal(session: Session, payload: bytes) -> bytes:
    return session.seal(
        ContentType.TEXT,
        payload,
        message_id=next(_message_ids).to_bytes(16, "big"),
        precedence=Precedence.ROUTINE,
        expires_at=EXPIRES_AT,
    )


def open_envelope(session: Session, data: bytes) -> Body:
    return session.open(Envelope.decode(data))


@dataclass
class Bob:
    """The responder's keys and the bundle publishing them."""

    identity: IdentityKeyPair
    spk: X25519KeyPair
    kem: KemKeyPair
    otk: X25519KeyPair | None
    spk_id: int = 1
    kem_id: int = 2
    otk_id: int = 3

    def bundle(self) -> PrekeyBundle:
        otk = None if self.otk is None else OneTimePrekey(self.otk_id, self.otk.public)
        return PrekeyBundle(
            CELL_B,
            self.identity.public,
            SignedPrekey.create(self.identity, self.spk_id, self.spk),
            SignedKemPrekey.create(self.identity, self.kem_id, self.kem),
            otk,
        )

    def accept(
        self,
        data: bytes,
        *,
        clock: Clock,
        rng: p.RandomBytes = p.system_random,
        encaps: p.Encapsulate = p.mlkem768_encapsulate,
    ) -> tuple[Session, Body]:
        envelope = Envelope.decode(data)
        assert envelope.setup is not None
        otk = self.otk if envelope.setup.one_time_prekey_id is not None else None
        session = respond(
            self.identity,
            CELL_B,
            CELL_A,
            envelope.setup,
            self.spk,
            self.kem,
            otk,
            rng=rng,
            encaps=encaps,
            clock=clock,
        )
        return session, session.open(envelope)


def make_bob(*, one_time: bool = True, ids: tuple[int, int, int] = (1, 2, 3)) -> Bob:
    return Bob(
        IdentityKeyPair.generate(),
        X25519KeyPair.generate(),
        KemKeyPair.generate(),
        X25519KeyPair.generate() if one_time else None,
        *ids,
    )


def first_contact(clock: Clock) -> tuple[Session, Session]:
    """Alice's session and Bob's, after Bob opened Alice's first (prekey) envelope."""
    bob_keys = make_bob()
    alice = initiate(IdentityKeyPair.generate(), CELL_A, bob_keys.bundle(), clock=clock)
    bob, body = bob_keys.accept(seal(alice, b"first"), clock=clock)
    assert body.payload == b"first"
    return alice, bob


def established(clock: Clock) -> tuple[Session, Session]:
    """As ``first_contact``, then Alice opened Bob's reply: both have taken a DH+KEM step and
    Alice's next envelope starts a new chain (no setup block)."""
    alice, bob = first_contact(clock)
    assert open_envelope(alice, seal(bob, b"reply")).payload == b"reply"
    assert alice.pending_setup is None
    return alice, bob


def restored(
    session: Session,
    clock: Clock,
    *,
    rng: p.RandomBytes = p.system_random,
    encaps: p.Encapsulate = p.mlkem768_encapsulate,
) -> Session:
    """A copy of ``session`` (through its serialization), with the given rng and encaps."""
    return Session.from_bytes(session.to_bytes(), rng=rng, encaps=encaps, clock=clock)


def out_of_range_kem_key() -> bytes:
    """A 1184-byte ML-KEM-768 key whose first coefficient is 4095 >= q: fails the FIPS 203 §7.2
    modulus check."""
    public = bytes(KemKeyPair.generate().public)
    return bytes([0xFF, public[1] | 0x0F]) + public[2:]


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


# === §4 primitives ===========================================================================


def _protocol_callables() -> Iterator[tuple[str, Callable[..., object]]]:
    """Every function and method defined in the ``liaison.protocol`` package."""
    for info in pkgutil.iter_modules(liaison.protocol.__path__):
        module = importlib.import_module(f"liaison.protocol.{info.name}")
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{info.name}.{obj.__qualname__}", obj
            elif inspect.isclass(obj):
                for member in vars(obj).values():
                    function = getattr(member, "__func__", member)  # classmethod/staticmethod
                    if inspect.isfunction(function):
                        yield f"{info.name}.{function.__qualname__}", function


def test_prim1_randomness_comes_from_the_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    """[M-PRIM-1] Every ``rng`` parameter of the protocol package defaults to
    ``system_random``, which is the OS CSPRNG (``os.urandom``); with the defaults, identity and
    prekeys, the enrollment secret, the session ephemeral and first ratchet keys, every
    end-to-end nonce, the keys of a ratchet step and the Noise ephemeral are OS random bytes."""
    with_rng: dict[str, object] = {}
    for name, function in _protocol_callables():
        parameters = inspect.signature(function).parameters
        if "rng" in parameters:
            with_rng[name] = parameters["rng"].default
        if "encaps" in parameters:  # ML-KEM randomness: OpenSSL's CSPRNG
            assert parameters["encaps"].default is p.mlkem768_encapsulate, name
    expected = {
        "keys._PrivateBytes.generate",
        "enrollment.EnrollmentCode.generate",
        "enrollment.EnrollmentInitiator.__init__",
        "enrollment.EnrollmentResponder.__init__",
        "link.LinkInitiator.__init__",
        "link.LinkResponder.__init__",
        "noise.HandshakeState.__init__",
        "ratchet.Ratchet.__init__",
        "ratchet.Ratchet.initiator",
        "ratchet.Ratchet.responder",
        "session.initiate",
        "session.respond",
        "session.Session.from_bytes",
    }
    assert expected <= set(with_rng)
    assert {name for name, default in with_rng.items() if default is not p.system_random} == set()

    drawn: list[bytes] = []
    real_urandom = os.urandom

    def urandom(n: int) -> bytes:
        out = real_urandom(n)
        drawn.append(out)
        return out

    monkeypatch.setattr(os, "urandom", urandom)
    assert p.system_random(24) == drawn[-1]

    bob = make_bob()  # identity, SPK, KEM prekey, OTK: four draws
    assert [len(d) for d in drawn[-4:]] == [32, 32, 64, 32]
    assert bob.identity.private_bytes() == drawn[-4]
    assert bob.kem.private_bytes() == drawn[-2]
    relay = X25519KeyPair.generate()

    drawn.clear()
    code = EnrollmentCode.generate(bytes(relay.public))
    assert drawn == [code.secret]

    clock = Clock()
    drawn.clear()
    alice = initiate(IdentityKeyPair.generate(), CELL_A, bob.bundle(), clock=clock)
    assert [len(d) for d in drawn] == [32, 32, 32, 64]  # identity; EK_A, DHs, KEMs seed
    assert alice.pending_setup is not None
    assert bytes(alice.pending_setup.ephemeral) == p.x25519_public(drawn[1])
    assert alice.ratchet.state.dhs.private_bytes() == drawn[2]
    assert alice.ratchet.state.kems.private_bytes() == drawn[3]

    drawn.clear()
    data = seal(alice, b"nonce")
    assert drawn == [Envelope.decode(data).header_nonce]

    drawn.clear()
    bob_session, _ = bob.accept(data, clock=clock)  # Bob's first DH+KEM step
    assert [len(d) for d in drawn] == [32, 64]
    assert bob_session.ratchet.state.dhs.private_bytes() == drawn[0]
    assert bob_session.ratchet.state.kems.private_bytes() == drawn[1]

    cell = X25519KeyPair.generate()
    drawn.clear()
    hello = LinkInitiator(cell.private_bytes(), bytes(relay.public)).write_hello()
    assert len(drawn) == 1
    assert hello[:32] == p.x25519_public(drawn[0])


def _lax_accepts(public: bytes, message: bytes, signature: bytes, *, cofactor: int) -> bool:
    """Whether a careless verifier accepts: it reduces y and S instead of rejecting them, does
    not look for small-order points and checks ``[c][S]B = [c](R + [k]A)`` for cofactor c."""
    a_point = ed_decode(public, lax=True)
    r_point = ed_decode(signature[:32], lax=True)
    s = int.from_bytes(signature[32:], "little") % GROUP_L
    k = ed_challenge(signature[:32], public, message)
    left = ed_mul(cofactor * s, BASE)
    right = ed_mul(cofactor, ed_add(r_point, ed_mul(k, a_point)))
    return ed_encode(left) == ed_encode(right)


def _strict_rejection_cases() -> dict[str, tuple[bytes, bytes, bytes, int]]:
    """(public key, message, signature, cofactor of the careless check that accepts it)."""
    seed = bytes(range(32))
    a = ed_secret_scalar(seed)
    public = ed_encode(ed_mul(a, BASE))
    assert public == p.ed25519_public_from_seed(seed)
    identity = ed_encode(IDENTITY)
    message = b"Liaison v1 signed prekey"
    cases: dict[str, tuple[bytes, bytes, bytes, int]] = {}
    # A public key of small order: R = O, S = 0 satisfies the equation for every message.
    cases["small-order-key"] = (identity, message, identity + bytes(32), 1)
    torsion = ed_encode(TORSION_8)
    ground = next(
        b"m%d" % i
        for i in itertools.count()
        if ed_challenge(identity, torsion, b"m%d" % i) % 8 == 0
    )
    cases["order-8-key"] = (torsion, ground, identity + bytes(32), 1)
    # y = p + 1: a non-canonical encoding (of the neutral element).
    non_canonical = (FIELD_P + 1).to_bytes(32, "little")
    cases["non-canonical-key"] = (non_canonical, message, identity + bytes(32), 1)
    # A genuine key, R = O (small order), S = k * a: the cofactorless equation holds.
    k = ed_challenge(identity, public, message)
    forged_s = (k * a % GROUP_L).to_bytes(32, "little")
    cases["small-order-R"] = (public, message, identity + forged_s, 1)
    # R = rB + T8: holds only for the cofactored equation; a cofactorless verifier rejects it.
    r = 0x1234567
    mixed_r = ed_encode(ed_add(ed_mul(r, BASE), TORSION_8))
    k = ed_challenge(mixed_r, public, message)
    mixed_s = ((r + k * a) % GROUP_L).to_bytes(32, "little")
    cases["mixed-order-R"] = (public, message, mixed_r + mixed_s, 8)
    # A genuine signature with S + L in place of S.
    honest = p.ed25519_sign(seed, message)
    s_plus_l = int.from_bytes(honest[32:], "little") + GROUP_L
    cases["S-not-below-L"] = (public, message, honest[:32] + s_plus_l.to_bytes(32, "little"), 1)
    return cases


STRICT_CASES = _strict_rejection_cases()


@pytest.mark.parametrize("case", list(STRICT_CASES))
def test_prim3_strict_ed25519_verification(case: str) -> None:
    """[M-PRIM-3] Verification rejects small-order and non-canonical public keys, a small-order
    R, an S >= L, and checks the cofactorless equation: every case here is accepted by a
    careless verifier (checked), and must be BadSignature for ``ed25519_verify`` and
    ``IdentityKey.verify``."""
    public, message, signature, cofactor = STRICT_CASES[case]
    assert _lax_accepts(public, message, signature, cofactor=cofactor)
    if case == "mixed-order-R":
        assert not _lax_accepts(public, message, signature, cofactor=1)
    with pytest.raises(BadSignature):
        p.ed25519_verify(public, message, signature)
    with pytest.raises(BadSignature):
        IdentityKey(public).verify(message, signature)


def test_prim3_pure_python_signer_is_sound() -> None:
    """[M-PRIM-3] Control for the test above: an honest signature made with the same
    pure-Python arithmetic verifies, so the rejections are the verifier's strictness."""
    seed = bytes(range(32))
    a = ed_secret_scalar(seed)
    public = ed_encode(ed_mul(a, BASE))
    r_enc = ed_encode(ed_mul(0x1234567, BASE))
    k = ed_challenge(r_enc, public, b"control")
    s = ((0x1234567 + k * a) % GROUP_L).to_bytes(32, "little")
    p.ed25519_verify(public, b"control", r_enc + s)
    assert _lax_accepts(public, b"control", r_enc + s, cofactor=1)


@pytest.mark.parametrize("seed_byte", [0, 1, 7, 0x80, 0xFF])
def test_prim4_identity_conversion_formula(seed_byte: int) -> None:
    """[M-PRIM-4] The X25519 form of an identity key is u = (1 + y)/(1 - y) mod p, and the
    matching private scalar is the clamped first half of SHA-512(seed)."""
    seed = hashlib.sha256(bytes([seed_byte])).digest()
    identity = IdentityKeyPair(seed)
    public = bytes(identity.public)
    assert bytes(identity.public.x25519) == montgomery_u(public)
    assert p.ed25519_public_to_x25519(public) == montgomery_u(public)
    assert p.ed25519_seed_to_x25519(seed) == clamped_scalar(seed)
    assert p.x25519_public(clamped_scalar(seed)) == montgomery_u(public)
    peer = X25519KeyPair.generate()
    assert identity.dh(peer.public) == raw_x25519(clamped_scalar(seed), bytes(peer.public))


def _not_a_point() -> bytes:
    y = next(y for y in itertools.count(2) if _recover_x(y, 0) is None)
    return y.to_bytes(32, "little")


_GENUINE = ed_mul(ed_secret_scalar(bytes(32)), BASE)
UNCONVERTIBLE = {
    "not-a-point": _not_a_point(),
    "small-order": ed_encode(TORSION_8),
    "A+T2": ed_encode(ed_add(_GENUINE, TORSION_2)),
    "A+T8": ed_encode(ed_add(_GENUINE, TORSION_8)),
}


@pytest.mark.parametrize("case", list(UNCONVERTIBLE))
def test_prim4_conversion_rejects_non_points_and_points_outside_the_subgroup(case: str) -> None:
    """[M-PRIM-4] Conversion rejects a key that is not a curve point, one of small order, and
    one outside the prime-order subgroup (A + T for a torsion point T): InvalidKey."""
    p.ed25519_public_to_x25519(ed_encode(_GENUINE))  # control: the genuine key converts
    public = UNCONVERTIBLE[case]
    with pytest.raises(InvalidKey):
        p.ed25519_public_to_x25519(public)
    with pytest.raises(InvalidKey):
        _ = IdentityKey(public).x25519


def _mixed_order_bundle() -> tuple[PrekeyBundle, Bob]:
    """A bundle whose identity key is outside the prime-order subgroup but whose two prekey
    signatures verify (so only the conversion can stop it)."""
    bob = make_bob(one_time=False)
    seed = bob.identity.private_bytes()
    spk_data = SignedPrekey.signed_data(bob.spk_id, bob.spk.public)
    kem_data = SignedKemPrekey.signed_data(bob.kem_id, bob.kem.public)
    mixed, spk_signature = sign_as_mixed_order(seed, spk_data)
    _, kem_signature = sign_as_mixed_order(seed, kem_data)
    bundle = PrekeyBundle(
        CELL_B,
        IdentityKey(mixed),
        SignedPrekey(bob.spk_id, bob.spk.public, spk_signature),
        SignedKemPrekey(bob.kem_id, bob.kem.public, kem_signature),
    )
    return bundle, bob


def test_prim4_ses2_initiate_refuses_identity_outside_the_subgroup() -> None:
    """[M-PRIM-4][M-SES-2] A bundle whose identity key fails the conversion (it is outside the
    prime-order subgroup, yet both prekey signatures verify) aborts ``initiate`` with
    InvalidKey, before any ML-KEM encapsulation."""
    bundle, _ = _mixed_order_bundle()
    bundle.verify()  # the signatures are not what stops it
    encaps = RecordingEncaps()
    with pytest.raises(InvalidKey):
        initiate(IdentityKeyPair.generate(), CELL_A, bundle, encaps=encaps, clock=Clock())
    assert encaps.calls == []


def test_prim4_ses2_respond_refuses_setup_identity_outside_the_subgroup() -> None:
    """[M-PRIM-4][M-SES-2] A setup block whose IK_A fails the conversion (outside the
    prime-order subgroup) makes ``respond`` fail with MalformedData."""
    bob = make_bob()
    alice = initiate(IdentityKeyPair.generate(), CELL_A, bob.bundle(), clock=Clock())
    setup = alice.pending_setup
    assert setup is not None
    genuine = ed_decode(bytes(setup.identity))
    for torsion in (TORSION_2, TORSION_8):
        bad = dataclasses.replace(setup, identity=IdentityKey(ed_encode(ed_add(genuine, torsion))))
        with pytest.raises(MalformedData):
            respond(bob.identity, CELL_B, CELL_A, bad, bob.spk, bob.kem, bob.otk)


@pytest.mark.parametrize(
    "kind", [EnvelopeKind.PREKEY, EnvelopeKind.MESSAGE], ids=["prekey", "message"]
)
def test_prim6_rat4_encryption_nonce_and_associated_data(kind: EnvelopeKind) -> None:
    """[M-PRIM-6][M-RAT-4] Each message draws one fresh 24-byte nonce from the rng; the header
    is XChaCha20-Poly1305 under HKs over AD || env_ad, the body under the chain's next message
    key over AD || env_ad || nonce || hct (re-derived here independently), and the chain key
    advances by the chain KDF."""
    clock = Clock()
    alice, _ = first_contact(clock) if kind == EnvelopeKind.PREKEY else established(clock)
    rng = RecordingRng()
    alice = restored(alice, clock, rng=rng)
    s = alice.ratchet.state
    assert s.cks is not None
    assert s.hks is not None
    assert s.kem_ct is not None
    chain_before, header_key, pn, n = s.cks, s.hks, s.pn, s.ns
    data = seal(alice, b"layout")
    envelope = Envelope.decode(data)
    assert envelope.routing.kind == kind
    assert rng.draws == [envelope.header_nonce]
    env_ad = data[: 43 + (1164 if kind == EnvelopeKind.PREKEY else 0)]
    assert envelope.associated_data() == env_ad
    nonce, header_ct = envelope.header_nonce, envelope.header_ciphertext
    header = xchacha_open(header_key, nonce, header_ct, s.ad + env_ad)
    assert header == (
        bytes(s.dhs.public) + bytes(s.kems.public) + s.kem_ct + struct.pack(">II", pn, n)
    )
    next_chain, message_key = chain_kdf(chain_before)
    assert s.cks == next_chain
    body = xchacha_open(
        message_key, nonce, envelope.body_ciphertext, s.ad + env_ad + nonce + header_ct
    )
    assert Body.decode(body).payload == b"layout"
    for wrong_ad in (s.ad + env_ad, s.ad + env_ad + nonce, env_ad + nonce + header_ct):
        with pytest.raises(sodium_errors.CryptoError):
            xchacha_open(message_key, nonce, envelope.body_ciphertext, wrong_ad)


def test_prim6_nonces_are_never_repeated() -> None:
    """[M-PRIM-6] With the default rng, the nonces of many envelopes (several chains, both
    directions) are all distinct."""
    clock = Clock()
    alice, bob = established(clock)
    nonces = []
    for round_number in range(4):
        for sender, receiver in ((alice, bob), (bob, alice)):
            for i in range(8):
                data = seal(sender, b"%d-%d" % (round_number, i))
                nonces.append(Envelope.decode(data).header_nonce)
                open_envelope(receiver, data)
    assert len(set(nonces)) == len(nonces) == 64


@settings(max_examples=50, deadline=None)
@given(chain_key=st.binary(min_size=32, max_size=32))
def test_prim8_chain_kdf_definition(chain_key: bytes) -> None:
    """[M-PRIM-8] KDF_CK is BLAKE2b-512 keyed with ck, salt 16 zero bytes, personalization
    "LiaisonChain" 0x00 "v1" 0x00, over the single byte 0x01: next chain key || message key."""
    assert CHAIN_PERSON[:15] == b"LiaisonChain\x00v1"
    assert p.kdf_chain(chain_key) == chain_kdf(chain_key)


def test_prim9_bundle_kem_key_failing_the_modulus_check_is_refused() -> None:
    """[M-PRIM-9] A (validly signed) KEM prekey that fails the FIPS 203 modulus check is
    refused before any encapsulation: ``initiate`` raises InvalidKey."""
    bob = make_bob()
    bad = KemPublicKey(out_of_range_kem_key())
    bundle = dataclasses.replace(
        bob.bundle(),
        kem_prekey=SignedKemPrekey(
            bob.kem_id, bad, bob.identity.sign(SignedKemPrekey.signed_data(bob.kem_id, bad))
        ),
    )
    bundle.verify()
    with pytest.raises(InvalidKey):
        initiate(IdentityKeyPair.generate(), CELL_A, bundle, clock=Clock())


def test_prim10_secret_comparisons_are_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """[M-PRIM-10] The all-zero check of every X25519 output, the enrollment-fingerprint match
    and key equality go through ``hmac.compare_digest`` (the AEAD tags are compared inside
    libsodium)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    ours, theirs = X25519KeyPair.generate(), X25519KeyPair.generate()
    shared = ours.dh(theirs.public)
    assert calls == [(shared, bytes(32))]

    relay, other = X25519KeyPair.generate(), X25519KeyPair.generate()
    code = EnrollmentCode.generate(bytes(relay.public))
    calls.clear()
    assert code.matches(bytes(relay.public))
    assert not code.matches(bytes(other.public))
    assert calls == [
        (code.relay_fingerprint, relay_key_fingerprint(bytes(relay.public))),
        (code.relay_fingerprint, relay_key_fingerprint(bytes(other.public))),
    ]

    identity = IdentityKeyPair.generate().public
    calls.clear()
    assert identity == IdentityKey(bytes(identity))
    assert calls == [(bytes(identity), bytes(identity))]


# === §5 keys and enrollment =================================================================


def test_key1_prekey_kinds_have_separate_id_spaces() -> None:
    """[M-KEY-1] Signed prekeys, KEM prekeys and one-time prekeys have separate id spaces: one
    id used by all three kinds at once is a valid bundle, enrollment request and session."""
    bob = make_bob(ids=(7, 7, 7))
    bundle = bob.bundle()
    assert PrekeyBundle.decode(bundle.encode()) == bundle
    assert bundle.one_time_prekey is not None
    request = build_request(
        bytes(20),
        bob.identity,
        bytes(X25519KeyPair.generate().public),
        bundle.signed_prekey,
        bundle.kem_prekey,
        (bundle.one_time_prekey,),
    )
    assert EnrollRequest.decode(request.encode()) == request
    clock = Clock()
    alice = initiate(IdentityKeyPair.generate(), CELL_A, bundle, clock=clock)
    setup = alice.pending_setup
    assert setup is not None
    assert (setup.signed_prekey_id, setup.kem_prekey_id, setup.one_time_prekey_id) == (7, 7, 7)
    _, body = bob.accept(seal(alice, b"seven"), clock=clock)
    assert body.payload == b"seven"


_RELAY = X25519KeyPair(hashlib.sha256(b"relay").digest())
_LINK = X25519KeyPair(hashlib.sha256(b"link").digest())
_CELL_IDENTITY = IdentityKeyPair(hashlib.sha256(b"identity").digest())


def _enroll_request(otk_ids: tuple[int, ...] = (100, 101, 102)) -> EnrollRequest:
    identity = _CELL_IDENTITY
    return build_request(
        b"\x5a" * 20,
        identity,
        bytes(_LINK.public),
        SignedPrekey.create(identity, 1, X25519KeyPair(hashlib.sha256(b"spk").digest())),
        SignedKemPrekey.create(identity, 2, KemKeyPair(hashlib.sha512(b"kem").digest())),
        tuple(
            OneTimePrekey(i, X25519PublicKey(hashlib.sha256(b"otk%d" % n).digest()))
            for n, i in enumerate(otk_ids)
        ),
    )


def _enroll_signature_cases() -> dict[str, tuple[EnrollRequest, bytes]]:
    request = _enroll_request()
    spk, kem = request.signed_prekey, request.kem_prekey
    link = bytes(_LINK.public)
    other_x = X25519KeyPair.generate().public
    other_kem = KemKeyPair.generate().public
    return {
        "link-signature": (
            dataclasses.replace(request, link_signature=flip(request.link_signature, 9)),
            link,
        ),
        "other-link-key": (request, bytes(other_x)),
        "spk-signature": (
            dataclasses.replace(
                request,
                signed_prekey=SignedPrekey(spk.prekey_id, spk.public, flip(spk.signature, 40)),
            ),
            link,
        ),
        "spk-key": (
            dataclasses.replace(
                request, signed_prekey=SignedPrekey(spk.prekey_id, other_x, spk.signature)
            ),
            link,
        ),
        "spk-id": (
            dataclasses.replace(
                request, signed_prekey=SignedPrekey(spk.prekey_id + 1, spk.public, spk.signature)
            ),
            link,
        ),
        "kem-signature": (
            dataclasses.replace(
                request,
                kem_prekey=SignedKemPrekey(kem.prekey_id, kem.public, flip(kem.signature, 3)),
            ),
            link,
        ),
        "kem-key": (
            dataclasses.replace(
                request, kem_prekey=SignedKemPrekey(kem.prekey_id, other_kem, kem.signature)
            ),
            link,
        ),
        "identity": (
            dataclasses.replace(request, identity=IdentityKeyPair.generate().public),
            link,
        ),
    }


ENROLL_SIGNATURE_CASES = _enroll_signature_cases()


@pytest.mark.parametrize("case", list(ENROLL_SIGNATURE_CASES))
def test_key4_enr6_enroll_request_verify_checks_every_signature(case: str) -> None:
    """[M-KEY-4][M-ENR-6] ``EnrollRequest.verify`` checks the link-key signature against the
    Noise remote static key and both prekey signatures under the claimed identity: any one
    wrong is BadSignature (the genuine request verifies)."""
    _enroll_request().verify(bytes(_LINK.public))
    request, link_public = ENROLL_SIGNATURE_CASES[case]
    with pytest.raises(BadSignature):
        request.verify(link_public)


def test_enr1_enrollment_secret_entropy_and_stored_hash() -> None:
    """[M-ENR-1] A code's secret is 160 bits drawn from the rng in one draw (default: the OS
    CSPRNG), and the stored form is SHA-256("Liaison enrollment v1" || secret)."""
    rng = RecordingRng()
    code = EnrollmentCode.generate(bytes(_RELAY.public), rng=rng)
    assert rng.draws == [code.secret]
    assert len(code.secret) * 8 == 160
    assert inspect.signature(EnrollmentCode.generate).parameters["rng"].default is p.system_random
    assert (
        secret_hash(code.secret) == hashlib.sha256(b"Liaison enrollment v1" + code.secret).digest()
    )
    assert len({EnrollmentCode.generate(bytes(_RELAY.public)).secret for _ in range(32)}) == 32


def test_enr3_relay_key_accepted_only_by_its_fingerprint() -> None:
    """[M-ENR-3] The fingerprint is SHA-256("Liaison relay key v1" || key)[0:16]; a code
    matches that key and no key that differs from it in any single bit."""
    key = bytes(_RELAY.public)
    fingerprint = hashlib.sha256(b"Liaison relay key v1" + key).digest()[:16]
    assert relay_key_fingerprint(key) == fingerprint
    code = EnrollmentCode(fingerprint, bytes(20))
    assert code.matches(key)
    assert EnrollmentCode.parse(code.text()).matches(key)
    for bit in range(256):
        assert not code.matches(flip(key, bit // 8, 1 << bit % 8))


def test_enr4_secret_travels_only_in_noise_message_1_to_the_pinned_key() -> None:
    """[M-ENR-4] Enrollment message 1 is Noise_IK_25519_ChaChaPoly_BLAKE2b with prologue
    "Liaison enroll v1", encrypted to the pinned relay key: a generic IK responder holding that
    key reads the request; another prologue (the link's included) or another key cannot; the
    secret never appears in clear."""
    request = _enroll_request()
    message1 = EnrollmentInitiator(_LINK.private_bytes(), bytes(_RELAY.public)).request(request)
    assert request.secret not in message1
    reader = HandshakeState(
        "Noise_IK_25519_ChaChaPoly_BLAKE2b",
        False,
        prologue=ENROLL_PROLOGUE,
        s=_RELAY.private_bytes(),
    )
    assert ENROLL_PROLOGUE == b"Liaison enroll v1"
    assert reader.read_message(message1) == request.encode()
    assert reader.remote_static == bytes(_LINK.public)
    for prologue, key in (
        (LINK_PROLOGUE, _RELAY.private_bytes()),
        (b"Liaison enroll v2", _RELAY.private_bytes()),
        (ENROLL_PROLOGUE, X25519KeyPair.generate().private_bytes()),
    ):
        other = HandshakeState("Noise_IK_25519_ChaChaPoly_BLAKE2b", False, prologue=prologue, s=key)
        with pytest.raises(HandshakeFailed):
            other.read_message(message1)


def _enroll_decoder_cases() -> dict[str, bytes]:
    data = _enroll_request().encode()
    reserved = struct.pack(">I", RESERVED_ID)

    def put(offset: int, value: bytes) -> bytes:
        return data[:offset] + value + data[offset + len(value) :]

    return {
        "201-otks": _enroll_request(tuple(range(201))).encode(),
        "duplicate-otk-ids": _enroll_request((5, 6, 5)).encode(),
        "reserved-otk-id": put(1471 + 36, reserved),
        "reserved-spk-id": put(117, reserved),
        "reserved-kem-id": put(217, reserved),
        "version-0": put(0, b"\x00"),
        "count-above-entries": put(1469, b"\x00\x04"),
        "count-below-entries": put(1469, b"\x00\x02"),
    }


ENROLL_DECODER_CASES = _enroll_decoder_cases()


@pytest.mark.parametrize("case", list(ENROLL_DECODER_CASES))
def test_enr5_enroll_request_decoder_refuses_malformed_requests(case: str) -> None:
    """[M-ENR-5] ``EnrollRequest.decode`` refuses a version other than 1, a length not matching
    the count, more than 200 one-time prekeys, duplicate ids and the reserved id 0xFFFFFFFF
    (MalformedData, which the relay answers as ``malformed_request``); 200 are accepted."""
    assert (
        len(EnrollRequest.decode(_enroll_request(tuple(range(200))).encode()).one_time_prekeys)
        == 200
    )
    with pytest.raises(MalformedData):
        EnrollRequest.decode(ENROLL_DECODER_CASES[case])


def _fixed_rng(label: bytes) -> p.RandomBytes:
    return lambda n: hashlib.shake_256(label).digest(n)


def test_enr8_cell_id_only_from_an_authenticated_message_2() -> None:
    """[M-ENR-8] ``EnrollmentInitiator.response`` returns the cell id only from a message 2
    that authenticates as the pinned relay's: any changed byte, or a message 2 written by a
    relay holding another key (for the same cell key and ephemeral), is HandshakeFailed."""
    request = _enroll_request()
    answer = EnrollResponse(cell_id=b"\xc1" * 16, name="fr-paris")

    def handshake(relay: X25519KeyPair) -> tuple[EnrollmentInitiator, bytes]:
        cell = EnrollmentInitiator(_LINK.private_bytes(), bytes(relay.public), rng=_fixed_rng(b"e"))
        responder = EnrollmentResponder(relay.private_bytes())
        responder.read(cell.request(request))
        return cell, responder.answer(answer)

    cell, message2 = handshake(_RELAY)
    assert cell.response(message2) == answer
    for index in (0, 31, 32, 40, len(message2) - 1):
        cell, _ = handshake(_RELAY)
        with pytest.raises(HandshakeFailed):
            cell.response(flip(message2, index))
    cell, _ = handshake(_RELAY)
    _, forged = handshake(X25519KeyPair(hashlib.sha256(b"impostor").digest()))
    with pytest.raises(HandshakeFailed):
        cell.response(forged)


# === §6 link ================================================================================


def test_link6_one_frame_per_transport_message_with_empty_ad() -> None:
    """[M-LINK-6] Each frame is the plaintext of exactly one ChaCha20-Poly1305 transport
    message with empty associated data and the Noise nonce (4 zero bytes || n little-endian);
    a message sealed with other associated data does not decrypt."""
    k1, k2 = os.urandom(32), os.urandom(32)
    cell = LinkTransport(CipherState(k1), CipherState(k2), bytes(64))
    relay = LinkTransport(CipherState(k2), CipherState(k1), bytes(64))
    frames = [
        encode_frame(PingFrame(b"\x07" * 8)),
        encode_frame(AckFrame(42)),
        bytes(MAX_FRAME_LEN),
    ]
    for n, frame in enumerate(frames):
        nonce = bytes(4) + n.to_bytes(8, "little")
        message = cell.encrypt(frame)
        assert message == bytes(
            sodium.crypto_aead_chacha20poly1305_ietf_encrypt(frame, b"", nonce, k1)
        )
        assert relay.decrypt(message) == frame
    assert decode_frame(frames[1]) == AckFrame(42)
    nonce = bytes(4) + len(frames).to_bytes(8, "little")
    with_ad = bytes(sodium.crypto_aead_chacha20poly1305_ietf_encrypt(frames[0], b"ad", nonce, k1))
    with pytest.raises(DecryptionError):
        relay.decrypt(with_ad)


# === §7 session setup and §8 ratchet ==========================================================


@pytest.mark.parametrize("one_time", [True, False], ids=["with-otk", "without-otk"])
def test_ses1_rat3_setup_derivation_and_ratchet_initialisation(one_time: bool) -> None:
    """[M-SES-1][M-RAT-3] Re-derive, from the spec and independent primitives, RK || HKA ||
    NHKB = HKDF(0^32, 0xFF^32 || DH1 || DH2 || DH3 [|| DH4 iff an OTK] || SS, info, 96), the
    initiator's RatchetInitAlice state (with KDF_RK_HE) and setup block, and the responder's
    RatchetInitBob state, and compare with ``initiate`` / ``respond``."""
    bob = make_bob(one_time=one_time)
    alice_identity = IdentityKeyPair.generate()
    clock = Clock()
    rng, encaps = RecordingRng(), RecordingEncaps()
    alice = initiate(alice_identity, CELL_A, bob.bundle(), rng=rng, encaps=encaps, clock=clock)
    assert [len(d) for d in rng.draws] == [32, 32, 64]  # §8.7: EK_A, DHs, KEMs seed
    ek, dhs, kem_seed = rng.draws
    kem_public, spk_public = bytes(bob.kem.public), bytes(bob.spk.public)
    assert [call[0] for call in encaps.calls] == [kem_public, kem_public]
    (_, setup_ct, setup_ss), (_, ratchet_ct, ratchet_ss) = encaps.calls

    dh1 = raw_x25519(clamped_scalar(alice_identity.private_bytes()), spk_public)
    dh2 = raw_x25519(ek, montgomery_u(bytes(bob.identity.public)))
    dh3 = raw_x25519(ek, spk_public)
    dh4 = raw_x25519(ek, bytes(bob.otk.public)) if bob.otk is not None else b""
    ikm = b"\xff" * 32 + dh1 + dh2 + dh3 + dh4 + setup_ss
    okm = hkdf_sha256(ikm, bytes(32), b"Liaison v1 PQXDH X25519 ML-KEM-768", 96)
    root, hka, nhkb = okm[:32], okm[32:64], okm[64:]
    ad = (
        b"Liaison\x01" + bytes(alice_identity.public) + bytes(bob.identity.public) + CELL_A + CELL_B
    )

    a = alice.ratchet.state
    alice_root, cks, nhks = root_kdf(root, raw_x25519(dhs, spk_public), ratchet_ss)
    assert a.ad == ad
    assert (a.rk, a.cks, a.nhks) == (alice_root, cks, nhks)
    assert (a.hks, a.nhkr) == (hka, nhkb)
    assert a.dhs.private_bytes() == dhs
    assert a.kems.private_bytes() == kem_seed
    assert (a.dhr, a.kemr, a.kem_ct) == (bob.spk.public, bob.kem.public, ratchet_ct)
    assert (a.ckr, a.hkr, a.ns, a.nr, a.pn, a.skipped) == (None, None, 0, 0, 0, {})
    assert alice.pending_setup == SessionSetup(
        alice_identity.public,
        X25519PublicKey(p.x25519_public(ek)),
        bob.spk_id,
        bob.kem_id,
        bob.otk_id if one_time else None,
        setup_ct,
    )

    setup = alice.pending_setup
    bob_session = respond(
        bob.identity, CELL_B, CELL_A, setup, bob.spk, bob.kem, bob.otk, clock=clock
    )
    b = bob_session.ratchet.state
    assert (b.ad, b.rk, b.nhks, b.nhkr) == (ad, root, nhkb, hka)
    assert (b.dhs, b.kems) == (bob.spk, bob.kem)
    assert (b.dhr, b.kemr, b.kem_ct, b.cks, b.ckr, b.hks, b.hkr) == (None,) * 7
    assert (b.ns, b.nr, b.pn, b.skipped) == (0, 0, 0, {})
    assert open_envelope(bob_session, seal(alice, b"derived")).payload == b"derived"


@settings(max_examples=50, deadline=None)
@given(
    root=st.binary(min_size=32, max_size=32),
    dh_out=st.binary(min_size=32, max_size=32),
    kem_secret=st.binary(min_size=32, max_size=32),
)
def test_rat1_root_kdf_definition(root: bytes, dh_out: bytes, kem_secret: bytes) -> None:
    """[M-RAT-1] KDF_RK_HE(rk, dh, ss) = HKDF-SHA256(salt = rk, ikm = dh || ss,
    info = "Liaison v1 ratchet", 96) split into root key, chain key, next header key."""
    assert ratchet_module.kdf_rk(root, dh_out, kem_secret) == root_kdf(root, dh_out, kem_secret)


def test_rat1_rat11_dh_kem_step() -> None:
    """[M-RAT-11][M-RAT-1] A DH ratchet step draws a fresh DH key pair (rng(32)) and a fresh KEM
    key pair (rng(64)), encapsulates exactly once, to the KEM public key in the peer's header,
    and commits the state StepAndDecrypt specifies (re-derived here with the spec's KDFs);
    a message of the same chain afterwards draws no keys."""
    clock = Clock()
    alice, bob = established(clock)
    rng, encaps = RecordingRng(), RecordingEncaps()
    bob = restored(bob, clock, rng=rng, encaps=encaps)
    old = bob.ratchet.state
    old_rk, old_ns, old_nhks, old_nhkr = old.rk, old.ns, old.nhks, old.nhkr
    old_dhs, old_kems = old.dhs, old.kems
    data = seal(alice, b"new chain")
    a = alice.ratchet.state
    assert a.kem_ct is not None
    assert open_envelope(bob, data).payload == b"new chain"

    s = bob.ratchet.state
    assert [len(d) for d in rng.draws] == [32, 64]
    assert [call[0] for call in encaps.calls] == [bytes(a.kems.public)]
    _, kem_ct_out, kem_ss_out = encaps.calls[0]
    assert s.dhs.private_bytes() == rng.draws[0] != old_dhs.private_bytes()
    assert s.kems.private_bytes() == rng.draws[1] != old_kems.private_bytes()
    assert s.kem_ct == kem_ct_out

    peer_dh = bytes(a.dhs.public)
    kem_ss_in = old_kems.decapsulate(a.kem_ct)
    rk1, ckr, nhkr1 = root_kdf(old_rk, raw_x25519(old_dhs.private_bytes(), peer_dh), kem_ss_in)
    rk2, cks, nhks1 = root_kdf(rk1, raw_x25519(rng.draws[0], peer_dh), kem_ss_out)
    assert (s.rk, s.cks, s.nhks, s.nhkr) == (rk2, cks, nhks1, nhkr1)
    assert s.ckr == chain_kdf(ckr)[0]  # message 0 of the new chain consumed its key
    assert (s.hks, s.hkr) == (old_nhks, old_nhkr)
    assert (s.pn, s.ns, s.nr) == (old_ns, 0, 1)
    assert (s.dhr, s.kemr) == (a.dhs.public, a.kems.public)

    rng.draws.clear()
    encaps.calls.clear()
    assert open_envelope(bob, seal(alice, b"same chain")).payload == b"same chain"
    assert rng.draws == []
    assert encaps.calls == []


def test_rat6_header_keys_are_tried_in_the_specified_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """[M-RAT-6] Decryption tries HKr, then NHKr, then the header keys of MKSKIPPED in insertion
    order (skipping HKr), and stops at the first that authenticates."""
    clock = Clock()
    bob_keys = make_bob()
    alice = initiate(IdentityKeyPair.generate(), CELL_A, bob_keys.bundle(), clock=clock)
    bob, _ = bob_keys.accept(seal(alice, b"chain 1, n 0"), clock=clock)
    late1 = seal(alice, b"chain 1, n 1")
    open_envelope(bob, seal(alice, b"chain 1, n 2"))  # keeps (HK1, 1)
    open_envelope(alice, seal(bob, b"reply 1"))
    late2 = seal(alice, b"chain 2, n 0")
    open_envelope(bob, seal(alice, b"chain 2, n 1"))  # keeps (HK2, 0)
    open_envelope(alice, seal(bob, b"reply 2"))
    open_envelope(bob, seal(alice, b"chain 3, n 0"))
    s = bob.ratchet.state
    hk1, hk2 = list(s.skipped)

    tried: list[bytes] = []
    real = ratchet_module._open_header

    def open_header(hk: bytes, nonce: bytes, header_ct: bytes, ad: bytes) -> bytes | None:
        tried.append(hk)
        return real(hk, nonce, header_ct, ad)

    monkeypatch.setattr(ratchet_module, "_open_header", open_header)

    def trial_keys(data: bytes, payload: bytes) -> list[bytes]:
        tried.clear()
        assert open_envelope(bob, data).payload == payload
        return list(tried)

    hkr, nhkr = s.hkr, s.nhkr
    assert hkr is not None
    assert trial_keys(seal(alice, b"chain 3, n 1"), b"chain 3, n 1") == [hkr]
    assert trial_keys(late2, b"chain 2, n 0") == [hkr, nhkr, hk1, hk2]
    assert trial_keys(late1, b"chain 1, n 1") == [hkr, nhkr, hk1]
    open_envelope(alice, seal(bob, b"reply 3"))
    assert trial_keys(seal(alice, b"chain 4, n 0"), b"chain 4, n 0") == [hkr, nhkr]


def test_rat10_every_decryption_failure_is_one_opaque_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """[M-RAT-10] Unknown header key, wrong body key, replay, altered associated data, wrong
    lengths and an expired skipped key all raise DecryptionError itself, with one and the same
    message, nothing logged above DEBUG, and the state unchanged."""
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    alice, bob = established(clock)
    bob.ratchet.skipped_ttl = 100.0
    stranger, _ = established(clock)
    held = seal(alice, b"held")
    opened = seal(alice, b"opened")
    assert open_envelope(bob, opened).payload == b"opened"
    genuine = seal(alice, b"genuine")
    envelope = Envelope.decode(genuine)
    ad = envelope.associated_data()

    def wrong_lengths(nonce: bytes, header_ct: bytes) -> Callable[[], object]:
        return lambda: bob.ratchet.decrypt(nonce, header_ct, envelope.body_ciphertext, ad)

    def deliver(data: bytes) -> Callable[[], object]:
        return lambda: open_envelope(bob, data)

    def expired() -> object:
        clock.now += 101
        return open_envelope(bob, held)

    failures: dict[str, Callable[[], object]] = {
        "unknown-header-key": deliver(seal(stranger, b"not for bob")),
        "wrong-body-key": deliver(flip(genuine, len(genuine) - 1)),
        "replay": deliver(opened),
        "altered-message-id": deliver(flip(genuine, 20)),
        "altered-expiry": deliver(flip(genuine, 42)),
        "short-nonce": wrong_lengths(envelope.header_nonce[:-1], envelope.header_ciphertext),
        "long-header": wrong_lengths(envelope.header_nonce, envelope.header_ciphertext + b"\x00"),
        "expired-skipped-key": expired,  # last: it moves the clock
    }
    errors: list[DecryptionError] = []
    for attempt in failures.values():
        before = bob.to_bytes()
        with pytest.raises(DecryptionError) as info:
            attempt()
        assert bob.to_bytes() == before
        errors.append(info.value)
    assert {type(error) for error in errors} == {DecryptionError}
    assert {(str(error), error.args) for error in errors} == {
        (str(DecryptionError()), DecryptionError().args)
    }
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert open_envelope(bob, genuine).payload == b"genuine"


def test_env8_seal_takes_the_channel_number() -> None:
    """[M-ENV-8] ``Session.seal(seq=N)`` puts the caller's channel number N in the body and
    records it as ``send_seq`` (so a second session of the channel continues the count instead
    of restarting at 1); without ``seq`` the session counts on from there; a number outside
    1 .. 2**64-1 is refused with the session unchanged."""
    clock = Clock()
    alice, bob = established(clock)
    first = seal(alice, b"counted by the session")
    assert open_envelope(bob, first).seq == 2  # the prekey envelope of first_contact was 1
    envelope = alice.seal(ContentType.TEXT, b"channel 41", message_id=os.urandom(16),
                          precedence=Precedence.ROUTINE, expires_at=EXPIRES_AT,
                          seq=41)  # fmt: skip
    assert alice.send_seq == 41
    assert open_envelope(bob, envelope).seq == 41
    assert open_envelope(bob, seal(alice, b"next")).seq == 42
    before = alice.to_bytes()
    for bad in (0, 2**64):
        with pytest.raises(StateError):
            alice.seal(ContentType.TEXT, b"x", message_id=os.urandom(16),
                       precedence=Precedence.ROUTINE, expires_at=EXPIRES_AT, seq=bad)  # fmt: skip
        assert alice.to_bytes() == before
    # A new session with the same peer, given the channel's next number, continues the count.
    fresh, fresh_bob = established(clock)
    data = fresh.seal(ContentType.TEXT, b"after re-initiation", message_id=os.urandom(16),
                      precedence=Precedence.ROUTINE, expires_at=EXPIRES_AT,
                      seq=alice.send_seq + 1)  # fmt: skip
    assert open_envelope(fresh_bob, data).seq == 43
