"""Security properties of sessions (SPEC.md §8, §12.2, §12.4, §12.6): forward secrecy,
post-compromise recovery, header encryption, and resistance to wedging by forged or garbled
envelopes."""

from __future__ import annotations

import dataclasses
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.protocol import primitives as p
from liaison.protocol.envelope import BUCKETS, Body, Envelope, EnvelopeKind, Routing
from liaison.protocol.errors import DecryptionError
from liaison.protocol.ratchet import HEADER_CIPHERTEXT_LEN, Ratchet, RatchetState
from liaison.protocol.session import Session
from tests.protocol.sessions import (
    MemoEncaps,
    Pair,
    StreamRng,
    new_alice,
    new_pair,
    receive,
    restore,
    round_trip,
    send,
    state_bytes,
)

# --- helpers: what an attacker holding a copied state can try -----------------------------------


def sending_chain_view(session_bytes: bytes) -> Ratchet:
    """A receiving ratchet built from a stolen state's *sending* side: the attacker's best tool
    to read the victim's outgoing messages (header key ``hks`` and chain key ``cks`` as the
    current receiving chain, ``nhks`` as the next header key)."""
    stolen = Session.from_bytes(session_bytes).ratchet.state
    assert stolen.cks is not None
    assert stolen.hks is not None
    view = RatchetState(
        ad=stolen.ad,
        rk=stolen.rk,
        dhs=stolen.dhs,
        dhr=stolen.dhr,
        kems=stolen.kems,
        kemr=stolen.kemr,
        kem_ct=None,
        cks=None,
        ckr=stolen.cks,
        hks=None,
        hkr=stolen.hks,
        nhks=stolen.nhkr,
        nhkr=stolen.nhks,
        nr=stolen.ns,
    )
    return Ratchet(view)


def attacker_reads_outgoing(session_bytes: bytes, data: bytes) -> bytes:
    """Decrypt an envelope sent by the owner of ``session_bytes`` using only that state."""
    envelope = Envelope.decode(data)
    view = sending_chain_view(session_bytes)
    plaintext = view.decrypt(
        envelope.header_nonce,
        envelope.header_ciphertext,
        envelope.body_ciphertext,
        envelope.associated_data(),
    )
    return Body.decode(plaintext).payload


def attacker_reads_incoming(session_bytes: bytes, data: bytes) -> bytes:
    """Decrypt an envelope addressed to the owner of ``session_bytes`` with a copy of it."""
    return receive(restore(session_bytes), data)


def established_pair() -> Pair:
    """A pair where both sides have stepped once and Alice no longer sends the setup block."""
    pair = new_pair()
    round_trip(pair.alice, pair.bob)
    return pair


# --- forward secrecy --------------------------------------------------------------------------


def test_forward_secrecy_copy_cannot_open_the_past() -> None:
    """SPEC.md §12.4 (forward secrecy), [M-RAT-2]: a copy of Bob's state taken right after he
    opened message m cannot open m, nor any earlier message — whether opened in order, out of
    order from a skipped key, or in an earlier chain — "a copy of today's state cannot open
    yesterday's message"."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    history: list[bytes] = [pair.first]
    schedule = [
        ("a", 3, [2, 0, 1]),  # chain 1: out of order
        ("b", 1, []),
        ("a", 4, [0, 3, 1, 2]),  # chain 2
        ("b", 2, []),
        ("a", 2, [1, 0]),  # chain 3
    ]
    for who, count, order in schedule:
        if who == "b":
            for _ in range(count):
                receive(alice, send(bob, b"from bob"))
            continue
        batch = [send(alice, b"msg %d" % len(history)) for _ in range(count)]
        for index in order:
            receive(bob, batch[index])
            history.append(batch[index])
            snapshot = state_bytes(bob)
            for old in history:
                copy = restore(snapshot)
                with pytest.raises(DecryptionError):
                    receive(copy, old)
                assert state_bytes(copy) == snapshot


def test_forward_secrecy_for_alice() -> None:
    """SPEC.md §12.4 (forward secrecy): the same holds for the initiator's copy."""
    pair = established_pair()
    alice, bob = pair.alice, pair.bob
    received: list[bytes] = []
    for i in range(6):
        data = send(bob, b"b%d" % i)
        receive(alice, data)
        received.append(data)
        if i % 2:
            receive(bob, send(alice, b"turn"))
        snapshot = state_bytes(alice)
        for old in received:
            with pytest.raises(DecryptionError):
                attacker_reads_incoming(snapshot, old)


def test_forward_secrecy_of_sent_messages() -> None:
    """SPEC.md §8.2 [M-RAT-2]: a sender's later state cannot decrypt what it already sent:
    message keys of the sending chain are gone after use."""
    pair = established_pair()
    sent = send(pair.alice, b"gone")
    with pytest.raises(DecryptionError):
        attacker_reads_outgoing(state_bytes(pair.alice), sent)
    receive(pair.bob, sent)


# --- post-compromise recovery ---------------------------------------------------------------


def test_post_compromise_recovery_after_one_round_trip() -> None:
    """SPEC.md §12.4 (post-compromise recovery): an attacker who copies Alice's full state at time
    t can read new traffic in both directions until Alice and Bob complete one round trip
    (Bob -> Alice, Alice -> Bob, each opened); after it, fresh DH and KEM secrets the attacker
    never saw protect every new message in both directions."""
    pair = established_pair()
    alice, bob = pair.alice, pair.bob
    stolen = state_bytes(alice)  # time t

    # Before recovery: the copy reads Alice's next message and Bob's next message.
    a_before = send(alice, b"alice before")
    assert attacker_reads_outgoing(stolen, a_before) == b"alice before"
    assert receive(bob, a_before) == b"alice before"
    b_before = send(bob, b"bob before")  # Bob -> Alice: first half of the round trip
    tracking = restore(stolen)  # the attacker follows the conversation with the copy
    assert receive(tracking, b_before) == b"bob before"
    assert receive(alice, b_before) == b"bob before"

    # Alice -> Bob: second half of the round trip. Alice's new chain uses fresh secrets.
    a_heal = send(alice, b"alice heals")
    assert receive(bob, a_heal) == b"alice heals"

    after_a = [send(alice, b"alice after %d" % i) for i in range(2)]
    after_b = [send(bob, b"bob after %d" % i) for i in range(2)]
    tracking_bytes = state_bytes(tracking)
    for data in (a_heal, *after_a):
        for state in (stolen, tracking_bytes):
            with pytest.raises(DecryptionError):
                attacker_reads_outgoing(state, data)
    for data in after_b:
        for state in (stolen, tracking_bytes):
            with pytest.raises(DecryptionError):
                attacker_reads_incoming(state, data)
    assert [receive(bob, d) for d in after_a] == [b"alice after 0", b"alice after 1"]
    assert [receive(alice, d) for d in after_b] == [b"bob after 0", b"bob after 1"]


class SplitRng:
    """An rng whose draws of some lengths come from a stream the attacker can reproduce (a model
    of an attacker who breaks one primitive and so learns those private keys) and whose other
    draws come from a secret stream."""

    def __init__(self, known_lengths: set[int], known_seed: bytes, secret_seed: bytes) -> None:
        self._known_lengths = known_lengths
        self._known = StreamRng(known_seed)
        self._secret = StreamRng(secret_seed)

    def __call__(self, n: int) -> bytes:
        return self._known(n) if n in self._known_lengths else self._secret(n)


@pytest.mark.parametrize("broken", ["x25519", "ml-kem"])
def test_recovery_survives_one_broken_primitive(broken: str) -> None:
    """SPEC.md §8 / §12.6 (hybrid ratchet step), [M-RAT-11]: recovery needs only one of X25519 /
    ML-KEM-768 to hold. The attacker has Alice's state at t and additionally breaks one
    primitive: for "x25519" he knows every X25519 private key Alice generates afterwards; for
    "ml-kem" he knows every ML-KEM private key she generates and every KEM shared secret she
    encapsulates. After the round trip he follows Alice's step with his copy yet cannot read her
    new sending chain."""
    pair = established_pair()
    stolen = state_bytes(pair.alice)
    known = {32} if broken == "x25519" else {64}
    encaps = MemoEncaps(replay=broken == "ml-kem")  # "ml-kem": the attacker learns Alice's secrets
    alice = restore(stolen, rng=SplitRng(known, b"known", b"alice secret"), encaps=encaps)
    attacker = restore(stolen, rng=SplitRng(known, b"known", b"attacker"), encaps=encaps)
    bob = pair.bob

    b_before = send(bob, b"bob before")
    assert receive(attacker, b_before) == b"bob before"
    assert receive(alice, b_before) == b"bob before"
    a_state, m_state = alice.ratchet.state, attacker.ratchet.state
    if broken == "x25519":
        assert a_state.dhs == m_state.dhs
        assert a_state.kems != m_state.kems
    else:
        assert a_state.kems == m_state.kems
        assert a_state.kem_ct == m_state.kem_ct
        assert a_state.dhs != m_state.dhs

    a_heal = send(alice, b"alice heals")
    with pytest.raises(DecryptionError):
        attacker_reads_outgoing(state_bytes(attacker), a_heal)
    assert receive(bob, a_heal) == b"alice heals"
    b_after = send(bob, b"bob after")
    with pytest.raises(DecryptionError):
        receive(attacker, b_after)
    assert receive(alice, b_after) == b"bob after"


def test_compromise_before_recovery_reads_both_directions() -> None:
    """SPEC.md §12.4 (post-compromise recovery, the "before" half): without a round trip the copy
    keeps reading Alice's sending chain and Bob's current chain."""
    pair = established_pair()
    alice, bob = pair.alice, pair.bob
    stolen = state_bytes(alice)
    for i in range(3):
        data = send(alice, b"a%d" % i)
        assert attacker_reads_outgoing(stolen, data) == receive(bob, data)
    first_b = send(bob, b"b0")  # Bob's chain from his last step, not yet seen by Alice
    assert attacker_reads_incoming(stolen, first_b) == b"b0"
    assert receive(alice, first_b) == b"b0"


def test_attacker_view_sanity() -> None:
    """SPEC.md §12.4: the sending-chain view decrypts exactly the owner's outgoing messages (it is
    a faithful model of what a state copy yields)."""
    pair = established_pair()
    stolen = state_bytes(pair.bob)
    data = send(pair.bob, b"observed")
    assert attacker_reads_outgoing(stolen, data) == receive(pair.alice, data)


# --- header encryption ------------------------------------------------------------------------


def test_headers_hide_keys_and_counters() -> None:
    """SPEC.md §8.3/§12.2/§12.7 (header encryption): no envelope contains, anywhere in its bytes,
    the sender's current ratchet DH public key, its ML-KEM public key, its KEM ciphertext, or the
    big-endian ``pn || n`` counters — while the decrypted header contains exactly them."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    pattern = "aaabaabbbaaaababbbbbabaaaaabbbaaabababbbaaaaaaab"
    pending_to_bob: list[bytes] = []
    pending_to_alice: list[bytes] = []
    envelopes: list[tuple[bytes, list[bytes], bytes]] = []  # (envelope, secrets, header)
    for i, who in enumerate(pattern):
        sender = alice if who == "a" else bob
        state = sender.ratchet.state
        data = send(sender, b"%d" % i * (i % 5))
        assert state.hks is not None
        assert state.kem_ct is not None
        counters = struct.pack(">II", state.pn, state.ns - 1)
        secrets = [bytes(state.dhs.public), bytes(state.kems.public), state.kem_ct, counters]
        envelope = Envelope.decode(data)
        header = p.xchacha20poly1305_decrypt(
            state.hks,
            envelope.header_nonce,
            envelope.header_ciphertext,
            state.ad + envelope.associated_data(),
        )
        assert header == b"".join(secrets)
        envelopes.append((data, secrets, header))
        (pending_to_bob if who == "a" else pending_to_alice).append(data)
        if i % 3 == 2:  # deliver in batches, sometimes out of order
            for queue, receiver in ((pending_to_bob, bob), (pending_to_alice, alice)):
                for held in reversed(queue):
                    receive(receiver, held)
                queue.clear()
    all_secrets = {s for _, secrets, _ in envelopes for s in secrets}
    assert len({c for _, secrets, _ in envelopes for c in secrets[3:]}) > 20
    for data, secrets, _ in envelopes:
        for secret in secrets:
            assert secret not in data
        for secret in all_secrets:
            assert secret not in data
        assert len(data) in BUCKETS


def test_header_ciphertext_has_constant_size() -> None:
    """SPEC.md §8.3: every encrypted header has the same length, so its size reveals nothing;
    MESSAGE envelopes with small payloads all use the smallest bucket."""
    pair = established_pair()
    lengths = set()
    for i in range(10):
        for sender in (pair.alice, pair.bob):
            data = send(sender, b"x" * i)
            envelope = Envelope.decode(data)
            assert envelope.routing.kind == EnvelopeKind.MESSAGE
            lengths.add((len(envelope.header_ciphertext), len(data)))
            receive(pair.bob if sender is pair.alice else pair.alice, data)
    assert lengths == {(HEADER_CIPHERTEXT_LEN, BUCKETS[0])}


# --- failed decryption never wedges -----------------------------------------------------------


def _garble(kind: str, data: bytes, other: bytes, foreign: bytes) -> bytes:
    """A forged or garbled variant of ``data`` (``other`` is another genuine envelope of the same
    session; ``foreign`` one from an unrelated session to the same recipient)."""
    envelope = Envelope.decode(data)
    if kind == "body-bit":
        return data[:-1] + bytes([data[-1] ^ 0x40])
    if kind == "header-bit":
        offset = len(envelope.associated_data()) + 24 + 100
        return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]
    if kind == "nonce":
        offset = len(envelope.associated_data())
        return data[:offset] + os.urandom(24) + data[offset + 24 :]
    if kind == "random-crypto":
        prefix = len(envelope.associated_data())
        return data[:prefix] + os.urandom(len(data) - prefix)
    if kind == "header-swap":  # this message's header with another message's body
        second = Envelope.decode(other)
        return dataclasses.replace(
            envelope,
            body_ciphertext=(second.body_ciphertext + bytes(len(envelope.body_ciphertext)))[
                : len(envelope.body_ciphertext)
            ],
        ).encode()
    assert kind == "foreign"
    return foreign


GARBLE_KINDS = ["body-bit", "header-bit", "nonce", "random-crypto", "header-swap", "foreign"]


@settings(max_examples=40, deadline=None)
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([*GARBLE_KINDS, "none"])),
        min_size=3,
        max_size=12,
    )
)
def test_failed_decryption_never_wedges(script: list[tuple[str, str]]) -> None:
    """SPEC.md §8.6 [M-RAT-7]: after any forged or garbled envelope (flipped bits, random nonce,
    random ciphertext, spliced header/body, an envelope of an unrelated session) the receiver's
    state is unchanged and the next genuine message still opens."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    mallory_pair = new_pair()  # an unrelated session with its own Bob
    for i, (who, kind) in enumerate(script):
        sender, receiver = (alice, bob) if who == "a" else (bob, alice)
        data = send(sender, b"genuine %d" % i)
        if kind != "none":
            other = send(sender, b"other %d" % i) if kind == "header-swap" else data
            foreign = send(mallory_pair.alice if who == "a" else mallory_pair.bob, b"forged")
            forged = _garble(kind, data, other, foreign)
            assert forged != data
            before = state_bytes(receiver)
            with pytest.raises(DecryptionError):
                receive(receiver, forged)
            assert state_bytes(receiver) == before
            if kind == "header-swap":
                assert receive(receiver, data) == b"genuine %d" % i
                assert receive(receiver, other) == b"other %d" % i
                continue
        assert receive(receiver, data) == b"genuine %d" % i


def test_failed_first_message_does_not_prevent_session() -> None:
    """SPEC.md §7.5 [M-SES-9]/§8.6: a garbled copy of the first prekey envelope fails at the
    responder, and the genuine first envelope still starts the session."""
    pair = new_pair()
    responder = pair.responder
    alice = new_alice(responder)
    first = send(alice, b"first")
    garbled = first[:-1] + bytes([first[-1] ^ 1])
    with pytest.raises(DecryptionError):
        responder.accept(garbled)
    bob, body = responder.accept(first)
    assert body.payload == b"first"
    round_trip(alice, bob)


def test_routing_of_forged_envelope_is_still_parsed() -> None:
    """SPEC.md §9.1: the relay-visible routing header of a garbled envelope stays parseable
    (the relay can route it; only the recipient rejects it)."""
    pair = new_pair()
    data = send(pair.alice, b"x")
    garbled = data[:-10] + os.urandom(10)
    assert Routing.decode(garbled) == Routing.decode(data)
