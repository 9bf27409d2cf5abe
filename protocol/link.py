"""The Liaison link layer: ``Noise_IK_25519_ChaChaPoly_BLAKE2b`` between a cell and its relay.

Theory of operation
-------------------
A cell (the Noise *initiator*) opens a link to a relay (the *responder*) whose static X25519
public key it has pinned. The handshake is Noise IK (§7.5) with the prologue
``b"Liaison link v1"``::

    <- s
    ...
    -> e, es, s, ss      hello:   e (32) | encrypted cell static key (48) | payload + tag (16)
    <- e, ee, se         welcome: e (32) | payload + tag (16)

1. The cell calls :meth:`LinkInitiator.write_hello`. Only the holder of the pinned relay key can
   read the hello.
2. The relay calls :meth:`LinkResponder.read_hello`, which returns the cell's static public key
   *before* anything is sent back, so the relay can check it (is this cell registered? is it
   banned?). To accept, it calls :meth:`LinkResponder.write_welcome`; to reject, it simply
   drops the responder and closes the connection.
3. The cell calls :meth:`LinkInitiator.read_welcome`; success proves that the relay holds the
   pinned key (and that it accepted the cell's key).

After that, both sides call ``transport()`` to get a :class:`LinkTransport`: one Noise transport
message per frame, in order, with implicit nonces. Since Noise transport messages carry no
nonce, a lost, reordered, replayed or tampered message cannot be recovered from: the first
decryption failure kills the transport (``DecryptionError``, then ``StateError``) and the link
must be re-established. :attr:`LinkTransport.handshake_hash` (64 bytes) is the same on both
ends and serves for channel binding (Noise §11.2).

Caveat: the hello payload is encrypted to the relay but is *replayable* and has no forward
secrecy with respect to the relay's static key (Noise §7.7, IK message 1 has destination
property 2); it must not carry anything whose replay matters. The welcome payload and all
transport frames have full forward secrecy.
"""

from __future__ import annotations

from liaison.protocol.errors import (
    LiaisonError,
    MalformedData,
    MessageTooLarge,
    StateError,
)
from liaison.protocol.noise import (
    DHLEN,
    MAX_MESSAGE_LEN,
    TAGLEN,
    CipherState,
    HandshakeState,
)
from liaison.protocol.primitives import RandomBytes, system_random

__all__ = [
    "LINK_PROLOGUE",
    "LINK_PROTOCOL_NAME",
    "MAX_FRAME_LEN",
    "LinkInitiator",
    "LinkResponder",
    "LinkTransport",
]

LINK_PROTOCOL_NAME = "Noise_IK_25519_ChaChaPoly_BLAKE2b"
LINK_PROLOGUE = b"Liaison link v1"
MAX_FRAME_LEN = MAX_MESSAGE_LEN - TAGLEN
"""The largest frame one transport message can carry: 65535 - 16 = 65519 bytes."""


class LinkTransport:
    """The encrypted, ordered link after the handshake: one Noise transport message per frame.

    Normally obtained from ``LinkInitiator.transport()`` / ``LinkResponder.transport()``. It
    can also be built directly from two cipher states (tests use this with
    ``CipherState(key, nonce=2**64 - 2)`` to reach nonce exhaustion).
    """

    __slots__ = ("_failed", "_handshake_hash", "_recv_decrypt", "_send_encrypt")

    def __init__(self, send: CipherState, receive: CipherState, handshake_hash: bytes) -> None:
        if not (send.has_key() and receive.has_key()):
            raise StateError("a link transport needs two keyed cipher states")
        # Bound methods, looked up once: the per-frame path is a length check and one call.
        self._send_encrypt = send.encrypt_with_ad
        self._recv_decrypt = receive.decrypt_with_ad
        self._handshake_hash = handshake_hash
        self._failed = False

    @property
    def handshake_hash(self) -> bytes:
        """The 64-byte Noise handshake hash, identical on both ends (channel binding)."""
        return self._handshake_hash

    @property
    def is_failed(self) -> bool:
        """True once a decryption failed; the transport then refuses every call."""
        return self._failed

    def encrypt(self, frame: bytes) -> bytes:
        """Encrypt one frame (at most ``MAX_FRAME_LEN`` bytes) into one transport message."""
        if self._failed:
            raise StateError("link transport is dead after a decryption failure")
        if len(frame) > MAX_FRAME_LEN:
            raise MessageTooLarge(
                f"link frame is {len(frame)} bytes; the maximum is {MAX_FRAME_LEN}"
            )
        return self._send_encrypt(b"", frame)

    def decrypt(self, message: bytes) -> bytes:
        """Decrypt the next transport message in order.

        Raises ``DecryptionError`` (reordered, replayed, truncated or tampered message) or
        ``MalformedData`` (above the Noise maximum); either way the transport is dead after.
        """
        if self._failed:
            raise StateError("link transport is dead after a decryption failure")
        try:
            if len(message) > MAX_MESSAGE_LEN:
                raise MalformedData(
                    f"link transport message is {len(message)} bytes; "
                    f"the Noise maximum is {MAX_MESSAGE_LEN}"
                )
            return self._recv_decrypt(b"", message)
        except LiaisonError:
            self._failed = True
            raise


def _transport(handshake: HandshakeState) -> LinkTransport:
    initiator_to_responder, responder_to_initiator = handshake.split()
    if handshake.is_initiator:
        return LinkTransport(
            initiator_to_responder, responder_to_initiator, handshake.handshake_hash
        )
    return LinkTransport(responder_to_initiator, initiator_to_responder, handshake.handshake_hash)


class LinkInitiator:
    """The cell's side of the link handshake."""

    __slots__ = ("_handshake", "_transport")

    def __init__(
        self,
        static_private: bytes,
        relay_static_public: bytes,
        *,
        rng: RandomBytes = system_random,
    ) -> None:
        """``static_private``: the cell's X25519 private key; ``relay_static_public``: the
        pinned relay key. ``rng`` supplies the ephemeral key."""
        self._handshake = HandshakeState(
            LINK_PROTOCOL_NAME,
            True,
            prologue=LINK_PROLOGUE,
            s=static_private,
            rs=relay_static_public,
            rng=rng,
        )
        self._transport: LinkTransport | None = None

    def write_hello(self, payload: bytes = b"") -> bytes:
        """Handshake message 1 (``-> e, es, s, ss``), ``96 + len(payload)`` bytes."""
        return self._handshake.write_message(payload)

    def read_welcome(self, message: bytes) -> bytes:
        """Handshake message 2 (``<- e, ee, se``): authenticate the relay, return its payload.

        Raises ``HandshakeFailed`` if the reply does not come from the pinned relay key,
        ``MalformedData`` if it is shorter than 48 bytes.
        """
        return self._handshake.read_message(message)

    def transport(self) -> LinkTransport:
        """The link transport, once ``read_welcome`` succeeded (the same object every call)."""
        if self._transport is None:
            self._transport = _transport(self._handshake)
        return self._transport


class LinkResponder:
    """The relay's side of the link handshake."""

    __slots__ = ("_handshake", "_transport")

    def __init__(self, static_private: bytes, *, rng: RandomBytes = system_random) -> None:
        """``static_private``: the relay's X25519 private key; ``rng`` supplies the ephemeral."""
        self._handshake = HandshakeState(
            LINK_PROTOCOL_NAME, False, prologue=LINK_PROLOGUE, s=static_private, rng=rng
        )
        self._transport: LinkTransport | None = None

    @property
    def cell_static_public(self) -> bytes | None:
        """The cell's static public key, once ``read_hello`` succeeded."""
        return self._handshake.remote_static

    def read_hello(self, message: bytes) -> tuple[bytes, bytes]:
        """Handshake message 1: return ``(cell_static_public, payload)``.

        The caller checks the key and then either calls ``write_welcome`` or drops this
        object. Raises ``HandshakeFailed`` if the hello was not encrypted to this relay's key
        or was tampered with, ``MalformedData`` if it is shorter than 96 bytes.
        """
        payload = self._handshake.read_message(message)
        cell_static = self._handshake.remote_static
        assert cell_static is not None
        assert len(cell_static) == DHLEN
        return cell_static, payload

    def write_welcome(self, payload: bytes = b"") -> bytes:
        """Handshake message 2 (accepting the cell), ``48 + len(payload)`` bytes."""
        return self._handshake.write_message(payload)

    def transport(self) -> LinkTransport:
        """The link transport, once ``write_welcome`` was called (the same object every call)."""
        if self._transport is None:
            self._transport = _transport(self._handshake)
        return self._transport
