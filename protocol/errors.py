"""The error tree of the Liaison protocol.

Every error the protocol package raises derives from :class:`LiaisonError`. Errors are split,
as in h11, by *who broke the rules*::

    LiaisonError
    ├── LocalProtocolError            you (the caller) asked for something invalid
    │   ├── InvalidKey (ValueError)   a key of the wrong length, a low-order point, bad encoding
    │   ├── NonceExhausted            a cipher state used up its 2**64-1 nonces: rekey or reconnect
    │   ├── MessageTooLarge (ValueError)  a payload that cannot fit the largest envelope bucket
    │   └── StateError                an object used out of order (e.g. send before handshake)
    └── RemoteProtocolError           the peer (or the network, or the relay) sent something invalid
        ├── MalformedData (ValueError)    truncated, oversized, trailing bytes, bad field value
        │   └── UnsupportedVersion        a version byte this implementation does not speak
        ├── HandshakeFailed           a link handshake message did not authenticate
        ├── BadSignature              a prekey signature did not verify
        ├── UnsafeKeyAgreement        a DH produced the all-zero output (low-order peer key)
        ├── TooManySkippedMessages    a header asks to skip more message keys than allowed
        └── DecryptionError           the one opaque error for every end-to-end failure

``DecryptionError`` is deliberately uninformative: wrong key, flipped bit, replay, wrong
associated data and unknown header key all raise it with the same message, so that an attacker
probing a cell learns nothing from the error. The detail is deliberately not recorded anywhere.

Messages of these exceptions never contain key material, plaintext or ciphertext bytes.
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "DecryptionError",
    "HandshakeFailed",
    "InvalidKey",
    "LiaisonError",
    "LocalProtocolError",
    "MalformedData",
    "MessageTooLarge",
    "NonceExhausted",
    "RemoteProtocolError",
    "StateError",
    "TooManySkippedMessages",
    "UnsafeKeyAgreement",
    "UnsupportedVersion",
]


class LiaisonError(Exception):
    """Root of every error raised by ``liaison.protocol``."""


class LocalProtocolError(LiaisonError):
    """The caller broke a rule of the protocol API."""


class RemoteProtocolError(LiaisonError):
    """The remote side (peer cell, relay or network) sent something the protocol forbids."""


class InvalidKey(LocalProtocolError, ValueError):
    """Key bytes of the wrong length or an unusable value (e.g. a low-order curve point)."""


class NonceExhausted(LocalProtocolError):
    """A cipher state reached its last nonce; the link must be re-established."""


class MessageTooLarge(LocalProtocolError, ValueError):
    """A payload too large for the largest envelope size bucket."""


class StateError(LocalProtocolError):
    """An object was used in the wrong state (out of order, or after a fatal error)."""


class MalformedData(RemoteProtocolError, ValueError):
    """Bytes that do not parse: truncated, oversized, trailing garbage or a bad field value."""


class UnsupportedVersion(MalformedData):
    """A version number this implementation does not implement."""


class HandshakeFailed(RemoteProtocolError):
    """A link-layer handshake message failed to authenticate (wrong static key or tampering)."""


class BadSignature(RemoteProtocolError):
    """A signature over a prekey did not verify under the claimed identity key."""


class UnsafeKeyAgreement(RemoteProtocolError):
    """An X25519 agreement produced the all-zero output: the peer key is of low order."""


class TooManySkippedMessages(RemoteProtocolError):
    """A message would require storing more skipped message keys than the bound allows."""


class DecryptionError(RemoteProtocolError):
    """The opaque end-to-end decryption failure. Carries no detail by design."""

    def __init__(self) -> None:
        super().__init__("message could not be decrypted")
