"""Safety numbers: libsignal's fingerprint test values, and Liaison's cell safety number."""

from __future__ import annotations

from typing import Any

import pytest

from liaison.protocol.errors import InvalidKey
from liaison.protocol.fingerprint import (
    CELL_ID_LEN,
    DEFAULT_ITERATIONS,
    LIAISON_KEY_TYPE,
    SAFETY_NUMBER_DIGITS,
    cell_safety_number,
    format_safety_number,
    safety_number,
    scannable_fingerprint,
)
from tests.vectorload import load_json

SIGNAL: dict[str, Any] = load_json("signal/libsignal_safety_number.json")
ALICE_KEY = bytes.fromhex(SIGNAL["alice_identity"])
ALICE_ID = SIGNAL["alice_stable_id"].encode()
BOB_KEY = bytes.fromhex(SIGNAL["bob_identity"])
BOB_ID = SIGNAL["bob_stable_id"].encode()
DISPLAYABLE: str = SIGNAL["displayable"]

# Two cells: Ed25519 public keys of the seeds 0x01 * 32 and 0x02 * 32.
CELL_A_IDENTITY = bytes.fromhex("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c")
CELL_A_ID = bytes.fromhex("a1" * CELL_ID_LEN)
CELL_B_IDENTITY = bytes.fromhex("8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394")
CELL_B_ID = bytes.fromhex("b2" * CELL_ID_LEN)
# Known answer for the two cells above (a regression value, fixed when the encoding was chosen).
CELL_AB_NUMBER = "382466366290385301848212011228535869558363061308475918214900"


# --- libsignal vectors ------------------------------------------------------------------------


def test_vector_parameters() -> None:
    assert SIGNAL["iterations"] == DEFAULT_ITERATIONS
    assert len(ALICE_KEY) == len(BOB_KEY) == 33
    assert ALICE_KEY[0] == BOB_KEY[0] == 0x05


def test_displayable_alice_view() -> None:
    assert safety_number(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID) == DISPLAYABLE


def test_displayable_bob_view() -> None:
    assert safety_number(BOB_KEY, BOB_ID, ALICE_KEY, ALICE_ID) == DISPLAYABLE


def test_displayable_explicit_defaults() -> None:
    number = safety_number(
        ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, iterations=DEFAULT_ITERATIONS, version=0
    )
    assert number == DISPLAYABLE


@pytest.mark.parametrize("iterations", [DEFAULT_ITERATIONS - 1, DEFAULT_ITERATIONS + 1])
def test_iteration_count_is_exact(iterations: int) -> None:
    assert safety_number(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, iterations=iterations) != (
        DISPLAYABLE
    )


def test_version_changes_number() -> None:
    assert safety_number(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, version=1) != DISPLAYABLE


@pytest.mark.parametrize("scannable_version", [1, 2])
def test_scannable(scannable_version: int) -> None:
    alice = scannable_fingerprint(
        ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, scannable_version=scannable_version
    )
    bob = scannable_fingerprint(
        BOB_KEY, BOB_ID, ALICE_KEY, ALICE_ID, scannable_version=scannable_version
    )
    assert alice == bytes.fromhex(SIGNAL[f"alice_scannable_v{scannable_version}"])
    assert bob == bytes.fromhex(SIGNAL[f"bob_scannable_v{scannable_version}"])
    # Each side's code carries its own fingerprint as "local": the two are mirror images.
    assert alice[4:38] == bob[40:74]
    assert alice[40:74] == bob[4:38]


def test_scannable_default_version_is_2() -> None:
    assert scannable_fingerprint(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID) == bytes.fromhex(
        SIGNAL["alice_scannable_v2"]
    )


def test_scannable_large_version_is_a_varint() -> None:
    encoded = scannable_fingerprint(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, scannable_version=300)
    assert encoded[:3] == b"\x08\xac\x02"
    assert encoded[3:] == bytes.fromhex(SIGNAL["alice_scannable_v2"])[2:]


def test_format_safety_number() -> None:
    formatted = format_safety_number(DISPLAYABLE)
    assert formatted == "30035 44776 92869 39689 28698 76765 45825 75691 62576 84344 09180 79131"
    groups = formatted.split(" ")
    assert len(groups) == 12
    assert all(len(group) == 5 for group in groups)
    assert "".join(groups) == DISPLAYABLE


@pytest.mark.parametrize(
    "digits",
    ["", DISPLAYABLE[:-1], DISPLAYABLE + "0", "a" + DISPLAYABLE[1:], "٣" + DISPLAYABLE[1:]],
    ids=["empty", "short", "long", "letter", "non-ascii-digit"],
)
def test_format_safety_number_rejects(digits: str) -> None:
    with pytest.raises(ValueError, match="60 ASCII digits"):
        format_safety_number(digits)


@pytest.mark.parametrize(("iterations", "version"), [(0, 0), (-1, 0), (1, -1), (1, 0x10000)])
def test_bad_parameters(iterations: int, version: int) -> None:
    with pytest.raises(ValueError, match="must"):
        safety_number(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, iterations=iterations, version=version)
    with pytest.raises(ValueError, match="must"):
        scannable_fingerprint(
            ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, iterations=iterations, version=version
        )


def test_bad_scannable_version() -> None:
    with pytest.raises(ValueError, match="uint32"):
        scannable_fingerprint(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, scannable_version=-1)
    with pytest.raises(ValueError, match="uint32"):
        scannable_fingerprint(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID, scannable_version=1 << 32)


def test_empty_key_rejected() -> None:
    with pytest.raises(InvalidKey):
        safety_number(b"", ALICE_ID, BOB_KEY, BOB_ID)
    with pytest.raises(InvalidKey):
        safety_number(ALICE_KEY, ALICE_ID, b"", BOB_ID)
    with pytest.raises(InvalidKey):
        scannable_fingerprint(b"", ALICE_ID, BOB_KEY, BOB_ID)


# --- Liaison cells ----------------------------------------------------------------------------


def test_cell_known_answer() -> None:
    assert cell_safety_number(CELL_A_IDENTITY, CELL_A_ID, CELL_B_IDENTITY, CELL_B_ID) == (
        CELL_AB_NUMBER
    )


def test_cell_symmetric() -> None:
    a_view = cell_safety_number(CELL_A_IDENTITY, CELL_A_ID, CELL_B_IDENTITY, CELL_B_ID)
    b_view = cell_safety_number(CELL_B_IDENTITY, CELL_B_ID, CELL_A_IDENTITY, CELL_A_ID)
    assert a_view == b_view


def test_cell_is_60_digits() -> None:
    number = cell_safety_number(CELL_A_IDENTITY, CELL_A_ID, CELL_B_IDENTITY, CELL_B_ID)
    assert len(number) == SAFETY_NUMBER_DIGITS
    assert number.isascii()
    assert number.isdigit()
    assert len(format_safety_number(number)) == SAFETY_NUMBER_DIGITS + 11


def test_cell_uses_typed_key_encoding() -> None:
    expected = safety_number(
        LIAISON_KEY_TYPE + CELL_A_IDENTITY,
        CELL_A_ID,
        LIAISON_KEY_TYPE + CELL_B_IDENTITY,
        CELL_B_ID,
        iterations=DEFAULT_ITERATIONS,
        version=0,
    )
    assert LIAISON_KEY_TYPE == b"\x07"
    assert cell_safety_number(CELL_A_IDENTITY, CELL_A_ID, CELL_B_IDENTITY, CELL_B_ID) == expected
    # The same 32 bytes read as Signal (0x05) keys give a different number.
    signal_style = safety_number(
        b"\x05" + CELL_A_IDENTITY, CELL_A_ID, b"\x05" + CELL_B_IDENTITY, CELL_B_ID
    )
    assert signal_style != expected


def _flip(value: bytes, index: int = 0) -> bytes:
    return value[:index] + bytes([value[index] ^ 0x01]) + value[index + 1 :]


@pytest.mark.parametrize(
    "changed",
    ["local_identity", "local_cell_id", "remote_identity", "remote_cell_id"],
)
@pytest.mark.parametrize("index", [0, -1])
def test_cell_changes_with_every_input(changed: str, index: int) -> None:
    inputs = {
        "local_identity": CELL_A_IDENTITY,
        "local_cell_id": CELL_A_ID,
        "remote_identity": CELL_B_IDENTITY,
        "remote_cell_id": CELL_B_ID,
    }
    value = inputs[changed]
    inputs[changed] = _flip(value, index % len(value))
    assert cell_safety_number(**inputs) != CELL_AB_NUMBER


def test_cell_swapping_ids_changes_number() -> None:
    swapped = cell_safety_number(CELL_A_IDENTITY, CELL_B_ID, CELL_B_IDENTITY, CELL_A_ID)
    assert swapped != CELL_AB_NUMBER


@pytest.mark.parametrize(
    "position",
    ["local_identity", "local_cell_id", "remote_identity", "remote_cell_id"],
)
@pytest.mark.parametrize("delta", [-1, 1])
def test_cell_rejects_bad_lengths(position: str, delta: int) -> None:
    inputs = {
        "local_identity": CELL_A_IDENTITY,
        "local_cell_id": CELL_A_ID,
        "remote_identity": CELL_B_IDENTITY,
        "remote_cell_id": CELL_B_ID,
    }
    value = inputs[position]
    inputs[position] = value[:-1] if delta < 0 else value + b"\x00"
    with pytest.raises(InvalidKey):
        cell_safety_number(**inputs)


@pytest.mark.parametrize(
    ("local_identity", "local_cell_id"),
    [(b"", CELL_A_ID), (CELL_A_IDENTITY, b""), (LIAISON_KEY_TYPE + CELL_A_IDENTITY, CELL_A_ID)],
    ids=["empty-identity", "empty-cell-id", "already-typed-identity"],
)
def test_cell_rejects_other_encodings(local_identity: bytes, local_cell_id: bytes) -> None:
    with pytest.raises(InvalidKey):
        cell_safety_number(local_identity, local_cell_id, CELL_B_IDENTITY, CELL_B_ID)
