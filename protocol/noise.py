"""The Noise Protocol Framework, revision 34, for the suite ``25519_ChaChaPoly_BLAKE2b``.

Theory of operation
-------------------
This is a sans-I/O transcription of the Noise specification (https://noiseprotocol.org/noise.html,
revision 34, 2018-07-11), restricted to one cipher suite: X25519 (§12.1), ChaCha20-Poly1305 IETF
(§12.3) and BLAKE2b-512 (§12.8). It never touches a socket: callers hand it bytes and get bytes
back. The three objects of §5 map one to one onto classes:

* :class:`CipherState` (§5.1) holds a key ``k`` and a 64-bit counter ``n``. The 96-bit
  ChaCha20-Poly1305 nonce is 4 zero bytes followed by ``n`` little-endian. ``n = 2**64-1`` is
  reserved for :meth:`CipherState.rekey`; reaching it raises ``NonceExhausted``.
* :class:`SymmetricState` (§5.2) holds the chaining key ``ck`` and the handshake hash ``h``
  (both ``HASHLEN = 64`` bytes) and derives keys with HKDF built on HMAC-BLAKE2b (§4.3).
* :class:`HandshakeState` (§5.3) holds the local key pairs ``s``/``e``, the remote public keys
  ``rs``/``re``, the pre-shared keys and the handshake pattern, and processes one message
  pattern per :meth:`~HandshakeState.write_message` / :meth:`~HandshakeState.read_message`.
  When the last message is processed, :meth:`~HandshakeState.split` yields the two transport
  ``CipherState`` objects (initiator-to-responder first, §5.2 ``Split()``).

Handshake patterns are data (:data:`PATTERNS`, written in the spec's own notation): the one-way
patterns of §7.4, the fundamental interactive patterns of §7.5 and the deferred patterns of
§7.6. A protocol name such as ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b`` is parsed (§8) and the
``pskN`` modifiers of §9.4 are applied to the base pattern; in a PSK handshake every ``e`` token
is also mixed into the key (§9.2).

Errors follow ``liaison.protocol.errors``: a truncated or oversized incoming message is
``MalformedData`` (with the expected and received lengths, never key bytes), an AEAD failure
during the handshake is ``HandshakeFailed``, an all-zero X25519 output is
``UnsafeKeyAgreement``, acting out of turn is ``StateError``, an outgoing message above the
65535-byte Noise limit (§3) is ``MessageTooLarge``. A ``HandshakeState`` that raised once is
dead: every later call raises ``StateError`` (§5.3: after an error the handshake has failed and
its state must be discarded).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from liaison.protocol.errors import (
    DecryptionError,
    HandshakeFailed,
    InvalidKey,
    LocalProtocolError,
    MalformedData,
    MessageTooLarge,
    NonceExhausted,
    StateError,
)
from liaison.protocol.primitives import (
    RandomBytes,
    chacha20poly1305_decrypt,
    chacha20poly1305_encrypt,
    system_random,
    x25519,
    x25519_public,
)

__all__ = [
    "BLOCKLEN",
    "DHLEN",
    "HASHLEN",
    "KEYLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PATTERNS",
    "SUITE",
    "TAGLEN",
    "CipherState",
    "HandshakePattern",
    "HandshakeState",
    "SymmetricState",
    "hkdf",
    "parse_protocol_name",
    "pattern_from_name",
]

DHLEN: Final = 32
"""Length of an X25519 public key and DH output (§12.1)."""
HASHLEN: Final = 64
"""BLAKE2b-512 output length (§12.8)."""
BLOCKLEN: Final = 128
"""BLAKE2b block length, the HMAC ``B`` parameter (§4.3, §12.8)."""
KEYLEN: Final = 32
"""ChaChaPoly key length; longer HKDF outputs are truncated to it (§5.2)."""
TAGLEN: Final = 16
"""ChaChaPoly authentication tag length (§4.2)."""
MAX_MESSAGE_LEN: Final = 65535
"""The largest Noise message, handshake or transport (§3)."""
MAX_NONCE: Final = 2**64 - 1
"""The reserved nonce: never used to encrypt a message, only by ``rekey`` (§5.1, §11.3)."""
SUITE: Final = "25519_ChaChaPoly_BLAKE2b"
"""The only cipher suite this module implements."""

_NONCE = struct.Struct("<4xQ")  # §12.3: 32 zero bits, then the 64-bit counter little-endian
_pack_nonce = _NONCE.pack
_MAX_NONCE_BYTES: Final = _NONCE.pack(MAX_NONCE)
_ZERO32: Final = bytes(32)


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    # RFC 2104 HMAC over BLAKE2b-512 with B = 128 (§4.3); OpenSSL's "blake2b512" underneath.
    return hmac.digest(key, data, "blake2b")


def hkdf(chaining_key: bytes, input_key_material: bytes, num_outputs: int) -> tuple[bytes, ...]:
    """``HKDF(chaining_key, input_key_material, num_outputs)`` of §4.3, with HMAC-BLAKE2b.

    Returns 2 or 3 outputs of ``HASHLEN`` bytes.
    """
    if num_outputs not in (2, 3):
        raise LocalProtocolError(f"HKDF num_outputs must be 2 or 3, got {num_outputs}")
    temp_key = _hmac(chaining_key, input_key_material)
    output1 = _hmac(temp_key, b"\x01")
    output2 = _hmac(temp_key, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    output3 = _hmac(temp_key, output2 + b"\x03")
    return output1, output2, output3


# --- §5.1 CipherState -------------------------------------------------------------------------


class CipherState:
    """A key ``k`` (possibly empty) and a nonce counter ``n`` (§5.1).

    Without a key, ``encrypt_with_ad`` and ``decrypt_with_ad`` return their input unchanged,
    as the spec says. ``nonce`` may be given to start the counter elsewhere than 0 (the
    ``SetNonce()`` of §5.1; tests use it to reach the end of the nonce space).
    """

    __slots__ = ("_k", "_n")

    def __init__(self, key: bytes | None = None, nonce: int = 0) -> None:
        self._k: bytes | None = None
        self._n = 0
        self.initialize_key(key)
        self.set_nonce(nonce)

    def __repr__(self) -> str:
        return f"CipherState(has_key={self._k is not None}, nonce={self._n})"

    def initialize_key(self, key: bytes | None) -> None:
        """``InitializeKey(key)``: set ``k`` (``None`` = empty) and reset ``n`` to 0."""
        if key is not None and len(key) != KEYLEN:
            raise InvalidKey(f"cipher key must be {KEYLEN} bytes, got {len(key)}")
        self._k = key
        self._n = 0

    def has_key(self) -> bool:
        """``HasKey()``: whether ``k`` is non-empty."""
        return self._k is not None

    @property
    def nonce(self) -> int:
        """The next nonce ``n`` this state will use."""
        return self._n

    def set_nonce(self, nonce: int) -> None:
        """``SetNonce(nonce)`` of §5.1 (also the documented test hook for nonce exhaustion)."""
        if not 0 <= nonce <= MAX_NONCE:
            raise LocalProtocolError(f"nonce must be in 0..2**64-1, got {nonce}")
        self._n = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """``EncryptWithAd(ad, plaintext)``: ciphertext plus 16-byte tag, then ``n += 1``."""
        k = self._k
        if k is None:
            return plaintext
        n = self._n
        if n >= MAX_NONCE:
            raise NonceExhausted("cipher state has used all 2**64-1 nonces")
        ciphertext = chacha20poly1305_encrypt(k, _pack_nonce(n), plaintext, ad)
        self._n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """``DecryptWithAd(ad, ciphertext)``; on failure ``DecryptionError`` and ``n`` unchanged."""
        k = self._k
        if k is None:
            return ciphertext
        n = self._n
        if n >= MAX_NONCE:
            raise NonceExhausted("cipher state has used all 2**64-1 nonces")
        if len(ciphertext) < TAGLEN:
            raise DecryptionError()
        plaintext = chacha20poly1305_decrypt(k, _pack_nonce(n), ciphertext, ad)
        self._n = n + 1
        return plaintext

    def rekey(self) -> None:
        """``Rekey()`` (§11.3): ``k = first 32 bytes of ENCRYPT(k, 2**64-1, "", zeros(32))``.

        ``n`` is left unchanged, as the spec says.
        """
        k = self._k
        if k is None:
            raise StateError("cannot rekey a cipher state that has no key")
        self._k = chacha20poly1305_encrypt(k, _MAX_NONCE_BYTES, _ZERO32, b"")[:KEYLEN]


# --- §5.2 SymmetricState ----------------------------------------------------------------------


class SymmetricState:
    """The chaining key ``ck``, the handshake hash ``h`` and a :class:`CipherState` (§5.2)."""

    __slots__ = ("_ck", "_h", "cipher_state")

    def __init__(self, protocol_name: bytes) -> None:
        """``InitializeSymmetric(protocol_name)``."""
        if len(protocol_name) <= HASHLEN:
            h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            h = _hash(protocol_name)
        self._h = h
        self._ck = h
        self.cipher_state = CipherState()

    @property
    def chaining_key(self) -> bytes:
        return self._ck

    @property
    def handshake_hash(self) -> bytes:
        """``GetHandshakeHash()``: the current ``h``."""
        return self._h

    def mix_key(self, input_key_material: bytes) -> None:
        """``MixKey``: ``ck, temp_k = HKDF(ck, ikm, 2)``; ``InitializeKey(temp_k[:32])``."""
        self._ck, temp_k = hkdf(self._ck, input_key_material, 2)
        self.cipher_state.initialize_key(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        """``MixHash``: ``h = HASH(h || data)``."""
        self._h = _hash(self._h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """``MixKeyAndHash`` (used by the ``psk`` token, §9.2)."""
        self._ck, temp_h, temp_k = hkdf(self._ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher_state.initialize_key(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """``EncryptAndHash``: encrypt with ``ad = h`` (if a key is set), then mix the output."""
        ciphertext = self.cipher_state.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """``DecryptAndHash``. Raises ``DecryptionError`` when authentication fails."""
        plaintext = self.cipher_state.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """``Split()``: the initiator-to-responder and responder-to-initiator cipher states."""
        temp_k1, temp_k2 = hkdf(self._ck, b"", 2)
        return CipherState(temp_k1[:KEYLEN]), CipherState(temp_k2[:KEYLEN])


# --- §7 handshake patterns as data -----------------------------------------------------------

# name: (initiator pre-message, responder pre-message, message patterns). Messages alternate,
# starting with the initiator ("->"). Transcribed from §7.4, §7.5 and §7.6.
_PATTERN_TABLE: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    # §7.4 one-way patterns
    "N": ("", "s", ("e, es",)),
    "K": ("s", "s", ("e, es, ss",)),
    "X": ("", "s", ("e, es, s, ss",)),
    # §7.5 interactive patterns (fundamental)
    "NN": ("", "", ("e", "e, ee")),
    "NK": ("", "s", ("e, es", "e, ee")),
    "NX": ("", "", ("e", "e, ee, s, es")),
    "KN": ("s", "", ("e", "e, ee, se")),
    "KK": ("s", "s", ("e, es, ss", "e, ee, se")),
    "KX": ("s", "", ("e", "e, ee, se, s, es")),
    "XN": ("", "", ("e", "e, ee", "s, se")),
    "XK": ("", "s", ("e, es", "e, ee", "s, se")),
    "XX": ("", "", ("e", "e, ee, s, es", "s, se")),
    "IN": ("", "", ("e, s", "e, ee, se")),
    "IK": ("", "s", ("e, es, s, ss", "e, ee, se")),
    "IX": ("", "", ("e, s", "e, ee, se, s, es")),
    # §7.6 interactive patterns (deferred)
    "NK1": ("", "s", ("e", "e, ee, es")),
    "NX1": ("", "", ("e", "e, ee, s", "es")),
    "X1N": ("", "", ("e", "e, ee", "s", "se")),
    "X1K": ("", "s", ("e, es", "e, ee", "s", "se")),
    "XK1": ("", "s", ("e", "e, ee, es", "s, se")),
    "X1K1": ("", "s", ("e", "e, ee, es", "s", "se")),
    "X1X": ("", "", ("e", "e, ee, s, es", "s", "se")),
    "XX1": ("", "", ("e", "e, ee, s", "es, s, se")),
    "X1X1": ("", "", ("e", "e, ee, s", "es, s", "se")),
    "K1N": ("s", "", ("e", "e, ee", "se")),
    "K1K": ("s", "s", ("e, es", "e, ee", "se")),
    "KK1": ("s", "s", ("e", "e, ee, se, es")),
    "K1K1": ("s", "s", ("e", "e, ee, es", "se")),
    "K1X": ("s", "", ("e", "e, ee, s, es", "se")),
    "KX1": ("s", "", ("e", "e, ee, se, s", "es")),
    "K1X1": ("s", "", ("e", "e, ee, s", "se, es")),
    "I1N": ("", "", ("e, s", "e, ee", "se")),
    "I1K": ("", "s", ("e, es, s", "e, ee", "se")),
    "IK1": ("", "s", ("e, s", "e, ee, se, es")),
    "I1K1": ("", "s", ("e, s", "e, ee, es", "se")),
    "I1X": ("", "", ("e, s", "e, ee, s, es", "se")),
    "IX1": ("", "", ("e, s", "e, ee, se, s", "es")),
    "I1X1": ("", "", ("e, s", "e, ee, s", "se, es")),
}

_TOKENS: Final = frozenset({"e", "s", "ee", "es", "se", "ss", "psk"})
_DH_TOKENS: Final = frozenset({"ee", "es", "se", "ss"})


def _tokens(text: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in text.split(",")) if text else ()
    unknown = [t for t in tokens if t not in _TOKENS]
    if unknown:
        raise LocalProtocolError(f"unknown Noise token(s) {unknown}")
    return tokens


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A handshake pattern (§7.1): pre-messages and the sequence of message patterns.

    ``message_patterns[i]`` is sent by the initiator when ``i`` is even, by the responder when
    it is odd (every pattern here is in its canonical, initiator-first form).
    """

    name: str
    initiator_pre_message: tuple[str, ...]
    responder_pre_message: tuple[str, ...]
    message_patterns: tuple[tuple[str, ...], ...]

    @property
    def is_one_way(self) -> bool:
        """One-way patterns (§7.4) have one message; only the initiator sends transport data."""
        return len(self.message_patterns) == 1

    @property
    def psk_count(self) -> int:
        """The number of ``psk`` tokens, i.e. of pre-shared keys each party must supply."""
        return sum(m.count("psk") for m in self.message_patterns)


PATTERNS: Final[Mapping[str, HandshakePattern]] = MappingProxyType(
    {
        name: HandshakePattern(
            name, _tokens(pre_i), _tokens(pre_r), tuple(_tokens(m) for m in messages)
        )
        for name, (pre_i, pre_r, messages) in _PATTERN_TABLE.items()
    }
)
"""The base handshake patterns by name (§7.4-§7.6), before any modifier is applied."""


def pattern_from_name(name: str) -> HandshakePattern:
    """The pattern for a handshake-pattern name section (§8.1), e.g. ``"XXpsk3"``.

    The base pattern is the leading run of upper-case letters and digits; the modifiers that
    follow are separated by ``+``. Only the ``pskN`` modifiers (§9.4) are implemented.
    """
    split_at = len(name)
    for i, char in enumerate(name):
        if not (char.isupper() or char.isdigit()):
            split_at = i
            break
    base_name, modifier_text = name[:split_at], name[split_at:]
    base = PATTERNS.get(base_name)
    if base is None:
        raise LocalProtocolError(f"unknown Noise handshake pattern {base_name!r}")
    if not modifier_text:
        return base
    messages = [list(m) for m in base.message_patterns]
    modifiers = modifier_text.split("+")
    if len(set(modifiers)) != len(modifiers):
        raise LocalProtocolError(f"repeated modifier in Noise pattern name {name!r}")
    for modifier in modifiers:
        index_text = modifier.removeprefix("psk")
        is_number = index_text.isascii() and index_text.isdigit()
        if modifier == index_text or not is_number or index_text != str(int(index_text)):
            raise LocalProtocolError(f"unsupported Noise pattern modifier {modifier!r}")
        index = int(index_text)
        if index > len(messages):
            raise LocalProtocolError(
                f"modifier {modifier!r} needs {index} messages; {base_name} has {len(messages)}"
            )
        if index == 0:
            messages[0].insert(0, "psk")
        else:
            messages[index - 1].append("psk")
    return HandshakePattern(
        name,
        base.initiator_pre_message,
        base.responder_pre_message,
        tuple(tuple(m) for m in messages),
    )


def parse_protocol_name(protocol_name: str) -> HandshakePattern:
    """Parse ``Noise_<pattern>_25519_ChaChaPoly_BLAKE2b`` (§8) into its handshake pattern."""
    prefix, _, rest = protocol_name.partition("_")
    pattern_name, _, suite = rest.partition("_")
    if prefix != "Noise" or not pattern_name:
        raise LocalProtocolError(f"not a Noise protocol name: {protocol_name!r}")
    if suite != SUITE:
        raise LocalProtocolError(f"unsupported Noise suite {suite!r}; only {SUITE} is implemented")
    return pattern_from_name(pattern_name)


# --- §5.3 HandshakeState ----------------------------------------------------------------------


class _Status(enum.Enum):
    ACTIVE = "in progress"
    FINISHED = "already finished"
    SPLIT = "already finished and split"
    FAILED = "dead after an earlier error"


def _check_key(what: str, key: bytes | None) -> None:
    if key is not None and len(key) != DHLEN:
        raise InvalidKey(f"{what} must be {DHLEN} bytes, got {len(key)}")


class HandshakeState:
    """One party's handshake (§5.3 ``Initialize`` / ``WriteMessage`` / ``ReadMessage``).

    ``s`` and ``e`` are 32-byte X25519 *private* keys (their public keys are derived); ``rs``
    and ``re`` are the remote *public* keys known in advance (pre-messages). ``psks`` are the
    32-byte pre-shared keys, consumed in the order their ``psk`` tokens occur. The ephemeral
    key of an ``e`` token is ``e`` when given (test vectors, pre-messages), else ``rng(32)``.
    """

    __slots__ = (
        "_e_private",
        "_e_public",
        "_index",
        "_initiator",
        "_pattern",
        "_protocol_name",
        "_psk_mode",
        "_psks",
        "_re",
        "_rng",
        "_rs",
        "_s_private",
        "_s_public",
        "_status",
        "_symmetric",
    )

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        *,
        prologue: bytes = b"",
        s: bytes | None = None,
        e: bytes | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        psks: Sequence[bytes] = (),
        rng: RandomBytes = system_random,
    ) -> None:
        pattern = parse_protocol_name(protocol_name)
        for what, key in (
            ("static private key s", s),
            ("ephemeral private key e", e),
            ("remote static public key rs", rs),
            ("remote ephemeral public key re", re),
        ):
            _check_key(what, key)
        if len(psks) != pattern.psk_count:
            raise InvalidKey(f"{pattern.name} needs {pattern.psk_count} PSK(s), got {len(psks)}")
        for number, psk in enumerate(psks):
            if len(psk) != KEYLEN:
                raise InvalidKey(f"PSK {number} must be {KEYLEN} bytes, got {len(psk)}")

        self._protocol_name = protocol_name
        self._pattern = pattern
        self._initiator = initiator
        self._rng = rng
        self._s_private = s
        self._s_public = None if s is None else x25519_public(s)
        self._e_private = e
        self._e_public = None if e is None else x25519_public(e)
        self._rs = rs
        self._re = re
        self._psks = list(psks)
        self._psk_mode = pattern.psk_count > 0
        self._index = 0
        self._status = _Status.ACTIVE
        self._check_required_keys()

        symmetric = SymmetricState(protocol_name.encode("ascii"))
        symmetric.mix_hash(prologue)
        self._symmetric = symmetric
        for pre_message, from_initiator in (
            (pattern.initiator_pre_message, True),
            (pattern.responder_pre_message, False),
        ):
            local = from_initiator == initiator
            for token in pre_message:
                if token == "s":
                    public = self._s_public if local else self._rs
                else:
                    public = self._e_public if local else self._re
                assert public is not None  # _check_required_keys guarantees it
                symmetric.mix_hash(public)
                if token == "e" and self._psk_mode:
                    symmetric.mix_key(public)  # §9.2

    def _check_required_keys(self) -> None:
        pattern = self._pattern
        role = "initiator" if self._initiator else "responder"
        local_pre, remote_pre = (
            (pattern.initiator_pre_message, pattern.responder_pre_message)
            if self._initiator
            else (pattern.responder_pre_message, pattern.initiator_pre_message)
        )
        needs_s = "s" in local_pre
        remote_sends_s = False
        for index, message in enumerate(pattern.message_patterns):
            mine = (index % 2 == 0) == self._initiator
            for token in message:
                if token == "s":
                    needs_s = needs_s or mine
                    remote_sends_s = remote_sends_s or not mine
                elif token in _DH_TOKENS:
                    needs_s = needs_s or (token[0] if self._initiator else token[1]) == "s"
        missing = []
        if needs_s and self._s_private is None:
            missing.append("its static key s")
        if "e" in local_pre and self._e_private is None:
            missing.append("its ephemeral key e (pre-message)")
        if "s" in remote_pre and self._rs is None:
            missing.append("the remote static key rs (pre-message)")
        if "e" in remote_pre and self._re is None:
            missing.append("the remote ephemeral key re (pre-message)")
        if missing:
            raise InvalidKey(f"{pattern.name} {role} needs {', '.join(missing)}")
        if remote_sends_s and self._rs is not None:
            raise LocalProtocolError(
                f"{pattern.name} transmits the remote static key; rs must not be given"
            )

    # -- introspection --

    @property
    def protocol_name(self) -> str:
        return self._protocol_name

    @property
    def pattern(self) -> HandshakePattern:
        return self._pattern

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def message_index(self) -> int:
        """The index of the next handshake message (0 for the first)."""
        return self._index

    @property
    def is_finished(self) -> bool:
        """Whether every handshake message has been written or read."""
        return self._status in (_Status.FINISHED, _Status.SPLIT)

    @property
    def is_my_turn(self) -> bool:
        """Whether the next handshake message is ours to write."""
        return self._status is _Status.ACTIVE and (self._index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        """``h`` (§5.2 ``GetHandshakeHash``); final and usable for channel binding (§11.2)
        only once the handshake is finished."""
        return self._symmetric.handshake_hash

    @property
    def remote_static(self) -> bytes | None:
        """The remote static public key ``rs``: pre-known or learned from an ``s`` token."""
        return self._rs

    @property
    def local_ephemeral_public(self) -> bytes | None:
        return self._e_public

    @property
    def remote_ephemeral(self) -> bytes | None:
        return self._re

    # -- processing --

    def _check_turn(self, writing: bool) -> None:
        if self._status is not _Status.ACTIVE:
            raise StateError(f"the {self._pattern.name} handshake is {self._status.value}")
        if self.is_my_turn != writing:
            sender = "our" if not writing else "the peer's"
            action = "write" if writing else "read"
            raise StateError(
                f"cannot {action} handshake message {self._index + 1} of {self._pattern.name}: "
                f"it is {sender} turn to send"
            )

    def _layout(self, tokens: tuple[str, ...]) -> list[tuple[str, int]]:
        """The fixed-size fields of a message, ``(token, length)``; ``payload`` is its tag."""
        has_key = self._symmetric.cipher_state.has_key()
        fields: list[tuple[str, int]] = []
        for token in tokens:
            if token == "e":
                fields.append(("e", DHLEN))
                has_key = has_key or self._psk_mode
            elif token == "s":
                fields.append(("s", DHLEN + TAGLEN if has_key else DHLEN))
            else:
                has_key = True
        fields.append(("payload tag", TAGLEN if has_key else 0))
        return fields

    def _dh(self, token: str) -> bytes:
        local, remote = (token[0], token[1]) if self._initiator else (token[1], token[0])
        private = self._s_private if local == "s" else self._e_private
        public = self._rs if remote == "s" else self._re
        if private is None or public is None:
            raise StateError(f"token {token!r} needs a key that is not set")
        return x25519(private, public)

    def _next_psk(self) -> bytes:
        return self._psks.pop(0)

    def write_message(self, payload: bytes = b"") -> bytes:
        """``WriteMessage(payload)``: the next handshake message, carrying ``payload``."""
        try:
            self._check_turn(writing=True)
            tokens = self._pattern.message_patterns[self._index]
            size = sum(length for _, length in self._layout(tokens)) + len(payload)
            if size > MAX_MESSAGE_LEN:
                raise MessageTooLarge(
                    f"handshake message {self._index + 1} would be {size} bytes; "
                    f"the Noise maximum is {MAX_MESSAGE_LEN}"
                )
            symmetric = self._symmetric
            out: list[bytes] = []
            for token in tokens:
                if token == "e":
                    if self._e_private is None:
                        private = self._rng(DHLEN)
                        if len(private) != DHLEN:
                            raise InvalidKey(f"rng returned {len(private)} bytes, not {DHLEN}")
                        self._e_private = private
                        self._e_public = x25519_public(private)
                    e_public = self._e_public
                    assert e_public is not None
                    out.append(e_public)
                    symmetric.mix_hash(e_public)
                    if self._psk_mode:
                        symmetric.mix_key(e_public)
                elif token == "s":
                    s_public = self._s_public
                    assert s_public is not None  # _check_required_keys
                    out.append(symmetric.encrypt_and_hash(s_public))
                elif token == "psk":
                    symmetric.mix_key_and_hash(self._next_psk())
                else:
                    symmetric.mix_key(self._dh(token))
            out.append(symmetric.encrypt_and_hash(payload))
        except BaseException:
            self._status = _Status.FAILED
            raise
        self._advance()
        return b"".join(out)

    def read_message(self, message: bytes) -> bytes:
        """``ReadMessage(message)``: process the peer's handshake message, return its payload."""
        try:
            self._check_turn(writing=False)
            number = self._index + 1
            tokens = self._pattern.message_patterns[self._index]
            if len(message) > MAX_MESSAGE_LEN:
                raise MalformedData(
                    f"handshake message {number} of {self._pattern.name} is {len(message)} bytes; "
                    f"the Noise maximum is {MAX_MESSAGE_LEN}"
                )
            layout = self._layout(tokens)
            minimum = sum(length for _, length in layout)
            if len(message) < minimum:
                fields = " + ".join(f"{name} ({length})" for name, length in layout if length)
                raise MalformedData(
                    f"handshake message {number} of {self._pattern.name} is truncated: expected "
                    f"at least {minimum} bytes [{fields}], got {len(message)}"
                )
            symmetric = self._symmetric
            view = memoryview(message)
            offset = 0
            field = "payload"
            try:
                for token in tokens:
                    if token == "e":
                        re = bytes(view[offset : offset + DHLEN])
                        offset += DHLEN
                        self._re = re
                        symmetric.mix_hash(re)
                        if self._psk_mode:
                            symmetric.mix_key(re)
                    elif token == "s":
                        length = DHLEN + TAGLEN if symmetric.cipher_state.has_key() else DHLEN
                        field = "static key"
                        self._rs = symmetric.decrypt_and_hash(bytes(view[offset : offset + length]))
                        field = "payload"
                        offset += length
                    elif token == "psk":
                        symmetric.mix_key_and_hash(self._next_psk())
                    else:
                        symmetric.mix_key(self._dh(token))
                payload = symmetric.decrypt_and_hash(bytes(view[offset:]))
            except DecryptionError as exc:
                raise HandshakeFailed(
                    f"the {field} of handshake message {number} of {self._pattern.name} "
                    "did not authenticate"
                ) from exc
        except BaseException:
            self._status = _Status.FAILED
            raise
        self._advance()
        return payload

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._pattern.message_patterns):
            self._status = _Status.FINISHED

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport cipher states ``(initiator->responder, responder->initiator)``.

        Callable once, after the last handshake message; it then forgets the private keys.
        For a one-way pattern (§7.4) the second state must not be used.
        """
        if self._status is not _Status.FINISHED:
            raise StateError(
                f"cannot split: the {self._pattern.name} handshake is {self._status.value}"
            )
        self._status = _Status.SPLIT
        self._s_private = None
        self._e_private = None
        return self._symmetric.split()
