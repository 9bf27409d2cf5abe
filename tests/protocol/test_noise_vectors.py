"""``liaison.protocol.noise`` against public Noise test vectors, plus the spec's error rules.

Every vector of ``tests/vectors/noise/noise_25519_ChaChaPoly_BLAKE2b_subset.json`` (cacophony and
snow, see that folder's README.md) is one parametrized test, run twice: once with the ephemeral
keys supplied by a deterministic ``rng`` and once with them passed explicitly. Section numbers
refer to the Noise Protocol Framework, revision 34.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import pytest

from liaison.protocol.errors import (
    DecryptionError,
    HandshakeFailed,
    InvalidKey,
    LocalProtocolError,
    MalformedData,
    MessageTooLarge,
    NonceExhausted,
    StateError,
)
from liaison.protocol.noise import (
    HASHLEN,
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    PATTERNS,
    CipherState,
    HandshakeState,
    SymmetricState,
    hkdf,
    parse_protocol_name,
)
from liaison.protocol.primitives import RandomBytes, chacha20poly1305_encrypt, x25519_public
from tests.vectorload import load_json

Vector = Mapping[str, object]

VECTOR_FILE = "noise/noise_25519_ChaChaPoly_BLAKE2b_subset.json"
VECTORS: list[Vector] = load_json(VECTOR_FILE)["vectors"]
VECTOR_IDS = [f"{v['protocol_name']}-{v['_source_file']}" for v in VECTORS]


def _str(vector: Vector, key: str) -> str:
    value = vector[key]
    assert isinstance(value, str)
    return value


def _hex(vector: Vector, key: str) -> bytes | None:
    value = vector.get(key)
    if value is None:
        return None
    assert isinstance(value, str)
    return bytes.fromhex(value)


def _psks(vector: Vector, key: str) -> list[bytes]:
    value = vector.get(key, [])
    assert isinstance(value, list)
    return [bytes.fromhex(psk) for psk in value]


def _messages(vector: Vector) -> list[tuple[bytes, bytes]]:
    value = vector["messages"]
    assert isinstance(value, list)
    return [(bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])) for m in value]


def _one_shot_rng(key: bytes | None) -> RandomBytes:
    """An rng that hands out the vector's ephemeral private key exactly once."""
    keys = [] if key is None else [key]

    def rng(n: int) -> bytes:
        assert keys, "the handshake asked for a second ephemeral key"
        out = keys.pop()
        assert len(out) == n
        return out

    return rng


def _party(vector: Vector, side: str, *, explicit_ephemeral: bool) -> HandshakeState:
    ephemeral = _hex(vector, f"{side}_ephemeral")
    return HandshakeState(
        _str(vector, "protocol_name"),
        side == "init",
        prologue=_hex(vector, f"{side}_prologue") or b"",
        s=_hex(vector, f"{side}_static"),
        e=ephemeral if explicit_ephemeral else None,
        rs=_hex(vector, f"{side}_remote_static"),
        re=_hex(vector, f"{side}_remote_ephemeral"),
        psks=_psks(vector, f"{side}_psks"),
        rng=_one_shot_rng(None if explicit_ephemeral else ephemeral),
    )


def _static_public(vector: Vector, side: str) -> bytes | None:
    """The public static key of ``side``, or None if that party has none."""
    private = _hex(vector, f"{side}_static")
    return None if private is None else x25519_public(private)


def _run_vector(vector: Vector, *, explicit_ephemeral: bool) -> None:
    initiator = _party(vector, "init", explicit_ephemeral=explicit_ephemeral)
    responder = _party(vector, "resp", explicit_ephemeral=explicit_ephemeral)
    pattern = initiator.pattern
    handshake_len = len(pattern.message_patterns)
    messages = _messages(vector)
    assert len(messages) >= handshake_len

    for index, (payload, ciphertext) in enumerate(messages[:handshake_len]):
        sender, receiver = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        assert sender.is_my_turn
        assert not receiver.is_my_turn
        assert sender.write_message(payload) == ciphertext, f"handshake message {index}"
        assert receiver.read_message(ciphertext) == payload

    assert initiator.is_finished
    assert responder.is_finished
    assert initiator.handshake_hash == responder.handshake_hash
    assert len(initiator.handshake_hash) == HASHLEN
    expected_hash = _hex(vector, "handshake_hash")
    if expected_hash is not None:
        assert initiator.handshake_hash == expected_hash
    assert initiator.remote_static == _static_public(vector, "resp")
    assert responder.remote_static == _static_public(vector, "init")

    i_to_r_send, r_to_i_recv = initiator.split()
    i_to_r_recv, r_to_i_send = responder.split()
    for index, (payload, ciphertext) in enumerate(messages[handshake_len:], start=handshake_len):
        # Transport messages keep alternating from where the handshake stopped; in a one-way
        # pattern only the initiator sends (§5.3 Split, §7.4).
        if pattern.is_one_way or index % 2 == 0:
            encryptor, decryptor = i_to_r_send, i_to_r_recv
        else:
            encryptor, decryptor = r_to_i_send, r_to_i_recv
        assert encryptor.encrypt_with_ad(b"", payload) == ciphertext, f"transport message {index}"
        assert decryptor.decrypt_with_ad(b"", ciphertext) == payload


def test_vector_file_is_complete() -> None:
    """The subset holds the 14 vectors its README lists, each with a unique id."""
    assert len(VECTORS) == 14
    assert len(set(VECTOR_IDS)) == len(VECTOR_IDS)
    names = {_str(v, "protocol_name").split("_")[1] for v in VECTORS}
    assert names == {"NN", "NK", "KK", "XK", "IK", "XX", "IKpsk2", "XXpsk3"}


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_vector_with_rng(vector: Vector) -> None:
    """§5 processing rules end to end (§5.3 handshake, §5.2 Split, §9 PSKs, §12 functions):
    ephemeral keys drawn from the injected rng."""
    _run_vector(vector, explicit_ephemeral=False)


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_vector_with_explicit_ephemerals(vector: Vector) -> None:
    """§5.3 ``Initialize(..., e, ...)``: the same vectors with ephemeral keys given up front."""
    _run_vector(vector, explicit_ephemeral=True)


# --- §4.3 / §5.2: hash, HMAC, HKDF ---------------------------------------------------------


def _rfc2104_hmac_blake2b(key: bytes, data: bytes) -> bytes:
    block = 128
    if len(key) > block:
        key = hashlib.blake2b(key).digest()
    key = key.ljust(block, b"\x00")
    inner = hashlib.blake2b(bytes(b ^ 0x36 for b in key) + data).digest()
    return hashlib.blake2b(bytes(b ^ 0x5C for b in key) + inner).digest()


def test_hkdf_is_hmac_blake2b_per_spec() -> None:
    """§4.3 HKDF built from HMAC-HASH (RFC 2104 with BLOCKLEN = 128 for BLAKE2b, §12.8)."""
    ck, ikm = bytes(range(64)), bytes(range(100, 132))
    temp = _rfc2104_hmac_blake2b(ck, ikm)
    out1 = _rfc2104_hmac_blake2b(temp, b"\x01")
    out2 = _rfc2104_hmac_blake2b(temp, out1 + b"\x02")
    out3 = _rfc2104_hmac_blake2b(temp, out2 + b"\x03")
    assert hkdf(ck, ikm, 2) == (out1, out2)
    assert hkdf(ck, ikm, 3) == (out1, out2, out3)
    assert hmac.digest(ck, ikm, "blake2b") == temp
    with pytest.raises(LocalProtocolError):
        hkdf(ck, ikm, 4)


def test_protocol_name_padding_and_hashing() -> None:
    """§5.2 InitializeSymmetric: names up to HASHLEN are zero-padded, longer ones hashed."""
    short = b"Noise_NN_25519_ChaChaPoly_BLAKE2b"
    assert SymmetricState(short).handshake_hash == short + bytes(HASHLEN - len(short))
    long = b"Noise_" + b"X" * 80
    state = SymmetricState(long)
    assert state.handshake_hash == state.chaining_key == hashlib.blake2b(long).digest()


# --- §5.1 CipherState ------------------------------------------------------------------------


def test_cipher_state_nonce_format_and_exhaustion() -> None:
    """§5.1 and §12.3: nonce = 4 zero bytes || 64-bit little-endian n; n = 2**64-1 is reserved."""
    key = bytes(range(32))
    sender = CipherState(key, nonce=MAX_NONCE - 1)
    receiver = CipherState(key, nonce=MAX_NONCE - 1)
    expected = chacha20poly1305_encrypt(
        key, bytes(4) + (MAX_NONCE - 1).to_bytes(8, "little"), b"x", b"ad"
    )
    ciphertext = sender.encrypt_with_ad(b"ad", b"x")
    assert ciphertext == expected
    assert receiver.decrypt_with_ad(b"ad", ciphertext) == b"x"
    assert sender.nonce == receiver.nonce == MAX_NONCE
    with pytest.raises(NonceExhausted):
        sender.encrypt_with_ad(b"ad", b"y")
    with pytest.raises(NonceExhausted):
        receiver.decrypt_with_ad(b"ad", ciphertext)
    with pytest.raises(LocalProtocolError):
        sender.set_nonce(MAX_NONCE + 1)


def test_cipher_state_failed_decryption_keeps_nonce() -> None:
    """§5.1 DecryptWithAd: on authentication failure ``n`` is not incremented."""
    key = bytes(range(32))
    sender, receiver = CipherState(key), CipherState(key)
    ciphertext = sender.encrypt_with_ad(b"", b"hello")
    for bad in (ciphertext[:-1], b"", bytes(15), ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])):
        with pytest.raises(DecryptionError):
            receiver.decrypt_with_ad(b"", bad)
        assert receiver.nonce == 0
    assert receiver.decrypt_with_ad(b"", ciphertext) == b"hello"


def test_cipher_state_without_key_is_identity() -> None:
    """§5.1: without a key, EncryptWithAd/DecryptWithAd return their input."""
    state = CipherState()
    assert not state.has_key()
    assert state.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert state.decrypt_with_ad(b"ad", b"plain") == b"plain"
    with pytest.raises(StateError):
        state.rekey()
    with pytest.raises(InvalidKey):
        CipherState(bytes(31))


def test_rekey() -> None:
    """§11.3 Rekey: k = first 32 bytes of ENCRYPT(k, 2**64-1, zerolen, zeros); n unchanged."""
    key = bytes(range(32))
    a, b = CipherState(key), CipherState(key)
    a.encrypt_with_ad(b"", b"m")
    a.rekey()
    assert a.nonce == 1
    b.rekey()
    b.set_nonce(1)
    new_key = chacha20poly1305_encrypt(
        key, bytes(4) + MAX_NONCE.to_bytes(8, "little"), bytes(32), b""
    )
    assert a.encrypt_with_ad(b"", b"z") == b.encrypt_with_ad(b"", b"z")
    assert (
        CipherState(new_key[:32], nonce=2).decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"q"))
        == b"q"
    )


# --- §5.3 HandshakeState rules ---------------------------------------------------------------

_NN = "Noise_NN_25519_ChaChaPoly_BLAKE2b"
_XX = "Noise_XX_25519_ChaChaPoly_BLAKE2b"


def _xx_pair() -> tuple[HandshakeState, HandshakeState]:
    return (
        HandshakeState(_XX, True, s=bytes([1]) * 32),
        HandshakeState(_XX, False, s=bytes([2]) * 32),
    )


def test_writing_out_of_turn_is_a_state_error() -> None:
    """§5.3: messages alternate; writing on the peer's turn is refused, and kills the state."""
    initiator, responder = _xx_pair()
    with pytest.raises(StateError, match="peer's turn"):
        responder.write_message(b"")
    with pytest.raises(StateError, match="dead"):
        responder.read_message(initiator.write_message(b""))
    fresh_initiator, _ = _xx_pair()
    with pytest.raises(StateError, match="our turn"):
        fresh_initiator.read_message(bytes(48))
    with pytest.raises(StateError, match="dead"):
        fresh_initiator.write_message(b"")


def test_truncated_handshake_message_is_malformed() -> None:
    """§5.3 ReadMessage / §3: each message has a minimum length fixed by its tokens."""
    initiator, responder = _xx_pair()
    responder.read_message(initiator.write_message(b""))
    message = responder.write_message(b"")  # e (32) + s (48) + payload tag (16)
    assert len(message) == 96
    for length in (0, 31, 32, 79, 95):
        fresh_initiator, fresh_responder = _xx_pair()
        fresh_responder.read_message(fresh_initiator.write_message(b""))
        with pytest.raises(MalformedData, match=f"expected at least 96 bytes .* got {length}$"):
            fresh_initiator.read_message(message[:length])
        with pytest.raises(StateError):
            fresh_initiator.read_message(message)


def test_tampered_handshake_message_fails_and_kills_state() -> None:
    """§5.3: a DecryptAndHash failure aborts the handshake; the state is then unusable."""
    initiator, responder = _xx_pair()
    responder.read_message(initiator.write_message(b""))
    message = bytearray(responder.write_message(b"payload"))
    message[40] ^= 0x01  # inside the encrypted static key
    with pytest.raises(HandshakeFailed, match="static key"):
        initiator.read_message(bytes(message))
    with pytest.raises(StateError):
        initiator.write_message(b"")
    with pytest.raises(StateError):
        initiator.split()


def test_message_size_limits() -> None:
    """§3: no Noise message exceeds 65535 bytes, outgoing (MessageTooLarge) or incoming."""
    initiator = HandshakeState(_NN, True)
    assert len(initiator.write_message(bytes(MAX_MESSAGE_LEN - 32))) == MAX_MESSAGE_LEN
    with pytest.raises(MessageTooLarge):
        HandshakeState(_NN, True).write_message(bytes(MAX_MESSAGE_LEN - 31))
    with pytest.raises(MalformedData, match="65536 bytes"):
        HandshakeState(_NN, False).read_message(bytes(MAX_MESSAGE_LEN + 1))


def test_split_only_once_after_the_last_message() -> None:
    """§5.2 Split happens once, after the final handshake message."""
    initiator, responder = HandshakeState(_NN, True), HandshakeState(_NN, False)
    with pytest.raises(StateError):
        initiator.split()
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    initiator.split()
    with pytest.raises(StateError):
        initiator.split()
    with pytest.raises(StateError):
        initiator.write_message(b"")


def test_one_way_pattern() -> None:
    """§7.4 one-way pattern N: a single message, then only initiator-to-responder traffic."""
    name = "Noise_N_25519_ChaChaPoly_BLAKE2b"
    responder_private = bytes([7]) * 32
    initiator = HandshakeState(name, True, rs=x25519_public(responder_private))
    responder = HandshakeState(name, False, s=responder_private)
    assert responder.read_message(initiator.write_message(b"one")) == b"one"
    send, _ = initiator.split()
    receive, _ = responder.split()
    assert receive.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"two")) == b"two"


def test_protocol_names_and_modifiers() -> None:
    """§8 protocol names and §9.4 psk modifiers; only 25519_ChaChaPoly_BLAKE2b is accepted."""
    assert PATTERNS["IK"].message_patterns == (("e", "es", "s", "ss"), ("e", "ee", "se"))
    xx = parse_protocol_name("Noise_XXpsk0+psk3_25519_ChaChaPoly_BLAKE2b")
    assert xx.message_patterns == (("psk", "e"), ("e", "ee", "s", "es"), ("s", "se", "psk"))
    assert xx.psk_count == 2
    for bad in (
        "Noise_XX_25519_AESGCM_SHA256",
        "Noise_QQ_25519_ChaChaPoly_BLAKE2b",
        "Noise_NNpsk3_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXfallback_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk1+psk1_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk\u00b2_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk01_25519_ChaChaPoly_BLAKE2b",
        "Nois_XX_25519_ChaChaPoly_BLAKE2b",
    ):
        with pytest.raises(LocalProtocolError):
            parse_protocol_name(bad)


def test_initialize_checks_keys() -> None:
    """§5.3 Initialize: required keys must be present and well-sized; one PSK per psk token."""
    ik = "Noise_IK_25519_ChaChaPoly_BLAKE2b"
    with pytest.raises(InvalidKey, match="remote static key"):
        HandshakeState(ik, True, s=bytes(32))
    with pytest.raises(InvalidKey, match="static key s"):
        HandshakeState(ik, False)
    with pytest.raises(InvalidKey):
        HandshakeState(ik, True, s=bytes(31), rs=bytes(32))
    with pytest.raises(InvalidKey, match="PSK"):
        HandshakeState("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b", True)
    with pytest.raises(LocalProtocolError, match="rs must not be given"):
        HandshakeState(_XX, True, s=bytes(32), rs=bytes(32))
