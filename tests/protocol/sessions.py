"""Shared helpers for the end-to-end session tests (SPEC.md §5, §7–§9); not a test module.

Builds a responder ("Bob") with a published prekey bundle, an initiator ("Alice") session
towards it, and small ``send`` / ``receive`` helpers around ``Session.seal`` / ``Session.open``.
Randomness, ML-KEM encapsulation and the clock are injectable, as in the protocol package.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from liaison.protocol import primitives as p
from liaison.protocol.envelope import Body, ContentType, Envelope, Precedence
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from liaison.protocol.ratchet import Clock, RatchetState
from liaison.protocol.session import PrekeyBundle, Session, initiate, respond

__all__ = [
    "CELL_A",
    "CELL_B",
    "EXPIRES_AT",
    "KEM_PREKEY_ID",
    "ONE_TIME_PREKEY_ID",
    "SIGNED_PREKEY_ID",
    "FakeClock",
    "MemoEncaps",
    "Pair",
    "Responder",
    "StreamRng",
    "make_responder",
    "new_alice",
    "new_pair",
    "open_body",
    "ratchet_state",
    "receive",
    "restore",
    "round_trip",
    "send",
    "state_bytes",
]

CELL_A = bytes.fromhex("a1" * 16)
"""The initiator's (Alice's) 16-byte cell id."""
CELL_B = bytes.fromhex("b2" * 16)
"""The responder's (Bob's) 16-byte cell id."""

# Prekey ids chosen so that their big-endian encodings can never be mistaken for small ratchet
# counters when a test searches envelope bytes for ``pn || n``.
SIGNED_PREKEY_ID = 0x5A5A0001
KEM_PREKEY_ID = 0x5A5A0002
ONE_TIME_PREKEY_ID = 0x5A5A0003

EXPIRES_AT = 1_900_000_000
"""Default envelope expiry (unix seconds)."""

START_TIME = 1_790_000_000.0


class FakeClock:
    """An injectable clock (``Clock``) that only moves when a test says so."""

    def __init__(self, now: float = START_TIME) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StreamRng:
    """A deterministic ``RandomBytes``: one SHAKE-256 stream per requested length.

    Separate streams per length mean that, e.g., drawing header nonces (24 bytes) does not shift
    the key material (32 / 64 bytes) drawn later.
    """

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counts: dict[int, int] = {}

    def __call__(self, n: int) -> bytes:
        index = self._counts.get(n, 0)
        self._counts[n] = index + 1
        label = self._seed + n.to_bytes(4, "big") + index.to_bytes(8, "big")
        return hashlib.shake_256(label).digest(n)


@dataclass
class MemoEncaps:
    """An ``Encapsulate`` that records every call (and can replay one result per key)."""

    replay: bool = False
    calls: list[bytes] = field(default_factory=list)
    _memo: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)

    def __call__(self, public: bytes) -> tuple[bytes, bytes]:
        self.calls.append(public)
        if self.replay and public in self._memo:
            return self._memo[public]
        result = p.mlkem768_encapsulate(public)
        self._memo[public] = result
        return result


@dataclass
class Responder:
    """Bob: his identity, his private prekeys and the bundle that publishes them."""

    identity: IdentityKeyPair
    cell_id: bytes
    signed_prekey: X25519KeyPair
    kem_prekey: KemKeyPair
    one_time_prekey: X25519KeyPair | None

    def bundle(self) -> PrekeyBundle:
        otk = self.one_time_prekey
        return PrekeyBundle(
            self.cell_id,
            self.identity.public,
            SignedPrekey.create(self.identity, SIGNED_PREKEY_ID, self.signed_prekey),
            SignedKemPrekey.create(self.identity, KEM_PREKEY_ID, self.kem_prekey),
            None if otk is None else OneTimePrekey(ONE_TIME_PREKEY_ID, otk.public),
        )

    def accept(
        self,
        data: bytes,
        *,
        peer_cell_id: bytes = CELL_A,
        rng: p.RandomBytes = p.system_random,
        encaps: p.Encapsulate = p.mlkem768_encapsulate,
        clock: Clock | None = None,
    ) -> tuple[Session, Body]:
        """Build Bob's session from a prekey envelope (``respond``) and open that envelope."""
        envelope = Envelope.decode(data)
        assert envelope.setup is not None
        session = respond(
            self.identity,
            self.cell_id,
            peer_cell_id,
            envelope.setup,
            self.signed_prekey,
            self.kem_prekey,
            self.one_time_prekey if envelope.setup.one_time_prekey_id is not None else None,
            rng=rng,
            encaps=encaps,
            clock=clock if clock is not None else FakeClock(),
        )
        return session, session.open(envelope)


def make_responder(*, one_time: bool = True, cell_id: bytes = CELL_B) -> Responder:
    return Responder(
        IdentityKeyPair.generate(),
        cell_id,
        X25519KeyPair.generate(),
        KemKeyPair.generate(),
        X25519KeyPair.generate() if one_time else None,
    )


def new_alice(
    responder: Responder,
    *,
    identity: IdentityKeyPair | None = None,
    cell_id: bytes = CELL_A,
    rng: p.RandomBytes = p.system_random,
    encaps: p.Encapsulate = p.mlkem768_encapsulate,
    clock: Clock | None = None,
) -> Session:
    return initiate(
        identity if identity is not None else IdentityKeyPair.generate(),
        cell_id,
        responder.bundle(),
        rng=rng,
        encaps=encaps,
        clock=clock if clock is not None else FakeClock(),
    )


@dataclass
class Pair:
    """Alice and Bob after Alice's first (prekey) envelope ``first`` was opened by Bob."""

    alice: Session
    bob: Session
    responder: Responder
    first: bytes


def new_pair(
    *,
    one_time: bool = True,
    clock: Clock | None = None,
    bob_rng: p.RandomBytes = p.system_random,
    bob_encaps: p.Encapsulate = p.mlkem768_encapsulate,
) -> Pair:
    """A fresh Alice/Bob pair with 16-byte cell ids; Bob has opened Alice's first message."""
    clock = clock if clock is not None else FakeClock()
    responder = make_responder(one_time=one_time)
    alice = new_alice(responder, clock=clock)
    first = send(alice, b"hello bob")
    bob, body = responder.accept(first, rng=bob_rng, encaps=bob_encaps, clock=clock)
    assert body.payload == b"hello bob"
    return Pair(alice, bob, responder, first)


def send(
    session: Session,
    payload: bytes,
    *,
    precedence: Precedence = Precedence.ROUTINE,
    message_id: bytes | None = None,
    expires_at: int = EXPIRES_AT,
    marking: str = "",
) -> bytes:
    """Seal a text message; returns the envelope bytes."""
    return session.seal(
        ContentType.TEXT,
        payload,
        message_id=message_id if message_id is not None else os.urandom(16),
        precedence=precedence,
        expires_at=expires_at,
        marking=marking,
    )


def open_body(session: Session, data: bytes) -> Body:
    return session.open(Envelope.decode(data))


def receive(session: Session, data: bytes) -> bytes:
    """Decode and open envelope bytes; returns the payload."""
    return open_body(session, data).payload


def round_trip(alice: Session, bob: Session) -> None:
    """Bob -> Alice then Alice -> Bob, each opened: both sides take a DH+KEM step."""
    assert receive(alice, send(bob, b"ping")) == b"ping"
    assert receive(bob, send(alice, b"pong")) == b"pong"


def state_bytes(session: Session) -> bytes:
    """The full serialized session (ratchet state included)."""
    return session.to_bytes()


def restore(
    data: bytes,
    *,
    clock: Clock | None = None,
    rng: p.RandomBytes = p.system_random,
    encaps: p.Encapsulate = p.mlkem768_encapsulate,
) -> Session:
    """A deep copy of a session from its serialized bytes."""
    return Session.from_bytes(
        data, rng=rng, encaps=encaps, clock=clock if clock is not None else FakeClock()
    )


def ratchet_state(session: Session) -> RatchetState:
    return session.ratchet.state
