"""Properties of the header-encrypted double ratchet with its ML-KEM step (SPEC.md §8):
out-of-order delivery, replays, tampering, and the skipped-message-key bounds."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.protocol.envelope import ROUTING_LEN, SETUP_LEN, Envelope, EnvelopeKind
from liaison.protocol.errors import (
    DecryptionError,
    LiaisonError,
    MalformedData,
    StateError,
    TooManySkippedMessages,
    UnsafeKeyAgreement,
    UnsupportedVersion,
)
from liaison.protocol.ratchet import DEFAULT_MAX_SKIP, DEFAULT_SKIPPED_TTL, Ratchet
from liaison.protocol.session import Session
from tests.protocol.sessions import (
    FakeClock,
    MemoEncaps,
    make_responder,
    new_alice,
    new_pair,
    open_body,
    receive,
    restore,
    send,
    state_bytes,
)

# --- delivery order ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=2, max_size=3).filter(lambda s: sum(s) <= 8),
    data=st.data(),
)
def test_every_causal_delivery_order_opens_each_message_once(
    sizes: list[int], data: st.DataObject
) -> None:
    """SPEC.md §8.6: for every delivery order of Alice's messages over 2-3 sending chains (each
    a DH+KEM step at Bob) — constrained only by causality: chain i+1 exists once Bob has opened
    a chain-i message and replied — each message opens exactly once, to its plaintext; replays
    at any point are DecryptionError and leave Bob's state unchanged."""
    clock = FakeClock()
    responder = make_responder()
    alice = new_alice(responder, clock=clock)
    pending: list[tuple[int, bytes, bytes]] = []

    def alice_sends(chain: int) -> None:
        for i in range(sizes[chain]):
            payload = b"chain %d message %d" % (chain, i)
            pending.append((chain, send(alice, payload), payload))

    alice_sends(0)
    bob: Session | None = None
    chains_seen: set[int] = set()
    opened: list[bytes] = []
    while pending:
        chain, envelope, payload = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
        if bob is None:
            bob, body = responder.accept(envelope, clock=clock)
        else:
            body = open_body(bob, envelope)
        assert body.payload == payload
        opened.append(envelope)
        if chain not in chains_seen:
            chains_seen.add(chain)
            if chain + 1 < len(sizes):
                assert receive(alice, send(bob, b"reply %d" % chain)) == b"reply %d" % chain
                alice_sends(chain + 1)
        if data.draw(st.booleans()):
            replay = data.draw(st.sampled_from(opened))
            before = state_bytes(bob)
            with pytest.raises(DecryptionError):
                receive(bob, replay)
            assert state_bytes(bob) == before
    assert bob is not None
    assert len(opened) == sum(sizes)
    assert chains_seen == set(range(len(sizes)))
    assert bob.ratchet.state.skipped_count() == 0  # every skipped key was used exactly once
    final = state_bytes(bob)
    for envelope in opened:
        with pytest.raises(DecryptionError):
            receive(bob, envelope)
    assert state_bytes(bob) == final


# --- replays ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    script=st.lists(st.sampled_from(["a2b", "b2a", "a2b-held", "replay"]), min_size=4, max_size=14),
    data=st.data(),
)
def test_replays_fail_and_leave_state_unchanged(script: list[str], data: st.DataObject) -> None:
    """SPEC.md §8.6 [M-RAT-7]/[M-RAT-9]: replaying any envelope a side has already opened (in
    order, out of order, across steps, in either direction) is DecryptionError and leaves its
    state byte-identical."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    opened: list[tuple[Session, bytes]] = [(bob, pair.first)]
    held: list[bytes] = []
    for step, action in enumerate(script):
        if action == "a2b":
            data_ = send(alice, b"a%d" % step)
            assert receive(bob, data_) == b"a%d" % step
            opened.append((bob, data_))
            for late in held:  # deliver held messages after a newer one: skipped keys
                receive(bob, late)
                opened.append((bob, late))
            held.clear()
        elif action == "a2b-held":
            held.append(send(alice, b"held"))
        elif action == "b2a":
            data_ = send(bob, b"b%d" % step)
            assert receive(alice, data_) == b"b%d" % step
            opened.append((alice, data_))
        else:
            receiver, replay = data.draw(st.sampled_from(opened))
            before = state_bytes(receiver)
            with pytest.raises(DecryptionError):
                receive(receiver, replay)
            assert state_bytes(receiver) == before
    for receiver, replay in opened:
        before = state_bytes(receiver)
        with pytest.raises(DecryptionError):
            receive(receiver, replay)
        assert state_bytes(receiver) == before


# --- single-byte tampering --------------------------------------------------------------------


@dataclass(frozen=True)
class FlipCase:
    name: str
    receiver_state: bytes  # the receiver's serialized session just before the delivery
    envelope: bytes
    payload: bytes


@functools.cache
def _flip_cases() -> tuple[FlipCase, ...]:
    """One conversation covering every decryption path: in order, skip ahead, from skipped keys,
    a DH+KEM step on either side, and a late message of an older chain."""
    clock = FakeClock()
    pair = new_pair(clock=clock)
    alice, bob = pair.alice, pair.bob
    cases: list[FlipCase] = []

    def deliver(name: str, receiver: Session, envelope: bytes, payload: bytes) -> None:
        cases.append(FlipCase(name, state_bytes(receiver), envelope, payload))
        assert receive(receiver, envelope) == payload

    deliver("prekey-in-order", bob, send(alice, b"a1"), b"a1")
    a2, a3 = send(alice, b"a2" * 1500), send(alice, b"a3")  # a2 needs an 8192-byte bucket
    late = send(alice, b"late")
    deliver("skip-ahead", bob, a3, b"a3")
    deliver("from-skipped", bob, a2, b"a2" * 1500)
    deliver("alice-step", alice, send(bob, b"b1"), b"b1")
    deliver("alice-in-order", alice, send(bob, b"b2"), b"b2")
    deliver("bob-step", bob, send(alice, b"a4"), b"a4")
    deliver("older-chain-late", bob, late, b"late")
    return tuple(cases)


PREKEY_ID_FIELDS = (ROUTING_LEN + 64, ROUTING_LEN + 68)  # signed / KEM prekey id offsets


def _expected_flip_error(mutated: bytes, index: int) -> type[LiaisonError]:
    """What a single changed byte at ``index`` must cause.

    * version (byte 0): UnsupportedVersion from ``Envelope.decode``;
    * kind (byte 1): a value other than 1/2 is MalformedData; a switch between 1 and 2 changes
      the layout: MalformedData if the bytes now read as a setup block carry a reserved prekey
      id (0xFFFFFFFF), else the envelope parses and ``open`` fails (DecryptionError);
    * precedence (byte 34): a value above 3 is MalformedData;
    * expiry high byte (byte 35): the top bit set is MalformedData (expiry > 2**63-1);
    * every other byte (other routing fields, setup block, nonce, header, body): it parses, and
      ``open`` raises DecryptionError (associated data or AEAD tag mismatch).
    """
    if index == 0:
        return UnsupportedVersion
    if index == 1:
        if mutated[1] not in (EnvelopeKind.MESSAGE, EnvelopeKind.PREKEY):
            return MalformedData
        if mutated[1] == EnvelopeKind.PREKEY:
            for offset in PREKEY_ID_FIELDS:
                if mutated[offset : offset + 4] == b"\xff\xff\xff\xff":
                    return MalformedData
    if index == 34 and mutated[34] > 3:
        return MalformedData
    if index == 35 and mutated[35] & 0x80:
        return MalformedData
    return DecryptionError


def _check_flip(case: FlipCase, receiver: Session, index: int, mask: int) -> None:
    envelope = case.envelope
    mutated = envelope[:index] + bytes([envelope[index] ^ mask]) + envelope[index + 1 :]
    expected = _expected_flip_error(mutated, index)
    before = state_bytes(receiver)
    if expected is DecryptionError:
        parsed = Envelope.decode(mutated)
        with pytest.raises(DecryptionError):
            receiver.open(parsed)
    else:
        with pytest.raises(expected) as info:
            Envelope.decode(mutated)
        assert type(info.value) is expected
    assert state_bytes(receiver) == before


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_single_byte_flip_is_rejected_without_state_change(data: st.DataObject) -> None:
    """SPEC.md §9.1 [M-ENV-1]/§8.6 [M-RAT-7]: flipping any one byte of an envelope (any xor mask)
    is rejected — precisely as ``_expected_flip_error`` says — with the receiver's state
    byte-identical before and after; the genuine envelope still opens afterwards."""
    case = data.draw(st.sampled_from(_flip_cases()))
    index = data.draw(
        st.integers(0, ROUTING_LEN + SETUP_LEN) | st.integers(0, len(case.envelope) - 1)
    )
    mask = data.draw(st.integers(1, 255))
    receiver = restore(case.receiver_state)
    _check_flip(case, receiver, index, mask)
    assert state_bytes(receiver) == case.receiver_state
    assert receive(receiver, case.envelope) == case.payload


@pytest.mark.parametrize("case_index", range(7))
def test_every_routing_byte_flip(case_index: int) -> None:
    """SPEC.md §9.1 [M-ENV-1]/§8.6 [M-RAT-7]: each of the 43 routing-header bytes, flipped with
    several masks, fails exactly as ``_expected_flip_error`` says, and leaves the state
    unchanged."""
    case = _flip_cases()[case_index]
    receiver = restore(case.receiver_state)
    for index in range(ROUTING_LEN):
        for mask in (0x01, 0x02, 0x03, 0x80, 0xFF):
            _check_flip(case, receiver, index, mask)
    assert state_bytes(receiver) == case.receiver_state
    assert receive(receiver, case.envelope) == case.payload


def test_flip_cases_cover_every_path() -> None:
    """SPEC.md §8.6: the tampering corpus has the seven decryption situations."""
    names = "prekey-in-order skip-ahead from-skipped alice-step alice-in-order bob-step"
    assert [c.name for c in _flip_cases()] == [*names.split(), "older-chain-late"]
    assert {len(c.envelope) for c in _flip_cases()} == {4096, 8192}


# --- skipped message keys: the bound ----------------------------------------------------------


def test_default_bounds() -> None:
    """SPEC.md §8.1: defaults are 1000 skipped keys and a 7-day lifetime."""
    ratchet = new_pair().bob.ratchet
    assert ratchet.max_skip == DEFAULT_MAX_SKIP == 1000
    assert ratchet.skipped_ttl == DEFAULT_SKIPPED_TTL == 7 * 24 * 3600.0


def test_constructor_bounds() -> None:
    """SPEC.md §8.1: ``Ratchet(state, max_skip=..., skipped_ttl=...)`` sets the bounds."""
    state = new_pair().bob.ratchet.state
    ratchet = Ratchet(state, max_skip=3, skipped_ttl=60.0)
    assert (ratchet.max_skip, ratchet.skipped_ttl) == (3, 60.0)


def test_too_many_skipped_in_current_chain() -> None:
    """SPEC.md §8.6 [M-RAT-8]: a header asking to skip more than max_skip keys of the current
    chain is TooManySkippedMessages with the state unchanged; max_skip exactly is accepted."""
    pair = new_pair()
    bob = pair.bob
    bob.ratchet.max_skip = 3
    sent = [send(pair.alice, b"m%d" % n) for n in range(1, 6)]  # n = 1..5; Bob's nr is 1
    before = state_bytes(bob)
    with pytest.raises(TooManySkippedMessages):
        receive(bob, sent[4])  # would skip n = 1..4
    assert state_bytes(bob) == before
    assert receive(bob, sent[3]) == b"m4"  # skips n = 1..3: exactly the bound
    assert bob.ratchet.state.skipped_count() == 3
    for n in (1, 2, 3, 5):
        assert receive(bob, sent[n - 1]) == b"m%d" % n
    assert bob.ratchet.state.skipped_count() == 0


def test_too_many_skipped_in_previous_chain() -> None:
    """SPEC.md §8.6 [M-RAT-8]: a step whose ``pn`` asks to skip more than max_skip keys of the
    chain being left is TooManySkippedMessages with the state unchanged."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    unsent = [send(alice, b"old%d" % i) for i in range(5)]  # chain 1, n = 1..5, not delivered
    assert receive(alice, send(bob, b"reply")) == b"reply"  # Alice steps: pn = 6
    step = send(alice, b"new")
    bob.ratchet.max_skip = 4
    before = state_bytes(bob)
    with pytest.raises(TooManySkippedMessages):
        receive(bob, step)  # would skip n = 1..5 of chain 1
    assert state_bytes(bob) == before
    bob.ratchet.max_skip = 5
    assert receive(bob, step) == b"new"
    assert [receive(bob, d) for d in unsent] == [b"old%d" % i for i in range(5)]


def test_too_many_skipped_in_new_chain() -> None:
    """SPEC.md §8.6 [M-RAT-8]: a step whose ``n`` asks to skip more than max_skip keys of the new
    chain is TooManySkippedMessages with the state unchanged."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    assert receive(alice, send(bob, b"reply")) == b"reply"
    new_chain = [send(alice, b"c%d" % n) for n in range(5)]
    bob.ratchet.max_skip = 3
    before = state_bytes(bob)
    with pytest.raises(TooManySkippedMessages):
        receive(bob, new_chain[4])  # would skip n = 0..3 of the new chain
    assert state_bytes(bob) == before
    assert receive(bob, new_chain[3]) == b"c3"
    assert [receive(bob, d) for d in new_chain[:3]] == [b"c0", b"c1", b"c2"]
    assert receive(bob, new_chain[4]) == b"c4"


def test_huge_skip_request_is_refused_cheaply() -> None:
    """SPEC.md §8.6 [M-RAT-8]: with the default bound, skipping 1001 keys is refused (not
    computed)."""
    pair = new_pair()
    for _ in range(DEFAULT_MAX_SKIP + 1):
        pair.alice.ratchet.encrypt(b"", b"")  # advance Alice's chain without envelopes
    data = send(pair.alice, b"far")
    before = state_bytes(pair.bob)
    with pytest.raises(TooManySkippedMessages):
        receive(pair.bob, data)
    assert state_bytes(pair.bob) == before


def test_oldest_skipped_keys_are_evicted_first() -> None:
    """SPEC.md §8.6 [M-RAT-8] (Skip): the total number of stored skipped keys never exceeds
    max_skip; when a new skip overflows the store, the oldest keys are dropped (their messages
    then fail)."""
    clock = FakeClock()
    pair = new_pair(clock=clock)
    bob = pair.bob
    bob.ratchet.max_skip = 3
    sent = [send(pair.alice, b"m%d" % n) for n in range(1, 7)]  # n = 1..6
    clock.advance(10)
    assert receive(bob, sent[2]) == b"m3"  # stores n = 1, 2 at t + 10
    clock.advance(10)
    assert receive(bob, sent[5]) == b"m6"  # stores n = 4, 5 at t + 20: n = 1 is evicted
    assert bob.ratchet.state.skipped_count() == 3
    before = state_bytes(bob)
    with pytest.raises(DecryptionError):
        receive(bob, sent[0])
    assert state_bytes(bob) == before
    assert [receive(bob, sent[n - 1]) for n in (2, 4, 5)] == [b"m2", b"m4", b"m5"]
    assert bob.ratchet.state.skipped_count() == 0


def test_eviction_prefers_older_chains() -> None:
    """SPEC.md §8.6 [M-RAT-8] (Skip): skipped keys of an older chain, stored earlier, are evicted
    before the keys of the new chain."""
    clock = FakeClock()
    pair = new_pair(clock=clock)
    alice, bob = pair.alice, pair.bob
    bob.ratchet.max_skip = 3
    a1, a2, a3 = (send(alice, b"a%d" % n) for n in (1, 2, 3))
    clock.advance(10)
    assert receive(bob, a3) == b"a3"  # chain 1: stores n = 1, 2
    assert receive(alice, send(bob, b"reply")) == b"reply"
    c0, c1, c2 = (send(alice, b"c%d" % n) for n in (0, 1, 2))
    clock.advance(10)
    assert receive(bob, c2) == b"c2"  # chain 2: stores n = 0, 1; chain-1 n = 1 is evicted
    assert bob.ratchet.state.skipped_count() == 3
    with pytest.raises(DecryptionError):
        receive(bob, a1)
    assert [receive(bob, d) for d in (a2, c0, c1)] == [b"a2", b"c0", b"c1"]


@settings(max_examples=60, deadline=None)
@given(
    max_skip=st.integers(1, 4),
    script=st.lists(st.sampled_from(["send", "send", "deliver", "deliver", "reply"]), max_size=30),
    data=st.data(),
)
def test_skipped_store_never_exceeds_bound(
    max_skip: int, script: list[str], data: st.DataObject
) -> None:
    """SPEC.md §8.6 [M-RAT-8]: whatever the sends, replies and (out-of-order, lossy) deliveries,
    Bob's store of skipped keys never holds more than max_skip keys; every message either opens
    to its plaintext or fails with TooManySkippedMessages / DecryptionError (evicted) with the
    state unchanged."""
    clock = FakeClock()
    pair = new_pair(clock=clock)
    alice, bob = pair.alice, pair.bob
    bob.ratchet.max_skip = max_skip
    pending: list[tuple[bytes, bytes]] = []
    for i, action in enumerate(script):
        clock.advance(1)
        if action == "send":
            pending.append((send(alice, b"p%d" % i), b"p%d" % i))
        elif action == "reply":
            assert receive(alice, send(bob, b"r%d" % i)) == b"r%d" % i
        elif pending:
            envelope, payload = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
            before = state_bytes(bob)
            try:
                assert receive(bob, envelope) == payload
            except (TooManySkippedMessages, DecryptionError):
                assert state_bytes(bob) == before
        assert bob.ratchet.state.skipped_count() <= max_skip


# --- skipped message keys: expiry -------------------------------------------------------------


def test_skipped_keys_expire() -> None:
    """SPEC.md §8.6 [M-RAT-9]: a skipped key older than skipped_ttl no longer opens its message
    (DecryptionError, state unchanged); before the deadline it does."""
    clock = FakeClock()
    pair = new_pair(clock=clock)
    bob = pair.bob
    m1, m2 = send(pair.alice, b"m1"), send(pair.alice, b"m2")
    bob.ratchet.skipped_ttl = 100.0
    assert receive(bob, m2) == b"m2"  # stores n = 1 at time t
    saved = state_bytes(bob)

    clock.advance(99)
    early = restore(saved, clock=clock)
    early.ratchet.skipped_ttl = 100.0
    assert receive(early, m1) == b"m1"

    clock.advance(2)  # t + 101
    with pytest.raises(DecryptionError):
        receive(bob, m1)
    assert state_bytes(bob) == saved


def test_expired_keys_of_older_chain() -> None:
    """SPEC.md §8.6 [M-RAT-9]: late messages of an older chain also expire."""
    clock = FakeClock()
    pair = new_pair(clock=clock)
    alice, bob = pair.alice, pair.bob
    late = send(alice, b"late")
    assert receive(alice, send(bob, b"reply")) == b"reply"
    assert receive(bob, send(alice, b"step")) == b"step"  # stores chain-1 n = 1
    bob.ratchet.skipped_ttl = 50.0
    clock.advance(51)
    before = state_bytes(bob)
    with pytest.raises(DecryptionError):
        receive(bob, late)
    assert state_bytes(bob) == before


def test_expired_keys_are_purged_on_next_skip() -> None:
    """SPEC.md §8.6 (Skip), §12.8: expired skipped keys are dropped from the store when new keys
    are stored, so they never count against the bound."""
    clock = FakeClock()
    pair = new_pair(clock=clock)
    bob = pair.bob
    bob.ratchet.skipped_ttl = 10.0
    sent = [send(pair.alice, b"m%d" % n) for n in range(1, 6)]
    assert receive(bob, sent[1]) == b"m2"  # stores n = 1
    assert bob.ratchet.state.skipped_count() == 1
    clock.advance(11)
    assert receive(bob, sent[4]) == b"m5"  # stores n = 3, 4 and drops the expired n = 1
    assert bob.ratchet.state.skipped_count() == 2
    assert sorted(n for keys in bob.ratchet.state.skipped.values() for n in keys) == [3, 4]


# --- what else an authenticated peer can cause ----------------------------------------------


def _alice_at_new_chain() -> tuple[Session, Session]:
    """A pair where Alice's next message starts a new chain (Bob must take a DH+KEM step)."""
    pair = new_pair()
    assert receive(pair.alice, send(pair.bob, b"reply")) == b"reply"
    return pair.alice, pair.bob


@pytest.mark.parametrize("point", [bytes(32), b"\x01" + bytes(31)], ids=["zero", "one"])
def test_low_order_dh_in_authenticated_header(point: bytes) -> None:
    """SPEC.md §8.6 [M-RAT-10]: a (malicious) peer whose authenticated header carries a
    low-order DH key causes UnsafeKeyAgreement, and Bob's state is unchanged."""
    alice, bob = _alice_at_new_chain()
    state = alice.ratchet.state
    assert state.kem_ct is not None
    alice.ratchet._header_prefix = point + bytes(state.kems.public) + state.kem_ct
    data = send(alice, b"evil")
    before = state_bytes(bob)
    with pytest.raises(UnsafeKeyAgreement):
        receive(bob, data)
    assert state_bytes(bob) == before


def test_invalid_kem_public_in_authenticated_header() -> None:
    """SPEC.md §8.6 [M-RAT-10]/[M-PRIM-9]: an authenticated header whose KEM public key fails
    the FIPS 203 modulus check is MalformedData (no encapsulation to it), state unchanged."""
    alice, bob = _alice_at_new_chain()
    state = alice.ratchet.state
    assert state.kem_ct is not None
    bad_kem = b"\xff" * 1152 + bytes(state.kems.public)[1152:]  # coefficients 4095 >= q
    alice.ratchet._header_prefix = bytes(state.dhs.public) + bad_kem + state.kem_ct
    data = send(alice, b"evil")
    before = state_bytes(bob)
    with pytest.raises(MalformedData):
        receive(bob, data)
    assert state_bytes(bob) == before


def test_sending_chain_exhaustion() -> None:
    """SPEC.md §8.5 [M-RAT-5]: no message is numbered 2**32 - 1 or higher (StateError, state
    and channel sequence number unchanged)."""
    alice = new_pair().alice
    alice.ratchet.state.ns = 0xFFFFFFFE
    send(alice, b"the last one")
    before = state_bytes(alice)
    with pytest.raises(StateError):
        send(alice, b"one too many")
    assert state_bytes(alice) == before


def test_each_step_uses_fresh_keys() -> None:
    """SPEC.md §8.6 [M-RAT-11]: every DH ratchet step generates a fresh X25519 and a fresh
    ML-KEM key pair and encapsulates to the KEM public key of the peer's latest header."""
    bob_encaps = MemoEncaps()
    pair = new_pair(bob_encaps=bob_encaps)
    alice, bob = pair.alice, pair.bob
    alice_kems = [bytes(alice.ratchet.state.kems.public)]
    dh_keys = {bytes(alice.ratchet.state.dhs.public), bytes(bob.ratchet.state.dhs.public)}
    kem_keys = {alice_kems[0], bytes(bob.ratchet.state.kems.public)}
    for i in range(4):
        assert receive(alice, send(bob, b"b%d" % i)) == b"b%d" % i  # Alice steps
        alice_kems.append(bytes(alice.ratchet.state.kems.public))
        assert receive(bob, send(alice, b"a%d" % i)) == b"a%d" % i  # Bob steps
        for session in (alice, bob):
            dh_keys.add(bytes(session.ratchet.state.dhs.public))
            kem_keys.add(bytes(session.ratchet.state.kems.public))
    assert len(dh_keys) == len(kem_keys) == 2 + 2 * 4
    assert bob_encaps.calls == alice_kems


# --- API-level checks -------------------------------------------------------------------------


def test_decrypt_rejects_wrong_lengths() -> None:
    """SPEC.md §8.6 [M-RAT-10]: a nonce or encrypted header of the wrong length is
    DecryptionError."""
    pair = new_pair()
    envelope = Envelope.decode(send(pair.alice, b"x"))
    ad = envelope.associated_data()
    ratchet = pair.bob.ratchet
    before = ratchet.state.to_bytes()
    for nonce, header in (
        (envelope.header_nonce[:-1], envelope.header_ciphertext),
        (envelope.header_nonce + b"\x00", envelope.header_ciphertext),
        (envelope.header_nonce, envelope.header_ciphertext[:-1]),
        (envelope.header_nonce, envelope.header_ciphertext + b"\x00"),
        (b"", b""),
    ):
        with pytest.raises(DecryptionError):
            ratchet.decrypt(nonce, header, envelope.body_ciphertext, ad)
    with pytest.raises(DecryptionError):
        ratchet.decrypt(envelope.header_nonce, envelope.header_ciphertext, b"", ad)
    assert ratchet.state.to_bytes() == before
    assert ratchet.decrypt(
        envelope.header_nonce, envelope.header_ciphertext, envelope.body_ciphertext, ad
    )
