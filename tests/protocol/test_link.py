"""The Liaison link layer (``liaison.protocol.link``): Noise IK between a cell and its relay.

Section numbers refer to the Noise Protocol Framework, revision 34.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.protocol.errors import (
    DecryptionError,
    HandshakeFailed,
    LiaisonError,
    MalformedData,
    MessageTooLarge,
    NonceExhausted,
    StateError,
)
from liaison.protocol.link import (
    LINK_PROLOGUE,
    LINK_PROTOCOL_NAME,
    MAX_FRAME_LEN,
    LinkInitiator,
    LinkResponder,
    LinkTransport,
)
from liaison.protocol.noise import HASHLEN, MAX_MESSAGE_LEN, MAX_NONCE, CipherState, HandshakeState
from liaison.protocol.primitives import RandomBytes, x25519_public

HELLO_OVERHEAD = 32 + 48 + 16  # e, encrypted s, payload tag
WELCOME_OVERHEAD = 32 + 16  # e, payload tag


def _key(label: str) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


CELL = _key("cell static")
RELAY = _key("relay static")
OTHER_RELAY = _key("another relay static")
RELAY_PUBLIC = x25519_public(RELAY)


def _fixed_rng(label: str) -> RandomBytes:
    """A deterministic rng: the same label gives the same ephemeral key."""
    return lambda n: hashlib.blake2b(label.encode(), digest_size=n).digest()


def _handshake(
    hello_payload: bytes = b"", welcome_payload: bytes = b""
) -> tuple[LinkTransport, LinkTransport]:
    initiator = LinkInitiator(CELL, RELAY_PUBLIC)
    responder = LinkResponder(RELAY)
    responder.read_hello(initiator.write_hello(hello_payload))
    initiator.read_welcome(responder.write_welcome(welcome_payload))
    return initiator.transport(), responder.transport()


def test_round_trip() -> None:
    """IK (§7.5) handshake: the relay learns the cell key from message 1 before replying;
    then transport messages flow both ways (§5.2 Split), with a shared handshake hash."""
    initiator = LinkInitiator(CELL, RELAY_PUBLIC)
    responder = LinkResponder(RELAY)
    hello = initiator.write_hello(b"cell hello")
    assert len(hello) == HELLO_OVERHEAD + len(b"cell hello")
    assert not responder.cell_static_public
    cell_public, payload = responder.read_hello(hello)
    assert cell_public == x25519_public(CELL)
    assert responder.cell_static_public == cell_public
    assert payload == b"cell hello"
    welcome = responder.write_welcome(b"relay welcome")
    assert len(welcome) == WELCOME_OVERHEAD + len(b"relay welcome")
    assert initiator.read_welcome(welcome) == b"relay welcome"

    cell, relay = initiator.transport(), responder.transport()
    assert initiator.transport() is cell
    assert responder.transport() is relay
    assert cell.handshake_hash == relay.handshake_hash
    assert len(cell.handshake_hash) == HASHLEN
    for frame in (b"", b"frame one", bytes(1024), bytes(MAX_FRAME_LEN)):
        message = cell.encrypt(frame)
        assert len(message) == len(frame) + 16
        assert relay.decrypt(message) == frame
        assert cell.decrypt(relay.encrypt(frame[::-1])) == frame[::-1]
    assert len(cell.encrypt(bytes(MAX_FRAME_LEN))) == MAX_MESSAGE_LEN


def test_link_is_plain_noise_ik_with_the_liaison_prologue() -> None:
    """§6 prologue and §8 protocol name: a generic Noise_IK responder with the prologue
    b"Liaison link v1" interoperates; with another prologue the handshake fails."""
    assert LINK_PROTOCOL_NAME == "Noise_IK_25519_ChaChaPoly_BLAKE2b"
    hello = LinkInitiator(CELL, RELAY_PUBLIC).write_hello(b"hi")
    generic = HandshakeState(LINK_PROTOCOL_NAME, False, prologue=LINK_PROLOGUE, s=RELAY)
    assert generic.read_message(hello) == b"hi"
    other = HandshakeState(LINK_PROTOCOL_NAME, False, prologue=b"Liaison link v2", s=RELAY)
    with pytest.raises(HandshakeFailed):
        other.read_message(hello)


def test_cell_pinned_a_different_relay_key() -> None:
    """IK message 1 is encrypted to the pinned key (es, §7.5): another relay can't read it."""
    initiator = LinkInitiator(CELL, x25519_public(OTHER_RELAY))
    responder = LinkResponder(RELAY)
    with pytest.raises(HandshakeFailed):
        responder.read_hello(initiator.write_hello(b"secret"))
    with pytest.raises(StateError):
        responder.write_welcome(b"")


def test_relay_replying_with_a_different_static_key() -> None:
    """§7.5 IK: the welcome authenticates the relay to the pinned key. A welcome that would be
    valid for the same cell and ephemeral but another relay key is refused."""
    cell = LinkInitiator(CELL, RELAY_PUBLIC, rng=_fixed_rng("cell ephemeral"))
    cell.write_hello(b"")
    # An impostor holding OTHER_RELAY runs the exact same handshake (same cell key, same cell
    # ephemeral) except for the relay key, and replies to our cell with its welcome.
    twin = LinkInitiator(CELL, x25519_public(OTHER_RELAY), rng=_fixed_rng("cell ephemeral"))
    impostor = LinkResponder(OTHER_RELAY)
    impostor.read_hello(twin.write_hello(b""))
    forged_welcome = impostor.write_welcome(b"")
    with pytest.raises(HandshakeFailed):
        cell.read_welcome(forged_welcome)
    with pytest.raises(StateError):
        cell.transport()


def test_tampered_welcome() -> None:
    """§5.3: any bit flipped in message 2 makes DecryptAndHash fail (HandshakeFailed)."""
    for position in (0, 31, 32, 47):
        initiator = LinkInitiator(CELL, RELAY_PUBLIC)
        responder = LinkResponder(RELAY)
        responder.read_hello(initiator.write_hello(b""))
        welcome = bytearray(responder.write_welcome(b""))
        welcome[position] ^= 0x80
        with pytest.raises(HandshakeFailed):
            initiator.read_welcome(bytes(welcome))


@pytest.mark.parametrize("length", [0, 1, 31, 32, 79, 80, 95])
def test_truncated_hello(length: int) -> None:
    """§5.3 ReadMessage: message 1 of IK is at least 32 + 48 + 16 = 96 bytes."""
    hello = LinkInitiator(CELL, RELAY_PUBLIC).write_hello(b"")
    responder = LinkResponder(RELAY)
    with pytest.raises(MalformedData, match=f"expected at least 96 bytes .* got {length}$"):
        responder.read_hello(hello[:length])
    with pytest.raises(StateError):
        responder.read_hello(hello)


@pytest.mark.parametrize("length", [0, 1, 31, 32, 47])
def test_truncated_welcome(length: int) -> None:
    """§5.3 ReadMessage: message 2 of IK is at least 32 + 16 = 48 bytes."""
    initiator = LinkInitiator(CELL, RELAY_PUBLIC)
    responder = LinkResponder(RELAY)
    responder.read_hello(initiator.write_hello(b""))
    welcome = responder.write_welcome(b"")
    with pytest.raises(MalformedData, match=f"expected at least 48 bytes .* got {length}$"):
        initiator.read_welcome(welcome[:length])
    with pytest.raises(StateError):
        initiator.read_welcome(welcome)


def test_handshake_size_limits() -> None:
    """§3: handshake messages are at most 65535 bytes, outgoing and incoming."""
    with pytest.raises(MessageTooLarge):
        LinkInitiator(CELL, RELAY_PUBLIC).write_hello(bytes(MAX_MESSAGE_LEN - HELLO_OVERHEAD + 1))
    hello = LinkInitiator(CELL, RELAY_PUBLIC).write_hello(bytes(MAX_MESSAGE_LEN - HELLO_OVERHEAD))
    assert len(hello) == MAX_MESSAGE_LEN
    with pytest.raises(MalformedData, match="65536 bytes"):
        LinkResponder(RELAY).read_hello(hello + b"\x00")


def test_handshake_calls_out_of_order() -> None:
    """§5.3: each side processes the messages in pattern order; otherwise StateError."""
    with pytest.raises(StateError):
        LinkResponder(RELAY).write_welcome(b"")
    with pytest.raises(StateError):
        LinkInitiator(CELL, RELAY_PUBLIC).transport()
    initiator = LinkInitiator(CELL, RELAY_PUBLIC)
    initiator.write_hello(b"")
    with pytest.raises(StateError):
        initiator.write_hello(b"")
    with pytest.raises(StateError):
        initiator.transport()


def _assert_dead(transport: LinkTransport) -> None:
    with pytest.raises(StateError):
        transport.decrypt(b"\x00" * 32)
    with pytest.raises(StateError):
        transport.encrypt(b"frame")
    assert transport.is_failed


def test_reordered_transport_message() -> None:
    """§5.1: transport nonces are implicit counters, so order is enforced (§11.4)."""
    cell, relay = _handshake()
    first, second = cell.encrypt(b"one"), cell.encrypt(b"two")
    with pytest.raises(DecryptionError):
        relay.decrypt(second)
    _assert_dead(relay)
    with pytest.raises(StateError):
        relay.decrypt(first)


def test_replayed_transport_message() -> None:
    """§5.1: a replayed message is decrypted under the next nonce and fails."""
    cell, relay = _handshake()
    message = cell.encrypt(b"once")
    assert relay.decrypt(message) == b"once"
    with pytest.raises(DecryptionError):
        relay.decrypt(message)
    _assert_dead(relay)


@pytest.mark.parametrize("position", [0, 5, 18, 19])
def test_tampered_transport_message(position: int) -> None:
    """§4.2 AEAD: a flipped bit anywhere (ciphertext or tag) fails authentication."""
    cell, relay = _handshake()
    message = bytearray(cell.encrypt(b"tamper"))  # 6 bytes + 16-byte tag
    message[position] ^= 0x01
    with pytest.raises(DecryptionError):
        relay.decrypt(bytes(message))
    _assert_dead(relay)


@pytest.mark.parametrize("keep", [0, 1, 15, 16, 21])
def test_truncated_transport_message(keep: int) -> None:
    """§3: a transport message is ciphertext + 16-byte tag; truncation fails authentication."""
    cell, relay = _handshake()
    message = cell.encrypt(b"truncated!")  # 10 + 16 bytes
    with pytest.raises(DecryptionError):
        relay.decrypt(message[:keep])
    _assert_dead(relay)


def test_oversized_transport_message() -> None:
    """§3: no transport message is above 65535 bytes, nor a frame above 65535 - 16."""
    cell, relay = _handshake()
    with pytest.raises(MessageTooLarge):
        cell.encrypt(bytes(MAX_FRAME_LEN + 1))
    assert relay.decrypt(cell.encrypt(b"still fine")) == b"still fine"
    with pytest.raises(MalformedData):
        relay.decrypt(bytes(MAX_MESSAGE_LEN + 1))
    _assert_dead(relay)


def test_nonce_exhaustion() -> None:
    """§5.1: nonce 2**64-1 is reserved. The test hook is the LinkTransport constructor, fed
    with cipher states whose counters start at 2**64-2 (SetNonce)."""
    k1, k2, h = _key("k1"), _key("k2"), bytes(HASHLEN)
    cell = LinkTransport(CipherState(k1, nonce=MAX_NONCE - 1), CipherState(k2), h)
    relay = LinkTransport(CipherState(k2), CipherState(k1, nonce=MAX_NONCE - 1), h)
    assert relay.decrypt(cell.encrypt(b"last frame")) == b"last frame"
    with pytest.raises(NonceExhausted):
        cell.encrypt(b"one too many")
    with pytest.raises(NonceExhausted):
        relay.decrypt(bytes(32))
    _assert_dead(relay)
    with pytest.raises(StateError):
        LinkTransport(CipherState(), CipherState(k1), h)


# --- property tests: random bytes only ever raise the protocol's own errors ---------------

_PROPERTY = settings(max_examples=200, deadline=None)
_RANDOM = st.binary(max_size=300)


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` with one byte flipped, truncated, or extended."""
    flip = st.tuples(st.integers(0, len(base) - 1), st.integers(1, 255)).map(
        lambda pair: base[: pair[0]] + bytes([base[pair[0]] ^ pair[1]]) + base[pair[0] + 1 :]
    )
    cut = st.integers(0, len(base) - 1).map(lambda n: base[:n])
    grow = st.binary(min_size=1, max_size=8).map(lambda extra: base + extra)
    return st.one_of(flip, cut, grow)


_HELLO = LinkInitiator(CELL, RELAY_PUBLIC, rng=_fixed_rng("property hello")).write_hello(b"p")


@_PROPERTY
@given(st.one_of(_RANDOM, _mutations(_HELLO)))
def test_read_hello_raises_only_liaison_errors(message: bytes) -> None:
    """§5.3 ReadMessage on arbitrary input fails only with LiaisonError subclasses."""
    responder = LinkResponder(RELAY)
    try:
        responder.read_hello(message)
    except LiaisonError:
        with pytest.raises(StateError):
            responder.write_welcome(b"")
    else:
        assert message == _HELLO


def _welcome_pair() -> tuple[LinkInitiator, bytes]:
    initiator = LinkInitiator(CELL, RELAY_PUBLIC, rng=_fixed_rng("property cell"))
    responder = LinkResponder(RELAY, rng=_fixed_rng("property relay"))
    responder.read_hello(initiator.write_hello(b""))
    return initiator, responder.write_welcome(b"w")


_WELCOME = _welcome_pair()[1]


@_PROPERTY
@given(st.one_of(_RANDOM, _mutations(_WELCOME)))
def test_read_welcome_raises_only_liaison_errors(message: bytes) -> None:
    """§5.3 ReadMessage on arbitrary input fails only with LiaisonError subclasses."""
    initiator, _ = _welcome_pair()
    try:
        payload = initiator.read_welcome(message)
    except LiaisonError:
        with pytest.raises(StateError):
            initiator.transport()
    else:
        assert message == _WELCOME
        assert payload == b"w"


@_PROPERTY
@given(st.lists(_RANDOM, min_size=1, max_size=3))
def test_transport_decrypt_raises_only_liaison_errors(messages: list[bytes]) -> None:
    """§5.1 DecryptWithAd on arbitrary input: DecryptionError, then StateError."""
    _, relay = _handshake()
    for number, message in enumerate(messages):
        expected = DecryptionError if number == 0 else StateError
        with pytest.raises(LiaisonError) as info:
            relay.decrypt(message)
        assert isinstance(info.value, expected)
