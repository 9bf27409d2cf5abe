"""PQXDH-style session setup and the Session object (SPEC.md §7, §5.3): prekey bundles, key
agreement, associated data, relay tampering, the setup block's lifetime and session persistence."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from liaison.protocol.envelope import Body, ContentType, Envelope, EnvelopeKind, Precedence, Routing
from liaison.protocol.errors import (
    BadSignature,
    DecryptionError,
    MalformedData,
    StateError,
    UnsafeKeyAgreement,
    UnsupportedVersion,
)
from liaison.protocol.keys import (
    IdentityKey,
    IdentityKeyPair,
    KemKeyPair,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
    X25519PublicKey,
)
from liaison.protocol.ratchet import RatchetState
from liaison.protocol.session import PrekeyBundle, Session, initiate, respond, session_ad
from tests.protocol.sessions import (
    CELL_A,
    CELL_B,
    KEM_PREKEY_ID,
    ONE_TIME_PREKEY_ID,
    SIGNED_PREKEY_ID,
    FakeClock,
    MemoEncaps,
    Responder,
    StreamRng,
    make_responder,
    new_alice,
    new_pair,
    open_body,
    receive,
    restore,
    round_trip,
    send,
    state_bytes,
)
from tests.vectorload import load_json

CELL_C = bytes.fromhex("c3" * 16)


def _low_order_points() -> list[bytes]:
    """Every X25519 public key of Wycheproof's x25519 vectors whose shared secret is zero."""
    vectors = load_json("wycheproof/x25519_test.json")
    found = {
        test["public"]
        for group in vectors["testGroups"]
        for test in group["tests"]
        if "ZeroSharedSecret" in test["flags"] and len(test["public"]) == 64
    }
    return [bytes.fromhex(h) for h in sorted(found)]


LOW_ORDER = _low_order_points()
LOW_ORDER_IDS = [point.hex()[:8] + "…" + point.hex()[-4:] for point in LOW_ORDER]


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


class Recorder:
    """An rng that records every request (and refuses none)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        return bytes([0x42]) * n


def test_low_order_vector_set() -> None:
    """SPEC.md §4 [M-PRIM-2]: the Wycheproof low-order set includes 0 and 1 and is not empty."""
    assert bytes(32) in LOW_ORDER
    assert b"\x01" + bytes(31) in LOW_ORDER
    assert len(LOW_ORDER) >= 10


# --- PQXDH ------------------------------------------------------------------------------------


@pytest.mark.parametrize("one_time", [True, False], ids=["with-otk", "without-otk"])
def test_pqxdh_conversation(one_time: bool) -> None:
    """SPEC.md §7.2/§7.5 [M-SES-1]: PQXDH with and without a one-time prekey yields one shared
    session."""
    pair = new_pair(one_time=one_time)
    setup = Envelope.decode(pair.first).setup
    assert setup is not None
    assert setup.signed_prekey_id == SIGNED_PREKEY_ID
    assert setup.kem_prekey_id == KEM_PREKEY_ID
    assert setup.one_time_prekey_id == (ONE_TIME_PREKEY_ID if one_time else None)
    assert pair.alice.ratchet.state.ad[8:40] == bytes(setup.identity)  # IK_A after label+version
    assert pair.bob.peer_identity == setup.identity
    assert pair.alice.peer_identity == pair.responder.identity.public
    for i in range(3):
        assert receive(pair.alice, send(pair.bob, b"b%d" % i)) == b"b%d" % i
        assert receive(pair.bob, send(pair.alice, b"a%d" % i)) == b"a%d" % i


def test_bundle_round_trip() -> None:
    """SPEC.md §5.3: a prekey bundle encodes and decodes losslessly, with or without an OTK."""
    for one_time in (True, False):
        bundle = make_responder(one_time=one_time).bundle()
        assert PrekeyBundle.decode(bundle.encode()) == bundle
        PrekeyBundle.decode(bundle.encode()).verify()


def test_bundle_lengths() -> None:
    """SPEC.md §5.3: a prekey bundle is 1401 bytes, or 1437 with a one-time prekey."""
    assert len(make_responder(one_time=False).bundle().encode()) == 1401
    assert len(make_responder(one_time=True).bundle().encode()) == 1437


def _with_bytes(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


BUNDLE_WITH_OTK = make_responder(one_time=True).bundle().encode()
BUNDLE_WITHOUT_OTK = make_responder(one_time=False).bundle().encode()
BAD_BUNDLES = {
    "1400-bytes": BUNDLE_WITHOUT_OTK[:-1],
    "1402-bytes": BUNDLE_WITHOUT_OTK + b"\x00",
    "1436-bytes": BUNDLE_WITH_OTK[:-1],
    "1438-bytes": BUNDLE_WITH_OTK + b"\x00",
    "empty": b"",
    "flag-2": _with_bytes(BUNDLE_WITH_OTK, 1400, b"\x02"),
    "flag-0-with-otk": _with_bytes(BUNDLE_WITH_OTK, 1400, b"\x00"),
    "flag-1-without-otk": _with_bytes(BUNDLE_WITHOUT_OTK, 1400, b"\x01"),
    "spk-id-reserved": _with_bytes(BUNDLE_WITH_OTK, 48, b"\xff" * 4),
    "kem-id-reserved": _with_bytes(BUNDLE_WITH_OTK, 148, b"\xff" * 4),
    "opk-id-reserved": _with_bytes(BUNDLE_WITH_OTK, 1401, b"\xff" * 4),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bundle_decoder_rejects(case: str) -> None:
    """SPEC.md §5.3 [M-KEY-5]: lengths other than 1401/1437, an opk_flag other than 0/1 or not
    matching the length, and a reserved prekey id are MalformedData."""
    with pytest.raises(MalformedData):
        PrekeyBundle.decode(BAD_BUNDLES[case])


def test_responder_requires_one_time_prekey_exactly_when_named() -> None:
    """SPEC.md §7.5 [M-SES-1]: respond refuses a missing or surplus one-time prekey (StateError)."""
    for one_time in (True, False):
        responder = make_responder(one_time=one_time)
        setup = Envelope.decode(send(new_alice(responder), b"x")).setup
        assert setup is not None
        otk = None if one_time else X25519KeyPair.generate()
        with pytest.raises(StateError):
            respond(
                responder.identity,
                CELL_B,
                CELL_A,
                setup,
                responder.signed_prekey,
                responder.kem_prekey,
                otk,
            )


# --- bundle signatures are checked before use -------------------------------------------------


def _bad_bundles(responder: Responder) -> dict[str, PrekeyBundle]:
    bundle = responder.bundle()
    spk, kem = bundle.signed_prekey, bundle.kem_prekey
    mallory = IdentityKeyPair.generate()
    return {
        "spk-signature": dataclasses.replace(
            bundle, signed_prekey=SignedPrekey(spk.prekey_id, spk.public, _flip(spk.signature))
        ),
        "kem-signature": dataclasses.replace(
            bundle, kem_prekey=SignedKemPrekey(kem.prekey_id, kem.public, _flip(kem.signature, 40))
        ),
        "spk-key-swapped": dataclasses.replace(
            bundle,
            signed_prekey=SignedPrekey(
                spk.prekey_id, X25519KeyPair.generate().public, spk.signature
            ),
        ),
        "kem-key-swapped": dataclasses.replace(
            bundle,
            kem_prekey=SignedKemPrekey(kem.prekey_id, KemKeyPair.generate().public, kem.signature),
        ),
        "spk-id-changed": dataclasses.replace(
            bundle, signed_prekey=SignedPrekey(spk.prekey_id + 1, spk.public, spk.signature)
        ),
        "identity-swapped": dataclasses.replace(bundle, identity=mallory.public),
        "kem-signed-by-mallory": dataclasses.replace(
            bundle, kem_prekey=SignedKemPrekey.create(mallory, kem.prekey_id, KemKeyPair.generate())
        ),
        "low-order-spk-badly-signed": dataclasses.replace(
            bundle,
            signed_prekey=SignedPrekey(spk.prekey_id, X25519PublicKey(bytes(32)), spk.signature),
        ),
    }


BAD_BUNDLE_CASES = list(_bad_bundles(make_responder()))


@pytest.mark.parametrize("case", BAD_BUNDLE_CASES)
def test_initiate_rejects_bad_bundle_signature_before_use(case: str) -> None:
    """SPEC.md §7.2 [M-KEY-4]: both prekey signatures are verified before any key is used: a bad
    SPK or KEM signature is BadSignature, with no randomness drawn and no encapsulation made."""
    bundle = _bad_bundles(make_responder())[case]
    rng, encaps = Recorder(), MemoEncaps()
    with pytest.raises(BadSignature):
        initiate(IdentityKeyPair.generate(), CELL_A, bundle, rng=rng, encaps=encaps)
    assert rng.calls == []
    assert encaps.calls == []


def test_decoded_bundle_with_bad_signature_is_rejected() -> None:
    """SPEC.md §5.3/§7.2: a bundle that arrives with a corrupted signature still decodes but
    cannot start a session."""
    encoded = make_responder().bundle().encode()
    signature_at = 16 + 32 + 4 + 32  # cell id, identity, spk id, spk public
    bundle = PrekeyBundle.decode(_flip(encoded, signature_at + 5))
    with pytest.raises(BadSignature):
        initiate(IdentityKeyPair.generate(), CELL_A, bundle)


# --- low-order points -------------------------------------------------------------------------


@pytest.mark.parametrize("point", LOW_ORDER, ids=LOW_ORDER_IDS)
def test_low_order_signed_prekey(point: bytes) -> None:
    """SPEC.md §7.2 [M-SES-2]/[M-PRIM-2]: a (validly signed) low-order signed prekey makes DH
    all-zero: UnsafeKeyAgreement, before any encapsulation."""
    responder = make_responder()
    bundle = responder.bundle()
    public = X25519PublicKey(point)
    signature = responder.identity.sign(SignedPrekey.signed_data(SIGNED_PREKEY_ID, public))
    bad = dataclasses.replace(
        bundle, signed_prekey=SignedPrekey(SIGNED_PREKEY_ID, public, signature)
    )
    bad.verify()
    encaps = MemoEncaps()
    with pytest.raises(UnsafeKeyAgreement):
        initiate(IdentityKeyPair.generate(), CELL_A, bad, encaps=encaps)
    assert encaps.calls == []


@pytest.mark.parametrize("point", LOW_ORDER, ids=LOW_ORDER_IDS)
def test_low_order_one_time_prekey(point: bytes) -> None:
    """SPEC.md §7.2 [M-SES-2]: a low-order one-time prekey is UnsafeKeyAgreement."""
    bundle = dataclasses.replace(
        make_responder().bundle(),
        one_time_prekey=OneTimePrekey(ONE_TIME_PREKEY_ID, X25519PublicKey(point)),
    )
    encaps = MemoEncaps()
    with pytest.raises(UnsafeKeyAgreement):
        initiate(IdentityKeyPair.generate(), CELL_A, bundle, encaps=encaps)
    assert encaps.calls == []


@pytest.mark.parametrize("point", LOW_ORDER, ids=LOW_ORDER_IDS)
def test_low_order_setup_ephemeral(point: bytes) -> None:
    """SPEC.md §7.5 [M-SES-2]: the responder refuses a low-order ephemeral key
    (UnsafeKeyAgreement)."""
    responder = make_responder()
    setup = Envelope.decode(send(new_alice(responder), b"x")).setup
    assert setup is not None
    bad = dataclasses.replace(setup, ephemeral=X25519PublicKey(point))
    with pytest.raises(UnsafeKeyAgreement):
        respond(
            responder.identity,
            CELL_B,
            CELL_A,
            bad,
            responder.signed_prekey,
            responder.kem_prekey,
            responder.one_time_prekey,
        )


@pytest.mark.parametrize(
    "identity_hex",
    [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ],
)
def test_unusable_setup_identity(identity_hex: str) -> None:
    """SPEC.md §7.5 [M-PRIM-4]: a setup whose identity is not a usable Ed25519 point is
    MalformedData."""
    responder = make_responder()
    setup = Envelope.decode(send(new_alice(responder), b"x")).setup
    assert setup is not None
    bad = dataclasses.replace(setup, identity=IdentityKey(bytes.fromhex(identity_hex)))
    with pytest.raises(MalformedData):
        respond(
            responder.identity,
            CELL_B,
            CELL_A,
            bad,
            responder.signed_prekey,
            responder.kem_prekey,
            responder.one_time_prekey,
        )


# --- the responder needs exactly the right prekeys --------------------------------------------


@pytest.mark.parametrize("wrong", ["signed-prekey", "kem-prekey", "one-time-prekey", "identity"])
def test_wrong_responder_key_cannot_open_first_message(wrong: str) -> None:
    """SPEC.md §7.5: with a wrong SPK, KEM prekey, OTK or identity the responder's session
    cannot open the first message (DecryptionError); a correct respond afterwards can."""
    responder = make_responder()
    data = send(new_alice(responder), b"first")
    envelope = Envelope.decode(data)
    assert envelope.setup is not None
    identity, spk = responder.identity, responder.signed_prekey
    kem, otk = responder.kem_prekey, responder.one_time_prekey
    if wrong == "identity":
        identity = IdentityKeyPair.generate()
    elif wrong == "signed-prekey":
        spk = X25519KeyPair.generate()
    elif wrong == "kem-prekey":
        kem = KemKeyPair.generate()
    else:
        otk = X25519KeyPair.generate()
    wrong_session = respond(identity, CELL_B, CELL_A, envelope.setup, spk, kem, otk)
    before = state_bytes(wrong_session)
    with pytest.raises(DecryptionError):
        wrong_session.open(envelope)
    assert state_bytes(wrong_session) == before
    _session, body = responder.accept(data)
    assert body.payload == b"first"
    assert body.seq == 1


# --- associated data --------------------------------------------------------------------------


def test_session_ad_layout() -> None:
    """SPEC.md §7.3: AD = "Liaison" || version || IK_A || IK_B || cell_A || cell_B."""
    a = IdentityKeyPair(bytes([1]) * 32).public
    b = IdentityKeyPair(bytes([2]) * 32).public
    assert session_ad(a, b, CELL_A, CELL_B) == (
        b"Liaison\x01" + bytes(a) + bytes(b) + CELL_A + CELL_B
    )
    assert len(session_ad(a, b, CELL_A, CELL_B)) == 104
    with pytest.raises(MalformedData):
        session_ad(a, b, CELL_A[:15], CELL_B)
    with pytest.raises(MalformedData):
        session_ad(a, b, CELL_A, CELL_B + b"\x00")


def test_both_sides_compute_the_same_ad() -> None:
    """SPEC.md §7.3: initiator and responder bind the same AD (initiator's fields first)."""
    pair = new_pair()
    expected = session_ad(pair.bob.peer_identity, pair.responder.identity.public, CELL_A, CELL_B)
    assert pair.alice.ratchet.state.ad == expected
    assert pair.bob.ratchet.state.ad == expected


@pytest.mark.parametrize(("own_cell", "peer_cell"), [(CELL_B, CELL_C), (CELL_C, CELL_A)])
def test_ad_binds_cell_ids(own_cell: bytes, peer_cell: bytes) -> None:
    """SPEC.md §7.3: a responder session with a different peer (or own) cell id derives the same
    keys but cannot open (DecryptionError): the cell ids are bound as associated data."""
    responder = make_responder()
    data = send(new_alice(responder), b"first")
    envelope = Envelope.decode(data)
    assert envelope.setup is not None
    session = respond(
        responder.identity,
        own_cell,
        peer_cell,
        envelope.setup,
        responder.signed_prekey,
        responder.kem_prekey,
        responder.one_time_prekey,
    )
    with pytest.raises(DecryptionError):
        session.open(envelope)
    assert responder.accept(data)[1].payload == b"first"


@pytest.mark.parametrize("field", ["initiator-identity", "responder-identity", "cell-a", "cell-b"])
def test_ad_binds_identities_and_cells_in_an_established_session(field: str) -> None:
    """SPEC.md §7.3: changing any one AD component (either identity, either cell id) of an
    otherwise identical ratchet state makes the next message unopenable."""
    pair = new_pair()
    ik_a, ik_b = pair.bob.peer_identity, pair.responder.identity.public
    other = IdentityKeyPair.generate().public
    variants = {
        "initiator-identity": session_ad(other, ik_b, CELL_A, CELL_B),
        "responder-identity": session_ad(ik_a, other, CELL_A, CELL_B),
        "cell-a": session_ad(ik_a, ik_b, CELL_C, CELL_B),
        "cell-b": session_ad(ik_a, ik_b, CELL_A, CELL_C),
    }
    data = send(pair.alice, b"bound")
    saved = state_bytes(pair.bob)
    tampered = restore(saved)
    tampered.ratchet.state.ad = variants[field]
    with pytest.raises(DecryptionError):
        receive(tampered, data)
    assert receive(restore(saved), data) == b"bound"


# --- relay tampering --------------------------------------------------------------------------


def _reencode(data: bytes, **changes: object) -> bytes:
    envelope = Envelope.decode(data)
    routing_fields = {k: v for k, v in changes.items() if k in Routing.__dataclass_fields__}
    setup_fields = {k: v for k, v in changes.items() if k not in routing_fields}
    routing = dataclasses.replace(envelope.routing, **routing_fields)  # type: ignore[arg-type]
    setup = envelope.setup
    if setup_fields:
        assert setup is not None
        setup = dataclasses.replace(setup, **setup_fields)  # type: ignore[arg-type]
    return dataclasses.replace(envelope, routing=routing, setup=setup).encode()


ROUTING_TAMPERING: dict[str, dict[str, object]] = {
    "precedence-flash": {"precedence": Precedence.FLASH},
    "precedence-immediate": {"precedence": Precedence.IMMEDIATE},
    "precedence-priority": {"precedence": Precedence.PRIORITY},
    "expiry+1": {"expires_at": 1_900_000_001},
    "expiry-0": {"expires_at": 0},
    "recipient": {"recipient": CELL_C},
    "message-id": {"message_id": bytes(16)},
}
SETUP_TAMPERING: dict[str, dict[str, object]] = {
    "setup-spk-id": {"signed_prekey_id": SIGNED_PREKEY_ID + 1},
    "setup-kem-id": {"kem_prekey_id": KEM_PREKEY_ID + 1},
    "setup-otk-id": {"one_time_prekey_id": ONE_TIME_PREKEY_ID + 1},
    "setup-otk-none": {"one_time_prekey_id": None},
    "setup-ephemeral": {"ephemeral": X25519KeyPair.generate().public},
    "setup-identity": {"identity": IdentityKeyPair.generate().public},
    "setup-kem-ciphertext": {"kem_ciphertext": bytes(1088)},
}


@pytest.mark.parametrize("case", list(ROUTING_TAMPERING) + list(SETUP_TAMPERING))
def test_relay_tampering_prekey_envelope(case: str) -> None:
    """SPEC.md §9.1/§7.3: a relay that changes any routing field or the setup block of a prekey
    envelope makes it unopenable (DecryptionError, state unchanged); the genuine one opens."""
    pair = new_pair()
    data = send(pair.alice, b"second", precedence=Precedence.ROUTINE)
    assert Routing.decode(data).kind == EnvelopeKind.PREKEY
    changes = ROUTING_TAMPERING.get(case) or SETUP_TAMPERING[case]
    tampered = _reencode(data, **changes)
    assert tampered != data
    before = state_bytes(pair.bob)
    with pytest.raises(DecryptionError):
        receive(pair.bob, tampered)
    assert state_bytes(pair.bob) == before
    assert receive(pair.bob, data) == b"second"


@pytest.mark.parametrize("case", list(ROUTING_TAMPERING))
def test_relay_tampering_message_envelope(case: str) -> None:
    """SPEC.md §9.1/§7.3: the same for a MESSAGE envelope (no setup block)."""
    pair = new_pair()
    data = send(pair.bob, b"reply")
    assert Routing.decode(data).kind == EnvelopeKind.MESSAGE
    tampered = _reencode(data, **ROUTING_TAMPERING[case])
    before = state_bytes(pair.alice)
    with pytest.raises(DecryptionError):
        receive(pair.alice, tampered)
    assert state_bytes(pair.alice) == before
    assert receive(pair.alice, data) == b"reply"


@pytest.mark.parametrize("case", list(ROUTING_TAMPERING) + list(SETUP_TAMPERING))
def test_relay_tampering_first_envelope(case: str) -> None:
    """SPEC.md §7.5/§7.3: a tampered first envelope cannot be opened by a session built from
    it; the genuine envelope still can."""
    responder = make_responder()
    data = send(new_alice(responder), b"first")
    changes = ROUTING_TAMPERING.get(case) or SETUP_TAMPERING[case]
    tampered = _reencode(data, **changes)
    setup = Envelope.decode(tampered).setup
    assert setup is not None
    otk = responder.one_time_prekey if setup.one_time_prekey_id is not None else None
    session = respond(
        responder.identity,
        CELL_B,
        CELL_A,
        setup,
        responder.signed_prekey,
        responder.kem_prekey,
        otk,
    )
    with pytest.raises(DecryptionError):
        receive(session, tampered)
    assert responder.accept(data)[1].payload == b"first"


# --- the setup block's lifetime ---------------------------------------------------------------


def _has_pending_setup(session: Session) -> bool:
    return session.pending_setup is not None


def test_pending_setup_until_first_reply_is_opened() -> None:
    """SPEC.md §7.4 [M-SES-4]: Alice sends the same setup block with every envelope until she has
    opened a reply; a forged reply does not stop it; afterwards her envelopes are MESSAGE."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    first_setup = Envelope.decode(pair.first).setup
    sent = [send(alice, b"m%d" % i) for i in range(3)]
    for data in sent:
        envelope = Envelope.decode(data)
        assert envelope.routing.kind == EnvelopeKind.PREKEY
        assert envelope.setup == first_setup
    reply = send(bob, b"reply")
    assert Routing.decode(reply).kind == EnvelopeKind.MESSAGE
    assert Routing.decode(send(alice, b"before")).kind == EnvelopeKind.PREKEY
    forged = reply[:-1] + bytes([reply[-1] ^ 1])
    with pytest.raises(DecryptionError):
        receive(alice, forged)
    assert _has_pending_setup(alice)
    assert Routing.decode(send(alice, b"still")).kind == EnvelopeKind.PREKEY
    restored = restore(state_bytes(alice))
    assert restored.pending_setup == first_setup
    assert receive(alice, reply) == b"reply"
    assert not _has_pending_setup(alice)
    after = send(alice, b"after")
    assert Envelope.decode(after).setup is None
    assert Routing.decode(after).kind == EnvelopeKind.MESSAGE
    for data in sent:
        receive(bob, data)
    assert receive(bob, after) == b"after"
    assert all(Routing.decode(send(bob, b"b")).kind == EnvelopeKind.MESSAGE for _ in range(2))


def test_responder_cannot_send_before_opening() -> None:
    """SPEC.md §8.4 [M-RAT-3]: a responder session that has not opened anything cannot seal
    (StateError), and the failure consumes no sequence number."""
    responder = make_responder()
    data = send(new_alice(responder), b"first")
    setup = Envelope.decode(data).setup
    assert setup is not None
    bob = respond(
        responder.identity,
        CELL_B,
        CELL_A,
        setup,
        responder.signed_prekey,
        responder.kem_prekey,
        responder.one_time_prekey,
    )
    with pytest.raises(StateError):
        send(bob, b"too early")
    assert bob.send_seq == 0
    receive(bob, data)
    reply = send(bob, b"now")
    assert Envelope.decode(reply).routing.kind == EnvelopeKind.MESSAGE


def test_sequence_numbers_count_from_one() -> None:
    """SPEC.md §9.2 [M-ENV-8]: each direction numbers its messages 1, 2, 3, ..."""
    pair = new_pair()
    assert open_body(pair.alice, send(pair.bob, b"x")).seq == 1
    assert open_body(pair.bob, send(pair.alice, b"y")).seq == 2
    assert open_body(pair.alice, send(pair.bob, b"z")).seq == 2


def test_sent_at_uses_injected_clock() -> None:
    """SPEC.md §9.2: sent-at is the sender's clock in milliseconds."""
    clock = FakeClock(1_790_000_000.25)
    pair = new_pair(clock=clock)
    assert open_body(pair.alice, send(pair.bob, b"x")).sent_at_ms == 1_790_000_000_250


def test_malformed_body_from_peer_is_consumed() -> None:
    """SPEC.md §9.2 [M-ENV-7]: a body that authenticates but does not parse (here: flags = 1)
    is MalformedData; the ratchet advance is kept (a second attempt is DecryptionError), the
    pending setup block is cleared, and the session keeps working."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    routing = Routing(EnvelopeKind.MESSAGE, CELL_A, bytes(range(16)), Precedence.ROUTINE, 2**40)
    body = Body(ContentType.TEXT, 1, 0, b"x").encode(EnvelopeKind.MESSAGE)
    bad = body[:1] + b"\x01" + body[2:]
    nonce, header_ct, body_ct = bob.ratchet.encrypt(bad, routing.encode())
    data = Envelope(routing, None, nonce, header_ct, body_ct).encode()
    assert _has_pending_setup(alice)
    with pytest.raises(MalformedData):
        receive(alice, data)
    assert not _has_pending_setup(alice)
    with pytest.raises(DecryptionError):
        receive(alice, data)
    assert receive(alice, send(bob, b"next")) == b"next"
    assert receive(bob, send(alice, b"fine")) == b"fine"


class RecordingRng(StreamRng):
    """A deterministic rng that records every draw."""

    def __init__(self, seed: bytes) -> None:
        super().__init__(seed)
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = super().__call__(n)
        self.draws.append(out)
        return out


def test_random_draw_order() -> None:
    """SPEC.md §8.7: initiate draws EK_A (32), then the ratchet's DHs (32) and KEMs seed (64),
    encapsulating to PQSPK_B for the setup CT first and the ratchet's KEMct second; encrypt
    draws a 24-byte nonce; a ratchet step draws DHs (32), KEMs seed (64), then encapsulates to
    the KEM public key of the peer's header."""
    responder = make_responder()
    rng, encaps = RecordingRng(b"alice"), MemoEncaps()
    alice = initiate(
        IdentityKeyPair.generate(),
        CELL_A,
        responder.bundle(),
        rng=rng,
        encaps=encaps,
        clock=FakeClock(),
    )
    assert [len(d) for d in rng.draws] == [32, 32, 64]
    ek, dhs, kems = rng.draws
    setup, state = alice.pending_setup, alice.ratchet.state
    assert setup is not None
    assert setup.ephemeral == X25519KeyPair(ek).public
    assert state.dhs == X25519KeyPair(dhs)
    assert state.kems == KemKeyPair(kems)
    pqspk = bytes(responder.kem_prekey.public)
    assert encaps.calls == [pqspk, pqspk]
    assert setup.kem_ciphertext != state.kem_ct  # two distinct encapsulations
    first = send(alice, b"first")
    assert len(rng.draws[-1]) == 24
    assert Envelope.decode(first).header_nonce == rng.draws[-1]
    bob_rng, bob_encaps = RecordingRng(b"bob"), MemoEncaps()
    bob, _ = responder.accept(first, rng=bob_rng, encaps=bob_encaps)
    assert [len(d) for d in bob_rng.draws] == [32, 64]
    assert bob.ratchet.state.dhs == X25519KeyPair(bob_rng.draws[0])
    assert bob.ratchet.state.kems == KemKeyPair(bob_rng.draws[1])
    assert bob_encaps.calls == [bytes(state.kems.public)]


# --- persistence ------------------------------------------------------------------------------


def test_session_round_trip_preserves_behaviour() -> None:
    """SPEC.md §8.8: to_bytes/from_bytes at every stage (pending setup, skipped keys, after
    steps) is byte-identical and both restored sides keep talking."""
    pair = new_pair()
    alice, bob = pair.alice, pair.bob
    late = [send(alice, b"late%d" % i) for i in range(3)]
    receive(bob, late[2])  # Bob stores two skipped keys
    assert bob.ratchet.state.skipped_count() == 2
    for stage in range(3):
        a_bytes, b_bytes = state_bytes(alice), state_bytes(bob)
        assert Session.from_bytes(a_bytes).to_bytes() == a_bytes
        assert Session.from_bytes(b_bytes).to_bytes() == b_bytes
        alice, bob = restore(a_bytes), restore(b_bytes)
        assert (alice.pending_setup is not None) == (stage == 0)
        round_trip(alice, bob)
        assert receive(alice, send(bob, b"more")) == b"more"
    # the skipped keys survived three restores
    assert receive(bob, late[0]) == b"late0"
    assert receive(bob, late[1]) == b"late1"
    assert bob.ratchet.state.skipped_count() == 0


def test_restored_initiator_keeps_pending_setup() -> None:
    """SPEC.md §8.8: a restored initiator still sends the setup block, and the responder can
    start the session from an envelope sealed after the restore."""
    responder = make_responder()
    alice = restore(state_bytes(new_alice(responder)))
    data = send(alice, b"after restore")
    assert Routing.decode(data).kind == EnvelopeKind.PREKEY
    bob, body = responder.accept(data)
    assert body.payload == b"after restore"
    round_trip(restore(state_bytes(alice)), restore(state_bytes(bob)))


def test_restored_responder_keeps_setup_ephemeral() -> None:
    """SPEC.md §8.8: the responder's record of the setup ephemeral survives a round trip."""
    pair = new_pair()
    setup = Envelope.decode(pair.first).setup
    assert setup is not None
    assert pair.bob.setup_ephemeral == setup.ephemeral
    assert restore(state_bytes(pair.bob)).setup_ephemeral == setup.ephemeral


def test_session_state_versions_and_flags() -> None:
    """SPEC.md §8.8: unknown session/ratchet state versions are UnsupportedVersion; unknown
    flag bits, truncation and trailing bytes are MalformedData."""
    data = state_bytes(new_pair().bob)
    with pytest.raises(UnsupportedVersion):
        Session.from_bytes(b"\x02" + data[1:])
    with pytest.raises(MalformedData):
        Session.from_bytes(data[:1] + b"\x04" + data[2:])
    with pytest.raises(MalformedData):
        Session.from_bytes(data + b"\x00")
    with pytest.raises(MalformedData):
        Session.from_bytes(data[:-1])
    ratchet = Session.from_bytes(data).ratchet.state.to_bytes()
    with pytest.raises(UnsupportedVersion):
        RatchetState.from_bytes(b"\x02" + ratchet[1:])
    with pytest.raises(MalformedData):
        RatchetState.from_bytes(ratchet[:1] + b"\x80" + ratchet[2:])
    with pytest.raises(MalformedData):
        RatchetState.from_bytes(ratchet + b"\x00")
    (ad_len,) = struct.unpack_from(">H", ratchet, 2)
    assert ratchet[4 : 4 + ad_len] == Session.from_bytes(data).ratchet.state.ad
