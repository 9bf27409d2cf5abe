"""Enrollment codes and the enrollment handshake (SPEC.md §5.4)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.protocol.enrollment import (
    EnrollmentCode,
    EnrollmentInitiator,
    EnrollmentResponder,
    EnrollRequest,
    EnrollResponse,
    build_request,
    relay_key_fingerprint,
    secret_hash,
)
from liaison.protocol.errors import BadSignature, HandshakeFailed, LiaisonError, MalformedData
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)

RELAY = X25519KeyPair(bytes(range(32)))
IDENTITY = IdentityKeyPair(bytes(range(1, 33)))
LINK = X25519KeyPair(bytes(range(2, 34)))
KEM = KemKeyPair(bytes(range(64)))


def make_request(secret: bytes = b"s" * 20, otks: int = 3) -> EnrollRequest:
    return build_request(
        secret,
        IDENTITY,
        bytes(LINK.public),
        SignedPrekey.create(IDENTITY, 1, X25519KeyPair(bytes(range(3, 35)))),
        SignedKemPrekey.create(IDENTITY, 2, KEM),
        tuple(OneTimePrekey(100 + i, X25519KeyPair(bytes([i]) * 32).public) for i in range(otks)),
    )


def test_code_text_round_trip_and_format() -> None:
    """A code is 'ln1-' + base32(fingerprint || 160-bit secret); parsing ignores case/dashes."""
    code = EnrollmentCode.generate(bytes(RELAY.public))
    text = code.text()
    assert text.startswith("ln1-")
    assert len(code.secret) * 8 >= 128
    assert EnrollmentCode.parse(text) == code
    assert EnrollmentCode.parse(text.upper().replace("-", " ")) == code
    assert code.matches(bytes(RELAY.public))
    assert not code.matches(bytes(X25519KeyPair(bytes(32)).public))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("xx1-abc", "starts with"),
        ("ln1-!!!!", "base32"),
        ("ln1-aaaaaaaa", "truncated"),
    ],
)
def test_code_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(MalformedData, match=reason):
        EnrollmentCode.parse(text)


B32 = "abcdefghijklmnopqrstuvwxyz234567"


@pytest.mark.parametrize("seed", range(8))
def test_every_single_character_flip_is_refused_or_another_code(seed: int) -> None:
    """M-ENR-9: no mistyped character parses to the same code; in particular the last one,
    whose 2 unused bits must be zero."""
    code = EnrollmentCode(bytes([seed]) * 16, bytes([255 - seed]) * 20)
    text = code.text()
    assert text[-1] in "aeimquy4"
    for i, char in enumerate(text):
        if char not in B32 or i < 4:  # the prefix and the dashes
            continue
        for other in B32.replace(char, ""):
            flipped = text[:i] + other + text[i + 1 :]
            with contextlib.suppress(MalformedData):
                assert EnrollmentCode.parse(flipped) != code, flipped
    for other in B32:  # the last character: exactly those with zero low bits are accepted
        if B32.index(other) % 4 == 0:
            EnrollmentCode.parse(text[:-1] + other)
        else:
            with pytest.raises(MalformedData, match="last character"):
                EnrollmentCode.parse(text[:-1] + other)


def test_named_request_round_trip_and_strict_decoding() -> None:
    """Version 2 carries the name the cell expects; version 1 still decodes with none."""
    plain = make_request(otks=2)
    assert plain.encode()[0] == 1
    assert plain.expected_name is None
    named = dataclasses.replace(plain, expected_name="fr-paris")
    data = named.encode()
    assert data[0] == 2
    assert data.endswith(b"\x08fr-paris")
    assert EnrollRequest.decode(data) == named
    assert EnrollRequest.decode(plain.encode()) == plain
    for bad in (data + b"\x00", data[:-1], data[:-9] + b"\x00", data[:-8] + b"\xff" * 8):
        with pytest.raises(MalformedData):
            EnrollRequest.decode(bad)
    with pytest.raises(MalformedData):
        dataclasses.replace(plain, expected_name="").encode()


def test_fingerprint_and_secret_hash_are_domain_separated() -> None:
    key = bytes(RELAY.public)
    assert len(relay_key_fingerprint(key)) == 16
    assert secret_hash(b"x" * 20) != secret_hash(b"y" * 20)
    assert secret_hash(b"x" * 20)[:16] != relay_key_fingerprint(b"x" * 20)


def test_request_codec_round_trip() -> None:
    request = make_request()
    assert EnrollRequest.decode(request.encode()) == request
    request.verify(bytes(LINK.public))


def test_request_signature_checks() -> None:
    """The identity must sign the link key: a request replayed with another link key fails."""
    request = make_request()
    with pytest.raises(BadSignature):
        request.verify(bytes(X25519KeyPair(bytes(range(9, 41))).public))


def test_request_rejects_bad_counts_and_trailing_bytes() -> None:
    data = make_request(otks=2).encode()
    with pytest.raises(MalformedData):
        EnrollRequest.decode(data + b"\x00")
    with pytest.raises(MalformedData):
        EnrollRequest.decode(data[:-1])
    with pytest.raises(MalformedData, match="version"):
        EnrollRequest.decode(b"\x03" + data[1:])
    with pytest.raises(MalformedData, match="name length"):  # a version 1 body labelled 2
        EnrollRequest.decode(b"\x02" + data[1:])


def test_handshake_round_trip_and_relay_authentication() -> None:
    """The secret travels encrypted to the pinned relay key; the answer authenticates it."""
    initiator = EnrollmentInitiator(LINK.private_bytes(), bytes(RELAY.public))
    message1 = initiator.request(make_request())
    assert b"s" * 20 not in message1  # never in clear
    responder = EnrollmentResponder(RELAY.private_bytes())
    link_key, request = responder.read(message1)
    assert link_key == bytes(LINK.public)
    request.verify(link_key)
    answer = responder.answer(EnrollResponse(cell_id=b"c" * 16, name="fr-paris"))
    assert initiator.response(answer) == EnrollResponse(cell_id=b"c" * 16, name="fr-paris")


def test_handshake_to_an_impostor_relay_fails() -> None:
    """A cell that pinned relay R cannot be enrolled by relay R' (it cannot read message 1)."""
    initiator = EnrollmentInitiator(LINK.private_bytes(), bytes(RELAY.public))
    message1 = initiator.request(make_request())
    impostor = EnrollmentResponder(X25519KeyPair(bytes(range(5, 37))).private_bytes())
    with pytest.raises(HandshakeFailed):
        impostor.read(message1)


def test_error_response_round_trip() -> None:
    response = EnrollResponse(error="code_used")
    assert EnrollResponse.decode(response.encode()) == response


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parsers_raise_only_our_errors(data: bytes) -> None:
    for parse in (EnrollRequest.decode, EnrollResponse.decode):
        with contextlib.suppress(LiaisonError):
            parse(data)
