"""End-to-end session setup (PQXDH-style) and the session object that seals and opens envelopes.

Theory of operation (SPEC.md §7–§9):

1. A responder (Bob) publishes a ``PrekeyBundle`` through the relay: his identity key, a signed
   X25519 prekey, a signed ML-KEM-768 prekey and, while stock lasts, one one-time prekey.
2. The initiator (Alice) verifies both signatures *before* using any key, then computes::

       DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
       DH4 = DH(EK_A, OPK_B)   (only with a one-time prekey)
       (CT, SS) = ML-KEM-768.Encaps(PQSPK_B)
       RK || HKA || NHKB = HKDF-SHA256(salt = 0^32,
                              ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS,
                              info = "Liaison v1 PQXDH X25519 ML-KEM-768", L = 96)

   and starts the ratchet towards Bob's signed prekey (DH) and KEM prekey (KEM).
3. Every envelope Alice sends carries the ``SessionSetup`` block until she has decrypted a reply,
   so Bob can build the session from whichever of her first messages arrives first.
4. Bob derives the same keys (``respond``); nothing is committed until a message decrypts.

Associated data binds the protocol version, both identity keys and both cell ids (initiator's
first); every AEAD also covers the envelope's routing header and setup block.
"""

from __future__ import annotations

import struct
import time

from liaison.protocol import primitives as p
from liaison.protocol.bundle import PrekeyBundle
from liaison.protocol.envelope import (
    CELL_ID_LEN,
    SETUP_LEN,
    Body,
    ContentType,
    Envelope,
    EnvelopeKind,
    Precedence,
    Routing,
    SessionSetup,
)
from liaison.protocol.errors import InvalidKey, MalformedData, StateError, UnsupportedVersion
from liaison.protocol.keys import (
    IdentityKey,
    IdentityKeyPair,
    KemKeyPair,
    X25519KeyPair,
    X25519PublicKey,
)
from liaison.protocol.ratchet import Clock, Ratchet, RatchetState

__all__ = [
    "PROTOCOL_VERSION",
    "PrekeyBundle",
    "Session",
    "initiate",
    "respond",
    "session_ad",
]

PROTOCOL_VERSION = 1
SETUP_INFO = b"Liaison v1 PQXDH X25519 ML-KEM-768"
_AD_LABEL = b"Liaison"
_SESSION_VERSION = 1


def session_ad(
    initiator: IdentityKey, responder: IdentityKey, initiator_cell: bytes, responder_cell: bytes
) -> bytes:
    """``"Liaison" || version || IK_A || IK_B || cell_A || cell_B`` (SPEC.md §7.3)."""
    for cell in (initiator_cell, responder_cell):
        if len(cell) != CELL_ID_LEN:
            raise MalformedData(f"cell ids are {CELL_ID_LEN} bytes")
    return (_AD_LABEL + bytes([PROTOCOL_VERSION]) + bytes(initiator) + bytes(responder)
            + initiator_cell + responder_cell)  # fmt: skip


def _derive(ikm_parts: list[bytes], kem_secret: bytes) -> tuple[bytes, bytes, bytes]:
    ikm = b"\xff" * 32 + b"".join(ikm_parts) + kem_secret
    out = p.hkdf_sha256(ikm, b"", SETUP_INFO, 96)
    return out[:32], out[32:64], out[64:]


def initiate(
    own: IdentityKeyPair,
    own_cell_id: bytes,
    bundle: PrekeyBundle,
    *,
    rng: p.RandomBytes = p.system_random,
    encaps: p.Encapsulate = p.mlkem768_encapsulate,
    clock: Clock = time.time,
) -> Session:
    """Start a session with the owner of ``bundle`` (Alice's side). Verifies signatures first."""
    bundle.verify()
    ephemeral = X25519KeyPair.generate(rng)
    spk = bundle.signed_prekey.public
    dhs = [own.dh(spk), ephemeral.dh(bundle.identity.x25519), ephemeral.dh(spk)]
    otk = bundle.one_time_prekey
    if otk is not None:
        dhs.append(ephemeral.dh(otk.public))
    kem_ct, kem_ss = encaps(bytes(bundle.kem_prekey.public))
    root, hka, nhkb = _derive(dhs, kem_ss)
    ad = session_ad(own.public, bundle.identity, own_cell_id, bundle.cell_id)
    ratchet = Ratchet.initiator(
        ad=ad, root_key=root, header_key=hka, next_header_key=nhkb, peer_dh=spk,
        peer_kem=bundle.kem_prekey.public, rng=rng, encaps=encaps, clock=clock,
    )  # fmt: skip
    setup = SessionSetup(
        own.public, ephemeral.public, bundle.signed_prekey.prekey_id,
        bundle.kem_prekey.prekey_id, None if otk is None else otk.prekey_id, kem_ct,
    )  # fmt: skip
    return Session(own_cell_id, bundle.cell_id, bundle.identity, ratchet, pending_setup=setup)


def respond(
    own: IdentityKeyPair,
    own_cell_id: bytes,
    peer_cell_id: bytes,
    setup: SessionSetup,
    signed_prekey: X25519KeyPair,
    kem_prekey: KemKeyPair,
    one_time_prekey: X25519KeyPair | None,
    *,
    rng: p.RandomBytes = p.system_random,
    encaps: p.Encapsulate = p.mlkem768_encapsulate,
    clock: Clock = time.time,
) -> Session:
    """Build Bob's side of a session from Alice's setup block and his private prekeys.

    The caller looks the prekeys up by the ids in ``setup``, checks that ``setup.identity`` is
    the identity it expects for ``peer_cell_id``, and must only commit the session (and delete
    the one-time prekey) after the envelope that carried the setup has opened successfully.
    """
    if (setup.one_time_prekey_id is None) != (one_time_prekey is None):
        raise StateError("the one-time prekey must be given exactly when the setup names one")
    try:
        peer_x25519 = setup.identity.x25519
    except InvalidKey as exc:
        raise MalformedData("the setup's identity key is not a valid Ed25519 point") from exc
    dhs = [
        signed_prekey.dh(peer_x25519),
        own.dh(setup.ephemeral),
        signed_prekey.dh(setup.ephemeral),
    ]
    if one_time_prekey is not None:
        dhs.append(one_time_prekey.dh(setup.ephemeral))
    kem_ss = kem_prekey.decapsulate(setup.kem_ciphertext)
    root, hka, nhkb = _derive(dhs, kem_ss)
    ad = session_ad(setup.identity, own.public, peer_cell_id, own_cell_id)
    ratchet = Ratchet.responder(
        ad=ad, root_key=root, header_key=hka, next_header_key=nhkb, own_dh=signed_prekey,
        own_kem=kem_prekey, rng=rng, encaps=encaps, clock=clock,
    )  # fmt: skip
    return Session(own_cell_id, peer_cell_id, setup.identity, ratchet,
                   setup_ephemeral=setup.ephemeral)  # fmt: skip


class Session:
    """One end-to-end session with one peer cell: seals and opens envelopes.

    You must persist ``to_bytes()`` after every ``seal`` and every successful ``open``, in the
    same transaction as the message it produced or consumed.
    """

    __slots__ = ("_clock", "own_cell_id", "peer_cell_id", "peer_identity", "pending_setup",
                 "ratchet", "send_seq", "setup_ephemeral")  # fmt: skip

    def __init__(
        self,
        own_cell_id: bytes,
        peer_cell_id: bytes,
        peer_identity: IdentityKey,
        ratchet: Ratchet,
        *,
        pending_setup: SessionSetup | None = None,
        setup_ephemeral: X25519PublicKey | None = None,
        send_seq: int = 0,
    ) -> None:
        self.own_cell_id = own_cell_id
        self.peer_cell_id = peer_cell_id
        self.peer_identity = peer_identity
        self.ratchet = ratchet
        self.pending_setup = pending_setup
        self.setup_ephemeral = setup_ephemeral
        self.send_seq = send_seq
        self._clock = ratchet._clock

    def seal(
        self,
        content_type: ContentType,
        payload: bytes,
        *,
        message_id: bytes,
        precedence: Precedence,
        expires_at: int,
        marking: str = "",
        seq: int | None = None,
    ) -> bytes:
        """Encrypt one message into envelope bytes.

        ``seq`` is the body's channel sequence number (SPEC.md §9.2, M-ENV-8): the sender's
        count of envelopes sealed to this peer, across sessions, so the caller keeps it. Without
        it the session counts (``send_seq + 1``), which equals the channel number only while
        the channel has had a single session. ``send_seq`` becomes the number used.

        Raises ``MessageTooLarge`` (state unchanged) when the payload fits no bucket.
        """
        kind = EnvelopeKind.MESSAGE if self.pending_setup is None else EnvelopeKind.PREKEY
        if seq is None:
            seq = self.send_seq + 1
        elif not 1 <= seq < 2**64:
            raise StateError("channel sequence numbers are 1 .. 2**64-1")
        body = Body(content_type, seq, int(self._clock() * 1000), payload, marking).encode(kind)
        routing = Routing(kind, self.peer_cell_id, message_id, precedence, expires_at)
        ad = routing.encode() + (b"" if self.pending_setup is None else self.pending_setup.encode())
        nonce, header_ct, body_ct = self.ratchet.encrypt(body, ad)
        self.send_seq = seq
        return Envelope(routing, self.pending_setup, nonce, header_ct, body_ct).encode()

    def open(self, envelope: Envelope) -> Body:
        """Decrypt an envelope from this session's peer.

        If decryption fails (``DecryptionError`` and the other ratchet errors) the state is
        unchanged. If the body authenticates but does not parse (``MalformedData``: only the
        peer itself can produce that), the ratchet has advanced past the message: persist the
        state, drop the message and acknowledge it (SPEC.md §9.2, M-ENV-7).
        """
        plaintext = self.ratchet.decrypt(
            envelope.header_nonce,
            envelope.header_ciphertext,
            envelope.body_ciphertext,
            envelope.associated_data(),
        )
        self.pending_setup = None  # the peer has the session: stop sending the setup block
        return Body.decode(plaintext)

    # -- serialization (SPEC.md §8.8) --------------------------------------------------------

    def to_bytes(self) -> bytes:
        flags = (self.pending_setup is not None) | (self.setup_ephemeral is not None) << 1
        state = self.ratchet.state.to_bytes()
        parts = [
            struct.pack(">BB", _SESSION_VERSION, flags),
            self.own_cell_id,
            self.peer_cell_id,
            bytes(self.peer_identity),
            struct.pack(">Q", self.send_seq),
        ]
        if self.pending_setup is not None:
            parts.append(self.pending_setup.encode())
        if self.setup_ephemeral is not None:
            parts.append(bytes(self.setup_ephemeral))
        parts.append(struct.pack(">I", len(state)))
        parts.append(state)
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        rng: p.RandomBytes = p.system_random,
        encaps: p.Encapsulate = p.mlkem768_encapsulate,
        clock: Clock = time.time,
    ) -> Session:
        if len(data) < 2 + 16 + 16 + 32 + 8 + 4:
            raise MalformedData("session state is truncated")
        version, flags = data[0], data[1]
        if version != _SESSION_VERSION:
            raise UnsupportedVersion(f"session state version {version} is not supported")
        if flags >> 2:
            raise MalformedData("session state has unknown flag bits")
        own, peer, ik = data[2:18], data[18:34], data[34:66]
        (send_seq,) = struct.unpack_from(">Q", data, 66)
        offset = 74
        try:
            setup = None
            if flags & 1:
                setup = SessionSetup.decode(data[offset : offset + SETUP_LEN])
                offset += SETUP_LEN
            ephemeral = None
            if flags & 2:
                ephemeral = X25519PublicKey(data[offset : offset + 32])
                offset += 32
            (length,) = struct.unpack_from(">I", data, offset)
            offset += 4
            if offset + length != len(data):
                raise MalformedData("session state length does not match")
            state = RatchetState.from_bytes(data[offset:])
            identity = IdentityKey(ik)
        except (struct.error, ValueError) as exc:
            if isinstance(exc, MalformedData):
                raise
            raise MalformedData("session state is malformed") from exc
        ratchet = Ratchet(state, rng=rng, encaps=encaps, clock=clock)
        return cls(own, peer, identity, ratchet, pending_setup=setup,
                   setup_ephemeral=ephemeral, send_seq=send_seq)  # fmt: skip
