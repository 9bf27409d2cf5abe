"""Enrollment: codes, and the one-round-trip Noise handshake a cell enrolls with (SPEC.md §5.4).

Theory of operation. An admin creates a cell; the relay returns a one-time *enrollment code*
that reaches the cell's operators out of band. The code carries:

* a 16-byte fingerprint of the relay's static link key, ``SHA-256("Liaison relay key v1" ||
  key)[:16]``: the cell fetches the key over any channel and accepts it only if it matches, so
  the relay key is pinned from the code, never from the network;
* a 20-byte (160-bit) secret. The relay stores only ``SHA-256("Liaison enrollment v1" ||
  secret)``.

The cell then sends ``Noise_IK_25519_ChaChaPoly_BLAKE2b`` message 1 (prologue
``"Liaison enroll v1"``, the cell's new link key as the initiator static key, the pinned relay
key as the responder's) whose payload is an ``EnrollRequest``: the secret plus every public
key the cell publishes, signed. The secret is therefore encrypted to the pinned relay key and
never crosses the network in clear; a replayed request finds its code already used. The relay
answers with message 2, whose payload is an ``EnrollResponse`` (the cell id, or an error code):
the cell knows the answer comes from the pinned relay. Plain HTTP cannot intercept or redirect
enrollment.

Code text: ``"ln1-"`` followed by the lowercase RFC 4648 base32 of ``fingerprint || secret``
(36 bytes, 58 characters) in groups of 6 joined by ``-``. Parsing ignores case, spaces and
dashes; the last character carries 2 unused bits, which must be zero (so no two texts of the
same length parse to the same code).

Request versions: a version-1 ``EnrollRequest`` carries no name; version 2 appends the name
the cell expects to be enrolled as, so the relay refuses a wrong name (``name_mismatch``)
*before* it uses the code up.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from liaison.protocol import primitives as p
from liaison.protocol.errors import MalformedData
from liaison.protocol.keys import (
    IdentityKey,
    IdentityKeyPair,
    KemPublicKey,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519PublicKey,
)
from liaison.protocol.noise import HandshakeState

__all__ = [
    "ENROLL_PROLOGUE",
    "MAX_ENROLL_PREKEYS",
    "EnrollError",
    "EnrollRequest",
    "EnrollResponse",
    "EnrollmentCode",
    "EnrollmentInitiator",
    "EnrollmentResponder",
    "link_key_signed_data",
    "relay_key_fingerprint",
    "secret_hash",
]

ENROLL_PROLOGUE = b"Liaison enroll v1"
_PROTOCOL = "Noise_IK_25519_ChaChaPoly_BLAKE2b"
CODE_PREFIX = "ln1-"
FINGERPRINT_LEN = 16
SECRET_LEN = 20
MAX_ENROLL_PREKEYS = 200
LINK_KEY_CONTEXT = b"Liaison v1 link key"
REQUEST_VERSION = 1
REQUEST_VERSION_NAMED = 2  # version 1 followed by the expected cell name
MAX_EXPECTED_NAME = 255  # bytes of UTF-8 (a u8 length)
_CODE_CHARS = 58  # base32 characters of the 36 code bytes: 290 bits, the last 2 unused


class EnrollError:
    """Error codes an ``EnrollResponse`` can carry (ASCII, stable)."""

    BAD_CODE = "bad_code"  # unknown secret
    CODE_USED = "code_used"
    CODE_EXPIRED = "code_expired"
    CELL_NOT_PENDING = "cell_not_pending"  # suspended or revoked before enrolling
    NAME_MISMATCH = "name_mismatch"  # a version-2 request named another cell; code not used
    BAD_SIGNATURE = "bad_signature"
    LINK_KEY_IN_USE = "link_key_in_use"
    MALFORMED = "malformed_request"


def relay_key_fingerprint(relay_static_public: bytes) -> bytes:
    """The 16-byte fingerprint of a relay link key carried in enrollment codes."""
    return hashlib.sha256(b"Liaison relay key v1" + relay_static_public).digest()[:16]


def secret_hash(secret: bytes) -> bytes:
    """What the relay stores for an enrollment secret."""
    return hashlib.sha256(b"Liaison enrollment v1" + secret).digest()


def link_key_signed_data(link_public: bytes) -> bytes:
    """The identity signs its link key, binding the two: ``ctx || link_public``."""
    return LINK_KEY_CONTEXT + link_public


@dataclass(frozen=True, slots=True)
class EnrollmentCode:
    relay_fingerprint: bytes
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.relay_fingerprint) != FINGERPRINT_LEN or len(self.secret) != SECRET_LEN:
            raise MalformedData("enrollment code has the wrong length")

    @classmethod
    def generate(
        cls, relay_static_public: bytes, rng: p.RandomBytes = p.system_random
    ) -> EnrollmentCode:
        return cls(relay_key_fingerprint(relay_static_public), rng(SECRET_LEN))

    def text(self) -> str:
        raw = base64.b32encode(self.relay_fingerprint + self.secret).decode().lower().rstrip("=")
        return CODE_PREFIX + "-".join(raw[i : i + 6] for i in range(0, len(raw), 6))

    @classmethod
    def parse(cls, text: str) -> EnrollmentCode:
        """Parse code text; raise ``MalformedData`` with a human-readable reason."""
        compact = "".join(text.split()).lower().replace("-", "")
        if not compact.startswith("ln1"):
            raise MalformedData("an enrollment code starts with 'ln1-'")
        body = compact[3:].upper().rstrip("=")
        if len(body) == _CODE_CHARS and body[-1] in _B32 and _B32.index(body[-1]) & 0b11:
            # 58 characters carry 290 bits for 288: the last character's low 2 bits are
            # unused, must be zero, and would otherwise let 4 texts mean one code.
            raise MalformedData("the enrollment code's last character is wrong (mistyped?)")
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            raise MalformedData("the enrollment code has characters outside base32") from None
        if len(raw) != FINGERPRINT_LEN + SECRET_LEN:
            raise MalformedData("the enrollment code is truncated or too long")
        return cls(raw[:FINGERPRINT_LEN], raw[FINGERPRINT_LEN:])

    def matches(self, relay_static_public: bytes) -> bool:
        return p.ct_equal(self.relay_fingerprint, relay_key_fingerprint(relay_static_public))


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_HEAD = struct.Struct(">B20s32s64sI32s64sI")
_U16 = struct.Struct(">H")
_OTK = struct.Struct(">I32s")


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    """The payload of enrollment message 1 (byte table in SPEC.md §5.4)."""

    secret: bytes
    identity: IdentityKey
    link_signature: bytes
    signed_prekey: SignedPrekey
    kem_prekey: SignedKemPrekey
    one_time_prekeys: tuple[OneTimePrekey, ...]
    # The name the cell expects to be enrolled as (version 2), or None (version 1).
    expected_name: str | None = None

    def encode(self) -> bytes:
        spk, kem = self.signed_prekey, self.kem_prekey
        version = REQUEST_VERSION if self.expected_name is None else REQUEST_VERSION_NAMED
        head = _HEAD.pack(version, self.secret, bytes(self.identity),
                          self.link_signature, spk.prekey_id, bytes(spk.public), spk.signature,
                          kem.prekey_id)  # fmt: skip
        otks = b"".join(_OTK.pack(k.prekey_id, bytes(k.public)) for k in self.one_time_prekeys)
        named = b""
        if self.expected_name is not None:
            name = self.expected_name.encode()
            if not 1 <= len(name) <= MAX_EXPECTED_NAME:
                raise MalformedData("the expected cell name must be 1..255 bytes of UTF-8")
            named = bytes([len(name)]) + name
        return (head + bytes(kem.public) + kem.signature + _U16.pack(len(self.one_time_prekeys))
                + otks + named)  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> EnrollRequest:
        fixed = _HEAD.size + p.MLKEM768_PUBLIC_LEN + 64 + _U16.size
        if len(data) < fixed:
            raise MalformedData("enrollment request is truncated")
        version, secret, ik, link_sig, spk_id, spk_pub, spk_sig, kem_id = _HEAD.unpack_from(data)
        if version not in (REQUEST_VERSION, REQUEST_VERSION_NAMED):
            raise MalformedData(f"enrollment request version {version} is not supported")
        offset = _HEAD.size
        kem_pub = data[offset : offset + p.MLKEM768_PUBLIC_LEN]
        offset += p.MLKEM768_PUBLIC_LEN
        kem_sig = data[offset : offset + 64]
        offset += 64
        (count,) = _U16.unpack_from(data, offset)
        offset += _U16.size
        if count > MAX_ENROLL_PREKEYS:
            raise MalformedData(f"at most {MAX_ENROLL_PREKEYS} one-time prekeys per enrollment")
        end = offset + count * _OTK.size
        expected_name: str | None = None
        if version == REQUEST_VERSION_NAMED:
            if len(data) < end + 2 or len(data) != end + 1 + data[end]:
                raise MalformedData("enrollment request length does not match its name length")
            try:
                expected_name = data[end + 1 :].decode()
            except UnicodeDecodeError:
                raise MalformedData("the expected cell name is not UTF-8") from None
        elif len(data) != end:
            raise MalformedData("enrollment request length does not match its prekey count")
        try:
            otks = tuple(
                OneTimePrekey(i, X25519PublicKey(pub))
                for i, pub in (_OTK.unpack_from(data, offset + n * _OTK.size) for n in range(count))
            )
            if len({k.prekey_id for k in otks}) != count:
                raise MalformedData("duplicate one-time prekey ids")
            return cls(secret, IdentityKey(ik), link_sig,
                       SignedPrekey(spk_id, X25519PublicKey(spk_pub), spk_sig),
                       SignedKemPrekey(kem_id, KemPublicKey(kem_pub), kem_sig), otks,
                       expected_name)  # fmt: skip
        except ValueError as exc:
            if isinstance(exc, MalformedData):
                raise
            raise MalformedData(f"enrollment request has an invalid field: {exc}") from None

    def verify(self, link_public: bytes) -> None:
        """Raise ``BadSignature`` unless the identity signed the link key and both prekeys."""
        self.identity.verify(link_key_signed_data(link_public), self.link_signature)
        self.signed_prekey.verify(self.identity)
        self.kem_prekey.verify(self.identity)


@dataclass(frozen=True, slots=True)
class EnrollResponse:
    """The payload of enrollment message 2: ``0x00 || cell_id(16) || name_len(u8) || name`` on
    success, ``0x01 || code_len(u8) || code`` on refusal."""

    cell_id: bytes | None = None
    name: str = ""
    error: str | None = None

    def encode(self) -> bytes:
        if self.error is not None:
            code = self.error.encode("ascii")
            return b"\x01" + bytes([len(code)]) + code
        if self.cell_id is None or len(self.cell_id) != 16:
            raise MalformedData("an enrollment response needs a 16-byte cell id or an error")
        name = self.name.encode()
        return b"\x00" + self.cell_id + bytes([len(name)]) + name

    @classmethod
    def decode(cls, data: bytes) -> EnrollResponse:
        try:
            if data[0] == 0:
                cell_id, length = data[1:17], data[17]
                if len(cell_id) != 16 or len(data) != 18 + length:
                    raise MalformedData("enrollment response has the wrong length")
                return cls(cell_id=cell_id, name=data[18:].decode())
            if data[0] == 1 and len(data) == 2 + data[1]:
                return cls(error=data[2:].decode("ascii"))
        except (IndexError, UnicodeDecodeError):
            pass
        raise MalformedData("enrollment response is malformed")


class EnrollmentInitiator:
    """The cell's side: ``message1 = EnrollmentInitiator(...).request(req)``, send it, then
    ``response(message2)``."""

    def __init__(
        self, link_private: bytes, relay_static_public: bytes, *,
        rng: p.RandomBytes = p.system_random,
    ) -> None:  # fmt: skip
        self._hs = HandshakeState(_PROTOCOL, True, prologue=ENROLL_PROLOGUE, s=link_private,
                                  rs=relay_static_public, rng=rng)  # fmt: skip

    def request(self, request: EnrollRequest) -> bytes:
        return self._hs.write_message(request.encode())

    def response(self, message: bytes) -> EnrollResponse:
        """Authenticate the relay's answer (``HandshakeFailed`` if not from the pinned key)."""
        return EnrollResponse.decode(self._hs.read_message(message))


class EnrollmentResponder:
    """The relay's side: ``link_key, request = read(message1)``; check it; ``answer(resp)``."""

    def __init__(self, relay_static_private: bytes, *, rng: p.RandomBytes = p.system_random):
        self._hs = HandshakeState(_PROTOCOL, False, prologue=ENROLL_PROLOGUE,
                                  s=relay_static_private, rng=rng)  # fmt: skip

    def read(self, message: bytes) -> tuple[bytes, EnrollRequest]:
        payload = self._hs.read_message(message)
        link_public = self._hs.remote_static
        assert link_public is not None
        return link_public, EnrollRequest.decode(payload)

    def answer(self, response: EnrollResponse) -> bytes:
        return self._hs.write_message(response.encode())


def build_request(
    secret: bytes,
    identity: IdentityKeyPair,
    link_public: bytes,
    signed_prekey: SignedPrekey,
    kem_prekey: SignedKemPrekey,
    one_time_prekeys: tuple[OneTimePrekey, ...],
    expected_name: str | None = None,
) -> EnrollRequest:
    """Sign the link key with the identity and assemble a request (version 2 when
    ``expected_name`` is given: the relay then refuses another cell's code unused)."""
    signature = identity.sign(link_key_signed_data(link_public))
    return EnrollRequest(secret, identity.public, signature, signed_prekey, kem_prekey,
                         one_time_prekeys, expected_name)  # fmt: skip
