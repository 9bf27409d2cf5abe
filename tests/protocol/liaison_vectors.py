"""Liaison's own deterministic test vectors (SPEC.md §13): build, record and replay.

Every random byte comes from ``SeededRandom`` (the SHAKE-256 stream of a seed). ML-KEM-768
encapsulation takes its randomness inside OpenSSL and cannot be seeded through
``cryptography``, so building a vector records each encapsulation (public key digest,
ciphertext, shared secret) and checking it replays them with ``ReplayEncaps``. Decapsulation
with the seeded private keys re-derives every recorded shared secret, so a recorded
encapsulation cannot be wrong without the vector check failing.

Regenerate the file (only when the wire format changes, together with SPEC.md):

    .venv/bin/python -m tests.protocol.liaison_vectors --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from liaison.protocol import primitives as p
from liaison.protocol.envelope import ContentType, Envelope, Precedence
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from liaison.protocol.session import PrekeyBundle, Session, initiate, respond

VECTOR_DIR = Path(__file__).parent.parent / "vectors" / "liaison"
VECTOR_FILE = VECTOR_DIR / "session_transcript.json"
LINK_VECTOR_FILE = VECTOR_DIR / "link_handshake.json"
LINK_SEED = b"Liaison v1 link handshake vector"
EXPIRES_AT = 1_800_000_000
CLOCK = 1_790_000_000.0


class SeededRandom:
    """``rng(n)``: the next ``n`` bytes of SHAKE-256(seed)."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        out = hashlib.shake_256(self._seed).digest(self._pos + n)[self._pos :]
        self._pos += n
        return out


class RecordingEncaps:
    def __init__(self) -> None:
        self.records: list[dict[str, str]] = []

    def __call__(self, public: bytes) -> tuple[bytes, bytes]:
        ct, ss = p.mlkem768_encapsulate(public)
        self.records.append(
            {"public_sha256": hashlib.sha256(public).hexdigest(), "ciphertext": ct.hex(),
             "shared_secret": ss.hex()}
        )  # fmt: skip
        return ct, ss


class ReplayEncaps:
    def __init__(self, records: list[dict[str, str]]) -> None:
        self._records = list(records)

    def __call__(self, public: bytes) -> tuple[bytes, bytes]:
        record = self._records.pop(0)
        assert hashlib.sha256(public).hexdigest() == record["public_sha256"]
        return bytes.fromhex(record["ciphertext"]), bytes.fromhex(record["shared_secret"])

    @property
    def remaining(self) -> int:
        return len(self._records)


# Who sends what, and in which order the recipient opens them: three round trips (each reply
# is a DH+KEM ratchet step), with out-of-order delivery and skipped keys in two chains.
SCRIPT: list[tuple[str, list[int]]] = [
    ("alice", [0, 1, 2]),  # Alice sends 3 (prekey messages)
    ("bob_opens", [2, 0]),  # Bob opens #2 first (skips #0, #1), then #0; #1 stays skipped
    ("bob", [0, 1]),
    ("alice_opens", [1, 0]),
    ("alice", [0, 1, 2, 3]),
    ("bob_opens", [3, 1, 0, 2]),
    ("bob", [0]),
    ("alice_opens", [0]),
    ("alice", [0]),
    ("bob_opens", [0]),
    ("bob_opens_late", [1]),  # the first batch's #1, from two chains ago, via a skipped key
]


def build(rng: p.RandomBytes, encaps: p.Encapsulate) -> dict[str, Any]:
    """Run the scripted conversation; return every input and output as hex."""
    alice_id, bob_id = bytes(range(16)), bytes(range(16, 32))
    alice_ik = IdentityKeyPair.generate(rng)
    bob_ik = IdentityKeyPair.generate(rng)
    spk = X25519KeyPair.generate(rng)
    kem = KemKeyPair.generate(rng)
    otk = X25519KeyPair.generate(rng)
    bundle = PrekeyBundle(
        bob_id, bob_ik.public, SignedPrekey.create(bob_ik, 7, spk),
        SignedKemPrekey.create(bob_ik, 8, kem), OneTimePrekey(9, otk.public),
    )  # fmt: skip
    clock = lambda: CLOCK  # noqa: E731
    alice = initiate(alice_ik, alice_id, bundle, rng=rng, encaps=encaps, clock=clock)
    bob: Session | None = None
    events: list[dict[str, Any]] = []
    batches: list[list[tuple[str, bytes]]] = []
    first_batch: list[tuple[str, bytes]] = []
    counter = 0
    for step, order in SCRIPT:
        if step in ("alice", "bob"):
            sender = alice if step == "alice" else bob
            assert sender is not None
            batch = []
            for _ in order:
                counter += 1
                text = f"{step} message {counter}"
                message_id = counter.to_bytes(16, "big")
                precedence = Precedence(counter % 4)
                env = sender.seal(ContentType.TEXT, text.encode(), message_id=message_id,
                                  precedence=precedence, expires_at=EXPIRES_AT,
                                  marking="NATO RESTRICTED")  # fmt: skip
                batch.append((text, env))
                events.append({"send": step, "plaintext": text, "envelope": env.hex()})
            batches.append(batch)
            if not first_batch:
                first_batch = batch
            continue
        if step == "bob_opens_late":
            chosen = [first_batch[i] for i in order]
        else:
            chosen = [batches[-1][i] for i in order]
        for text, env in chosen:
            envelope = Envelope.decode(env)
            if step.startswith("bob"):
                if bob is None:
                    assert envelope.setup is not None
                    bob = respond(bob_ik, bob_id, alice_id, envelope.setup, spk, kem, otk,
                                  rng=rng, encaps=encaps, clock=clock)  # fmt: skip
                body = bob.open(envelope)
            else:
                body = alice.open(envelope)
            assert body.payload.decode() == text
            events.append({"open": step.split("_")[0], "envelope_sha256":
                           hashlib.sha256(env).hexdigest(), "plaintext": text,
                           "seq": body.seq, "marking": body.marking})  # fmt: skip
    assert bob is not None
    return {
        "alice_identity_public": bytes(alice_ik.public).hex(),
        "bob_identity_public": bytes(bob_ik.public).hex(),
        "alice_cell_id": alice_id.hex(),
        "bob_cell_id": bob_id.hex(),
        "bundle": bundle.encode().hex(),
        "events": events,
        "alice_state_sha256": hashlib.sha256(alice.to_bytes()).hexdigest(),
        "bob_state_sha256": hashlib.sha256(bob.to_bytes()).hexdigest(),
    }


def build_link(rng: p.RandomBytes) -> dict[str, Any]:
    """A link handshake (Noise IK, prologue "Liaison link v1") and two frames each way."""
    from liaison.protocol.link import LinkInitiator, LinkResponder

    cell, relay = X25519KeyPair.generate(rng), X25519KeyPair.generate(rng)
    initiator = LinkInitiator(cell.private_bytes(), bytes(relay.public), rng=rng)
    responder = LinkResponder(relay.private_bytes(), rng=rng)
    hello = initiator.write_hello(b"")
    cell_static, _ = responder.read_hello(hello)
    assert cell_static == bytes(cell.public)
    welcome = responder.write_welcome(bytes(range(16)) + (1_790_000_000_000).to_bytes(8, "big"))
    initiator.read_welcome(welcome)
    tx, rx = initiator.transport(), responder.transport()
    frames = [b"\x0c" + bytes(8), b"\x04" + (42).to_bytes(8, "big")]
    to_relay = [tx.encrypt(f) for f in frames]
    to_cell = [rx.encrypt(f) for f in frames]
    assert [rx.decrypt(m) for m in to_relay] == frames
    assert [tx.decrypt(m) for m in to_cell] == frames
    return {
        "cell_static_public": bytes(cell.public).hex(),
        "relay_static_public": bytes(relay.public).hex(),
        "hello": hello.hex(),
        "welcome": welcome.hex(),
        "handshake_hash": tx.handshake_hash.hex(),
        "frames": [f.hex() for f in frames],
        "cell_to_relay": [m.hex() for m in to_relay],
        "relay_to_cell": [m.hex() for m in to_cell],
    }


def write() -> None:
    seed = b"Liaison v1 session transcript vector"
    recorder = RecordingEncaps()
    result = build(SeededRandom(seed), recorder)
    document = {
        "description": "Liaison v1 deterministic session transcript: PQXDH setup with a one-time "
        "prekey, then a ratchet conversation with 5 DH+KEM steps, out-of-order delivery and "
        "skipped keys (SPEC.md §13). rng = SHAKE-256(seed) stream; ML-KEM encapsulations are "
        "recorded in order and replayed.",
        "seed": seed.hex(),
        "clock_unix": CLOCK,
        "encapsulations": recorder.records,
        **result,
    }
    VECTOR_FILE.parent.mkdir(parents=True, exist_ok=True)
    VECTOR_FILE.write_text(json.dumps(document, indent=1) + "\n")
    link = {
        "description": "Liaison v1 link handshake: Noise_IK_25519_ChaChaPoly_BLAKE2b, prologue "
        "'Liaison link v1'; rng = SHAKE-256(seed) stream giving, in order, the cell static "
        "key, the relay static key, the cell ephemeral, the relay ephemeral (SPEC.md §13).",
        "seed": LINK_SEED.hex(),
        **build_link(SeededRandom(LINK_SEED)),
    }
    LINK_VECTOR_FILE.write_text(json.dumps(link, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.protocol.liaison_vectors --write")
    write()
