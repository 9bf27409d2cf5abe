"""Protocol micro-benchmarks: each row is measured next to its raw-primitive ceiling.

    .venv/bin/python bench/protocol.py [--quick]

Prints a table of µs per operation (median of several repeats) and the ratio to the raw
primitives measured in the same run. Targets (issue #2): ratchet message <= 3x raw
XChaCha20-Poly1305, DH+KEM step <= 1.3x its raw primitives, link transport <= 1.5x raw
ChaCha20-Poly1305. This is a report, not a test: it never fails the build.
"""

from __future__ import annotations

import os
import statistics
import sys
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import mlkem
from nacl import bindings as nacl

from liaison.protocol.envelope import ContentType, Envelope, Precedence
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from liaison.protocol.link import LinkInitiator, LinkResponder
from liaison.protocol.session import PrekeyBundle, Session, initiate, respond

QUICK = "--quick" in sys.argv
REPEATS = 3 if QUICK else 7
PAYLOAD = os.urandom(1024)


def per_call_us(fn: Callable[[], object], number: int) -> float:
    """Median over REPEATS of the mean time of ``number`` calls, in µs."""
    runs = timeit.repeat(fn, number=number, repeat=REPEATS)
    return statistics.median(runs) / number * 1e6


def session_pair() -> tuple[Session, Session]:
    a, b = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    spk, kem = X25519KeyPair.generate(), KemKeyPair.generate()
    bundle = PrekeyBundle(
        b"B" * 16, b.public, SignedPrekey.create(b, 1, spk), SignedKemPrekey.create(b, 2, kem)
    )
    alice = initiate(a, b"A" * 16, bundle)
    hello = alice.seal(ContentType.TEXT, b"hi", message_id=os.urandom(16),
                       precedence=Precedence.ROUTINE, expires_at=2**40)  # fmt: skip
    first = Envelope.decode(hello)
    assert first.setup is not None
    bob = respond(b, b"B" * 16, b"A" * 16, first.setup, spk, kem, None)
    bob.open(first)
    reply = bob.seal(ContentType.TEXT, b"ok", message_id=os.urandom(16),
                     precedence=Precedence.ROUTINE, expires_at=2**40)  # fmt: skip
    alice.open(Envelope.decode(reply))  # steady state: no setup block from here on
    return alice, bob


def bench_ratchet_message() -> list[tuple[str, float, float, str]]:
    key, nonce, ad = os.urandom(32), os.urandom(24), os.urandom(43)
    ct = nacl.crypto_aead_xchacha20poly1305_ietf_encrypt(PAYLOAD, ad, nonce, key)

    def raw() -> None:
        nacl.crypto_aead_xchacha20poly1305_ietf_encrypt(PAYLOAD, ad, nonce, key)
        nacl.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, ad, nonce, key)

    alice, bob = session_pair()
    sender, receiver = alice.ratchet, bob.ratchet

    def ratchet_roundtrip() -> None:
        n, h, b = sender.encrypt(PAYLOAD, ad)
        receiver.decrypt(n, h, b, ad)

    def envelope_roundtrip() -> None:
        data = alice.seal(ContentType.TEXT, PAYLOAD, message_id=nonce[:16],
                          precedence=Precedence.ROUTINE, expires_at=2**40)  # fmt: skip
        bob.open(Envelope.decode(data))

    n = 2000 if QUICK else 10000
    t_raw = per_call_us(raw, n)
    t_ratchet = per_call_us(ratchet_roundtrip, n)
    t_env = per_call_us(envelope_roundtrip, n)
    return [
        ("raw XChaCha20-Poly1305 enc+dec, 1 KiB", t_raw, 1.0, "ceiling"),
        ("ratchet encrypt+decrypt, 1 KiB", t_ratchet, t_ratchet / t_raw, "<= 3.0x"),
        ("envelope seal+open (pad, codec), 1 KiB", t_env, t_env / t_raw, "info"),
    ]


def bench_ratchet_step() -> list[tuple[str, float, float, str]]:
    peer_pub = bytes(KemKeyPair.generate().public)
    own_kem = mlkem.MLKEM768PrivateKey.generate()
    kem_ct = own_kem.public_key().encapsulate()[1]
    dh_a, dh_b = os.urandom(32), nacl.crypto_scalarmult_base(os.urandom(32))

    def raw() -> None:
        own_kem.decapsulate(kem_ct)  # receiving half: decapsulate
        nacl.crypto_scalarmult(dh_a, dh_b)  # DH with our current key
        nacl.crypto_scalarmult_base(os.urandom(32))  # new DH key pair
        mlkem.MLKEM768PrivateKey.from_seed_bytes(os.urandom(64)).public_key().public_bytes_raw()
        mlkem.MLKEM768PublicKey.from_public_bytes(peer_pub).encapsulate()  # sending half
        nacl.crypto_scalarmult(dh_a, dh_b)  # DH with the new key

    alice, bob = session_pair()
    a, b = alice.ratchet, bob.ratchet
    ad = b"x" * 43

    def in_order() -> None:
        n_, h_, c_ = b.encrypt(PAYLOAD, ad)
        a.decrypt(n_, h_, c_, ad)

    def ping_pong() -> None:  # two messages, each opening with a DH+KEM step
        n_, h_, c_ = a.encrypt(PAYLOAD, ad)
        b.decrypt(n_, h_, c_, ad)
        n_, h_, c_ = b.encrypt(PAYLOAD, ad)
        a.decrypt(n_, h_, c_, ad)

    n = 200 if QUICK else 1000
    t_raw = per_call_us(raw, n)
    t_msg = per_call_us(in_order, n * 5)
    t_pp = per_call_us(ping_pong, n)
    t_step = (t_pp - 2 * t_msg) / 2
    return [
        ("raw: decaps + 2 X25519 + keygens + encaps", t_raw, 1.0, "ceiling"),
        ("ratchet DH+KEM step (message cost removed)", t_step, t_step / t_raw, "<= 1.3x"),
    ]


def bench_link() -> list[tuple[str, float, float, str]]:
    key, nonce = os.urandom(32), os.urandom(12)
    ct = nacl.crypto_aead_chacha20poly1305_ietf_encrypt(PAYLOAD, b"", nonce, key)

    def raw() -> None:
        nacl.crypto_aead_chacha20poly1305_ietf_encrypt(PAYLOAD, b"", nonce, key)
        nacl.crypto_aead_chacha20poly1305_ietf_decrypt(ct, b"", nonce, key)

    cell, relay = X25519KeyPair.generate(), X25519KeyPair.generate()
    initiator = LinkInitiator(cell.private_bytes(), bytes(relay.public))
    responder = LinkResponder(relay.private_bytes())
    responder.read_hello(initiator.write_hello(b""))
    initiator.read_welcome(responder.write_welcome(b""))
    tx, rx = initiator.transport(), responder.transport()

    def transport() -> None:
        rx.decrypt(tx.encrypt(PAYLOAD))

    n = 2000 if QUICK else 10000
    t_raw = per_call_us(raw, n)
    t_link = per_call_us(transport, n)
    return [
        ("raw ChaCha20-Poly1305 enc+dec, 1 KiB", t_raw, 1.0, "ceiling"),
        ("link transport encrypt+decrypt, 1 KiB", t_link, t_link / t_raw, "<= 1.5x"),
    ]


def main() -> None:
    rows = bench_ratchet_message() + bench_ratchet_step() + bench_link()
    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'µs/op':>9}  {'ratio':>6}  target")
    print("-" * (width + 30))
    for name, micros, ratio, target in rows:
        print(f"{name:<{width}}  {micros:9.2f}  {ratio:5.2f}x  {target}")


if __name__ == "__main__":
    main()
