"""The cell's state file: sealing, passphrases, corruption, permissions, transactions."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from liaison.client.errors import (
    CorruptState,
    NotEnrolled,
    PassphraseRequired,
    WrongPassphrase,
)
from liaison.client.state import STATE_FILE, Keys, Store
from liaison.client.tables import SessionRow
from liaison.protocol.keys import IdentityKeyPair, KemKeyPair, X25519KeyPair

SECRET_BODY = b"the eagle lands at dawn"


def new_keys() -> Keys:
    return Keys(IdentityKeyPair.generate(), X25519KeyPair.generate(), 1,
                X25519KeyPair.generate(), 1, KemKeyPair.generate())  # fmt: skip


def make_store(home: Path, passphrase: str | None) -> Keys:
    """A state file with keys, prekeys, an enrolled identity and one stored message."""
    keys = new_keys()
    store = Store.create(home, passphrase)
    try:
        with store.transaction():
            store.store_keys(keys)
            store.new_one_time_prekeys(3)
            store.set_meta("cell_id", b"\x01" * 16)
            store.set_meta("cell_name", b"paris")
            store.set_meta("server_url", b"http://relay")
            store.set_meta("relay_key", b"\x02" * 32)
            store.execute(
                "INSERT INTO inbox (sender, message_id, precedence, body, marking, "
                "received_at_ms, relay_seq, expires_at) VALUES (?, ?, 3, ?, ?, 0, 1, 0)",
                (b"\x03" * 16, b"\x04" * 16, store.seal(SECRET_BODY), store.seal(b"SECRET")),
            )
    finally:
        store.close()
    return keys


def raw_bytes(home: Path) -> bytes:
    """Everything on disk: the database and its write-ahead log."""
    return b"".join(p.read_bytes() for p in home.iterdir() if p.name.startswith(STATE_FILE))


def test_reopen_returns_the_same_keys(tmp_path: Path) -> None:
    """Keys survive close and reopen, unsealed and sealed."""
    for passphrase in (None, "correct horse"):
        home = tmp_path / str(passphrase)
        keys = make_store(home, passphrase)
        store = Store.open(home, passphrase)
        try:
            assert store.keys == keys
            assert store.cell_id == b"\x01" * 16
            assert store.name == "paris"
            assert store.sealed is (passphrase is not None)
            assert store.one_time_prekey_count() == 3
        finally:
            store.close()


def test_private_keys_and_bodies_are_sealed_at_rest(tmp_path: Path) -> None:
    """With a passphrase no private key, one-time prekey or message body is on disk in clear;
    without one they are (which shows the check can fail)."""
    sealed = make_store(tmp_path / "sealed", "correct horse")
    plain = make_store(tmp_path / "plain", None)
    for keys, home, visible in ((sealed, tmp_path / "sealed", False),
                                (plain, tmp_path / "plain", True)):  # fmt: skip
        disk = raw_bytes(home)
        secrets = [keys.identity.private_bytes(), keys.link.private_bytes(),
                   keys.spk.private_bytes(), keys.kem.private_bytes(), SECRET_BODY]  # fmt: skip
        store = Store.open(home, "correct horse" if not visible else None)
        try:
            secrets += [pair.private_bytes() for _, pair in store.all_one_time_prekeys()]
        finally:
            store.close()
        assert all((secret in disk) is visible for secret in secrets)


def test_wrong_or_missing_passphrase(tmp_path: Path) -> None:
    make_store(tmp_path, "correct horse")
    with pytest.raises(WrongPassphrase) as wrong:
        Store.open(tmp_path, "battery staple")
    assert wrong.value.code == "wrong_passphrase"
    with pytest.raises(PassphraseRequired) as missing:
        Store.open(tmp_path, None)
    assert isinstance(missing.value, WrongPassphrase)
    Store.open(tmp_path, "correct horse").close()


def test_no_state_is_not_enrolled(tmp_path: Path) -> None:
    with pytest.raises(NotEnrolled):
        Store.open(tmp_path / "nowhere", None)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / STATE_FILE).write_bytes(b"")  # a crash during creation
    with pytest.raises(NotEnrolled):
        Store.open(tmp_path / "empty", None)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "zeroed_page"])
def test_corrupted_file_is_corrupt_state(tmp_path: Path, damage: str) -> None:
    """A damaged or foreign file raises CorruptState, never a sqlite3 error."""
    make_store(tmp_path, None)
    path = tmp_path / STATE_FILE
    store = Store.open(tmp_path, None)  # checkpoint the WAL into the file
    store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "zeroed_page":
        page = 4096
        path.write_bytes(data[:page] + bytes(page) + data[2 * page :])
    else:
        path.unlink()
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE unrelated (x)")
        db.close()
    with pytest.raises(CorruptState) as caught:
        Store.open(tmp_path, None)
    assert caught.value.exit_code == 16


def test_tampered_sealed_value_is_corrupt_state(tmp_path: Path) -> None:
    """A sealed private key that no longer opens is CorruptState, not a crypto exception."""
    make_store(tmp_path, "correct horse")
    with sqlite3.connect(tmp_path / STATE_FILE) as db:
        (value,) = db.execute("SELECT value FROM secrets WHERE name = 'identity'").fetchone()
        tampered = bytes(value[:-1]) + bytes([value[-1] ^ 1])
        db.execute("UPDATE secrets SET value = ? WHERE name = 'identity'", (tampered,))
    db.close()
    with pytest.raises(CorruptState):
        Store.open(tmp_path, "correct horse")


def test_malformed_session_is_corrupt_state() -> None:
    with pytest.raises(CorruptState):
        SessionRow(1, b"\x01\x00" + bytes(40), None).load()


def test_permissions(tmp_path: Path) -> None:
    """The home is 0700 and every state file 0600, also when the directory existed looser."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    make_store(home, None)
    store = Store.open(home, None)
    try:
        with store.transaction():
            store.set_meta("touch", b"x")
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        files = sorted(p.name for p in home.iterdir())
        assert STATE_FILE in files
        for name in files:
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    finally:
        store.close()


def test_wal_and_full_sync(tmp_path: Path) -> None:
    make_store(tmp_path, None)
    store = Store.open(tmp_path, None)
    try:
        assert store.query_one("PRAGMA journal_mode") == ("wal",)
        assert store.query_one("PRAGMA synchronous") == (2,)  # FULL
    finally:
        store.close()


def test_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    make_store(tmp_path, None)
    store = Store.open(tmp_path, None)
    try:

        def fail_midway() -> None:
            with store.transaction():
                store.set_meta("a", b"1")
                store.new_one_time_prekeys(2)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            fail_midway()
        assert store.get_meta("a") is None
        assert store.one_time_prekey_count() == 3
        with store.transaction(), pytest.raises(RuntimeError, match="nest"), store.transaction():
            pass
    finally:
        store.close()


def test_one_time_prekey_ids_are_never_reused(tmp_path: Path) -> None:
    """M-KEY-2: ids only grow, also after keys were used and deleted."""
    make_store(tmp_path, None)
    store = Store.open(tmp_path, None)
    try:
        with store.transaction():
            store.delete_one_time_prekey(3)
            again = store.new_one_time_prekeys(2)
        assert [i for i, _ in again] == [4, 5]
        assert store.one_time_prekey(3) is None
        assert store.one_time_prekey(4) == again[0][1]
    finally:
        store.close()


@pytest.mark.parametrize("commit", [False, True])
def test_a_killed_process_leaves_all_or_nothing(tmp_path: Path, commit: bool) -> None:
    """A process killed inside a transaction leaves nothing of it; one killed right after
    the commit leaves all of it."""
    make_store(tmp_path, "pw")
    script = textwrap.dedent(f"""
        import os
        from liaison.client.state import Store
        store = Store.open({str(tmp_path)!r}, "pw")
        store._db.execute("BEGIN IMMEDIATE")
        store.set_meta("marker", b"x")
        store.new_one_time_prekeys(5)
        if {commit!r}:
            store._db.execute("COMMIT")
        os._exit(9)
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == 9
    store = Store.open(tmp_path, "pw")
    try:
        assert (store.get_meta("marker") is not None) is commit
        assert store.one_time_prekey_count() == (8 if commit else 3)
    finally:
        store.close()
