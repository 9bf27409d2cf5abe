"""The outbox keeps the text it sent (for ``history``), sealed at rest, and state files from
before those columns keep opening (the in-code upgrade of ``client/state.py``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from liaison.client import tables
from liaison.client.state import ADDED_COLUMNS, SEALED_COLUMNS, STATE_FILE, Store

from .test_state import make_store, raw_bytes

SENT_TEXT = b"the convoy leaves at 0600Z from gate 7"


def _columns(home: Path, table: str) -> set[str]:
    db = sqlite3.connect(home / STATE_FILE)
    try:
        return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
    finally:
        db.close()


def test_an_older_state_file_gains_the_new_columns(tmp_path: Path) -> None:
    home = tmp_path / "old"
    make_store(home, None)
    db = sqlite3.connect(home / STATE_FILE)
    for table, column, _kind in ADDED_COLUMNS:
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # as before the columns
    db.execute(
        "INSERT INTO outbox (message_id, peer, envelope, content_type, precedence, created_at, "
        "expires_at, status, updated_at) VALUES (?, ?, NULL, 1, 3, 1, 2, 'accepted', 1)",
        (b"\x05" * 16, b"\x03" * 16),
    )
    db.commit()
    db.close()
    assert "body" not in _columns(home, "outbox")
    store = Store.open(home, None)
    try:
        [row] = tables.outbox_sent_rows(store, None, None, None)
        assert row[7] is None  # an old send: its text was not kept
    finally:
        store.close()
    assert {"body", "marking"} <= _columns(home, "outbox")
    Store.open(home, None).close()  # and again: nothing left to add


@pytest.mark.parametrize("passphrase", [None, "correct horse"])
def test_sent_text_is_kept_and_sealed_like_inbox_bodies(
    tmp_path: Path, passphrase: str | None
) -> None:
    home = tmp_path / "home"
    make_store(home, passphrase)
    store = Store.open(home, passphrase)
    try:
        with store.transaction():
            tables.outbox_add(store, message_id=b"\x06" * 16, peer=b"\x03" * 16,
                              envelope=None, content_type=1, precedence=0, expires_at=2**40,
                              body=SENT_TEXT, marking="NATO SECRET")  # fmt: skip
        [pending] = tables.outbox_pending(store)
        assert (pending.body, pending.marking) == (SENT_TEXT, "NATO SECRET")
        [row] = tables.outbox_sent_rows(store, b"\x03" * 16, None, 10)
        assert (row[7], row[8]) == (SENT_TEXT, "NATO SECRET")
    finally:
        store.close()
    on_disk = raw_bytes(home)
    assert (SENT_TEXT in on_disk) == (passphrase is None)
    assert ("outbox", "body") in SEALED_COLUMNS
    assert ("outbox", "marking") in SEALED_COLUMNS
