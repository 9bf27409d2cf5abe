"""The cell's local state: one SQLite file in the home directory, private keys sealed at rest.

Theory of operation
-------------------
``<home>/cell.db`` (stdlib ``sqlite3``, WAL, ``synchronous=FULL``) holds everything a cell
keeps: its keys, the pinned relay key and URL, its cell id and name, its peers, sessions,
outbox and inbox. The home directory is created 0700 and the file 0600 (SQLite gives its
``-wal``/``-shm`` side files the database file's mode).

Sealing. With a passphrase, every secret column (private keys, one-time prekeys, session
states, message bodies and markings) is stored as ``SecretBox(key).encrypt(value)`` where
``key = Argon2id(passphrase, salt)`` (PyNaCl, the INTERACTIVE limits; salt and limits stored in
``meta``). A sealed known value, the *canary*, tells a wrong passphrase
(:class:`WrongPassphrase`) from a damaged file (:class:`CorruptState`). Without a passphrase
the same columns hold the plain bytes. Public data (peer identities, envelopes, which are
end-to-end ciphertext, ids, statuses, times) is not sealed.

Transactions. :meth:`Store.transaction` is ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on any
exception). Everything that goes with one send or one receive happens inside one, so a crash
leaves either all or nothing of it (the modules ``outgoing`` and ``receive`` say which).

Errors. No ``sqlite3`` or ``nacl`` exception leaves this module: an unreadable, foreign or
damaged file is :class:`CorruptState`, a busy one :class:`StateLocked`.

The table layout is in ``SCHEMA`` below; the row-level queries are in ``tables.py``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils

from liaison.protocol.errors import LiaisonError
from liaison.protocol.keys import IdentityKeyPair, KemKeyPair, X25519KeyPair

from .errors import CorruptState, NotEnrolled, PassphraseRequired, StateLocked, WrongPassphrase

__all__ = [
    "ADDED_COLUMNS",
    "CHANNEL_SCHEMA",
    "RESET_SCHEMA",
    "SCHEMA",
    "SEALED_COLUMNS",
    "STATE_FILE",
    "Keys",
    "Store",
]

STATE_FILE = "cell.db"
SCHEMA_VERSION = 1
_CANARY = b"Liaison cell state v1"

SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE secrets (                 -- identity, link, spk, kem: sealed private keys
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE one_time_prekeys (
    prekey_id INTEGER PRIMARY KEY,
    private BLOB NOT NULL,             -- sealed X25519 private key
    created_at INTEGER NOT NULL
);
CREATE TABLE peers (
    cell_id BLOB PRIMARY KEY,
    name TEXT,                         -- NULL until a PEERS frame names it
    status TEXT NOT NULL,              -- pending | active | suspended | revoked
    paired INTEGER NOT NULL DEFAULT 1, -- 0 once the relay stops listing it
    identity BLOB,                     -- pinned Ed25519 identity (NULL until first seen)
    verified INTEGER NOT NULL DEFAULT 0,
    pending_identity BLOB,             -- a different identity seen since: blocks sending
    updated_at INTEGER NOT NULL
);
CREATE INDEX peers_name ON peers (name);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    peer BLOB NOT NULL,
    state BLOB NOT NULL,               -- sealed Session.to_bytes()
    setup_ephemeral BLOB,              -- responder side: EK_A of the setup block (M-SES-8)
    rank INTEGER NOT NULL,             -- highest rank = current session (M-SES-10)
    created_at INTEGER NOT NULL
);
CREATE INDEX sessions_peer ON sessions (peer, rank);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- send order
    message_id BLOB NOT NULL UNIQUE,
    peer BLOB NOT NULL,
    envelope BLOB,                     -- dropped once accepted or failed
    content_type INTEGER NOT NULL,
    precedence INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at INTEGER NOT NULL,
    status TEXT NOT NULL,              -- queued | accepted | delivered | read | expired | failed
    relay_seq INTEGER,
    error TEXT,
    updated_at REAL NOT NULL,
    body BLOB,                         -- sealed payload as sent (history); NULL for receipts
    marking BLOB                       -- sealed marking as sent
);
CREATE INDEX outbox_status ON outbox (status, id);
CREATE TABLE inbox (                   -- also the set of processed (sender, message id)
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order
    sender BLOB NOT NULL,
    message_id BLOB NOT NULL,
    content_type INTEGER,
    precedence INTEGER NOT NULL,
    body BLOB,                         -- sealed payload, NULL when it did not open
    marking BLOB,                      -- sealed marking
    seq INTEGER,
    sent_at_ms INTEGER,
    received_at_ms INTEGER NOT NULL,   -- the relay's acceptance time
    relay_seq INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    yielded INTEGER NOT NULL DEFAULT 0,
    read INTEGER NOT NULL DEFAULT 0,
    decrypt_failed INTEGER NOT NULL DEFAULT 0,
    error TEXT,                        -- why it failed: decrypt_failed, key_changed, ...
    held_envelope BLOB,                -- kept for a retry after a key change is accepted
    delivery_receipt INTEGER NOT NULL DEFAULT 0,   -- 0 none, 1 to send, 2 queued
    read_receipt INTEGER NOT NULL DEFAULT 0,       -- 0 none, 1 to send, 2 queued
    UNIQUE (sender, message_id)
);
CREATE INDEX inbox_unyielded ON inbox (yielded, id);
CREATE INDEX inbox_receipts ON inbox (sender, delivery_receipt, read_receipt);
"""

CHANNEL_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (  -- channel sequence numbers, per peer (SPEC.md §9.2)
    peer BLOB PRIMARY KEY,
    sent INTEGER NOT NULL DEFAULT 0,       -- the last seq sealed to the peer
    received INTEGER NOT NULL DEFAULT 0    -- the highest seq opened from the peer
);
CREATE TABLE IF NOT EXISTS channel_sent (   -- what each seq sealed to a peer was
    peer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    receipt BLOB,                      -- a receipt's payload, sealed again if reported missing
    reissue INTEGER NOT NULL DEFAULT 0,    -- 1: reported missing, to be sealed again
    PRIMARY KEY (peer, seq)
);
CREATE TABLE IF NOT EXISTS gaps (      -- seqs from a peer not opened although a later one was
    peer BLOB NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    noticed_at REAL NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0,   -- 1 once reported to the peer as missing
    PRIMARY KEY (peer, first_seq)
);
"""
"""Channel bookkeeping (gap detection). Every statement is idempotent: it is part of a new
state file and is run again when an older one is opened, so files from before it gain it."""

RESET_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_resets (  -- sessions to reset at the next link (resets.py)
    peer BLOB PRIMARY KEY,
    reason INTEGER NOT NULL,               -- 1 the operator asked, 2 the home was restored
    requested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reset_sessions (  -- per peer: the session its last reset made
    peer BLOB PRIMARY KEY,
    session_id INTEGER NOT NULL            -- older sessions open envelopes, never send again
);
"""
"""Session resets waiting for a link (``resets``); idempotent like ``CHANNEL_SCHEMA``."""

ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("outbox", "body", "BLOB"),
    ("outbox", "marking", "BLOB"),
)
"""``(table, column, type)`` added to ``SCHEMA`` after state files were in use: opening an
older file adds every missing one (``ALTER TABLE ... ADD COLUMN``, NULL in existing rows)."""

SEALED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("secrets", "value"),
    ("one_time_prekeys", "private"),
    ("sessions", "state"),
    ("inbox", "body"),
    ("inbox", "marking"),
    ("outbox", "body"),
    ("outbox", "marking"),
)
"""Every sealed column, as ``(table, column)``: :meth:`Store.reseal` re-seals exactly these
(rows found by ``rowid``; NULL values stay NULL). A new sealed column MUST be added here, or
``liaison cell seal`` / ``passphrase`` would leave it under the old key. (The canary in
``meta`` is re-sealed separately.)"""


@dataclass(frozen=True, slots=True)
class Keys:
    """The cell's long-term private keys, unsealed in memory."""

    identity: IdentityKeyPair
    link: X25519KeyPair
    spk_id: int
    spk: X25519KeyPair
    kem_id: int
    kem: KemKeyPair


class _Sealer:
    """SecretBox under an Argon2id-derived key, or the identity without a passphrase."""

    def __init__(self, key: bytes | None) -> None:
        self._box = None if key is None else nacl.secret.SecretBox(key)

    @property
    def sealed(self) -> bool:
        return self._box is not None

    def seal(self, data: bytes) -> bytes:
        return data if self._box is None else bytes(self._box.encrypt(data))

    def unseal(self, data: bytes) -> bytes:
        if self._box is None:
            return data
        try:
            return bytes(self._box.decrypt(data))
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise CorruptState("a sealed value in the state file does not open") from None


def _derive(passphrase: str | bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
    key: bytes = argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, secret, salt, opslimit=opslimit, memlimit=memlimit
    )
    return key


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn sqlite3 failures into client errors."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            raise StateLocked() from None
        raise CorruptState(f"the state file cannot be used: {exc}") from None
    except sqlite3.Error as exc:
        raise CorruptState(f"the state file is damaged: {exc}") from None


def _statements(script: str) -> list[str]:
    """The statements of ``script`` (comments removed; no ``;`` inside a statement)."""
    text = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [part.strip() for part in text.split(";") if part.strip()]


def _private_dir(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(home.stat().st_mode) != 0o700:
        home.chmod(0o700)


class Store:
    """An open state file. Not thread-safe: use it from one event loop."""

    def __init__(self, db: sqlite3.Connection, path: Path, sealer: _Sealer) -> None:
        self._db = db
        self.path = path
        self._sealer = sealer
        self._in_tx = False
        self.keys: Keys | None = None
        self.session_cache: dict[int, tuple[bytes, Any]] = {}
        """Parsed sessions by row id, with the state bytes they were parsed from or saved as
        (``tables.load_session`` uses an entry only if both still match the stored bytes)."""

    # -- opening and creating ---------------------------------------------------------------

    @staticmethod
    def path_for(home: Path) -> Path:
        return Path(home) / STATE_FILE

    @classmethod
    def exists(cls, home: Path) -> bool:
        return cls.path_for(home).exists()

    @classmethod
    def create(cls, home: Path, passphrase: str | bytes | None) -> Store:
        """Create a new, empty state file (0600) in ``home`` (0700). The file must not exist."""
        home = Path(home)
        _private_dir(home)
        path = cls.path_for(home)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            raise CorruptState(f"{path} already exists") from None
        os.close(fd)
        db = cls._connect(path)
        sealer = _Sealer(None)
        meta: dict[str, bytes] = {"schema_version": str(SCHEMA_VERSION).encode()}
        if passphrase is not None:
            salt = nacl.utils.random(argon2id.SALTBYTES)
            ops, mem = argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE
            sealer = _Sealer(_derive(passphrase, salt, ops, mem))
            meta |= {"kdf": b"argon2id", "salt": salt, "opslimit": str(ops).encode(),
                     "memlimit": str(mem).encode()}  # fmt: skip
        else:
            meta["kdf"] = b"none"
        meta["canary"] = sealer.seal(_CANARY)
        store = cls(db, path, sealer)
        try:
            with store.transaction():
                for statement in _statements(SCHEMA + CHANNEL_SCHEMA + RESET_SCHEMA):
                    store.execute(statement)
                for key, value in meta.items():
                    store.set_meta(key, value)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, home: Path, passphrase: str | bytes | None) -> Store:
        """Open the state file of ``home``; ``NotEnrolled`` if there is none."""
        home = Path(home)
        path = cls.path_for(home)
        if not path.is_file():
            raise NotEnrolled(f"no cell state in {home}")
        with contextlib.suppress(OSError):
            if stat.S_IMODE(home.stat().st_mode) != 0o700:
                home.chmod(0o700)
            for side in (path, *(path.with_name(STATE_FILE + s) for s in ("-wal", "-shm"))):
                if side.exists() and stat.S_IMODE(side.stat().st_mode) != 0o600:
                    side.chmod(0o600)
        return cls._unlocked(cls._connect(path), path, passphrase)

    @classmethod
    def open_exclusive(cls, home: Path, passphrase: str | bytes | None) -> Store:
        """Open the state file of ``home`` holding SQLite's exclusive lock until ``close``:
        ``StateLocked`` if any other process has the file open (a running ``listen``, whose
        keys in memory would otherwise write under a passphrase that changed under it)."""
        home = Path(home)
        path = cls.path_for(home)
        if not path.is_file():
            raise NotEnrolled(f"no cell state in {home}")
        return cls._unlocked(cls._connect(path, exclusive=True), path, passphrase)

    @classmethod
    def _unlocked(cls, db: sqlite3.Connection, path: Path, passphrase: str | bytes | None) -> Store:
        """The store over ``db``, unlocked with ``passphrase`` (closed again if that fails)."""
        store = cls(db, path, _Sealer(None))
        try:
            store._unlock(passphrase)
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _connect(path: Path, *, exclusive: bool = False) -> sqlite3.Connection:
        with _translated():
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                if exclusive:  # before WAL is first used: no shared memory, one process only
                    db.execute("PRAGMA busy_timeout = 200")
                    db.execute("PRAGMA locking_mode = EXCLUSIVE")
                    db.execute("BEGIN EXCLUSIVE")
                    db.execute("COMMIT")
                db.execute("PRAGMA busy_timeout = 5000")
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
                if mode is None or str(mode[0]).lower() != "wal":
                    raise CorruptState("the state file cannot use write-ahead logging")
                db.execute("PRAGMA synchronous = FULL")
                db.execute("PRAGMA secure_delete = ON")
            except BaseException:
                db.close()
                raise
        return db

    def _unlock(self, passphrase: str | bytes | None) -> None:
        with _translated():
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise CorruptState("the state file failed its integrity check")
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            raise NotEnrolled("the state file is empty")
        if not {"meta", "secrets", "peers", "sessions", "outbox", "inbox"} <= tables:
            raise CorruptState("the state file is not a Liaison cell state")
        if self.get_meta("schema_version") != str(SCHEMA_VERSION).encode():
            raise CorruptState("the state file has an unsupported schema version")
        kdf = self.get_meta("kdf")
        if kdf == b"argon2id":
            if passphrase is None:
                raise PassphraseRequired()
            salt = self._required("salt")
            try:
                ops, mem = int(self._required("opslimit")), int(self._required("memlimit"))
                key = _derive(passphrase, salt, ops, mem)
            except (ValueError, nacl.exceptions.CryptoError) as exc:
                raise CorruptState("the state file's key derivation parameters are bad") from exc
            self._sealer = _Sealer(key)
        elif kdf != b"none":
            raise CorruptState("the state file names an unknown key derivation")
        try:
            canary = self._sealer.unseal(self._required("canary"))
        except CorruptState:
            raise WrongPassphrase() from None
        if canary != _CANARY:
            raise WrongPassphrase() if self._sealer.sealed else CorruptState("bad canary")
        if self.get_meta("cell_id") is not None or self.get_secret("identity") is not None:
            self.keys = self._load_keys()
        if not {"channels", "channel_sent", "gaps", "session_resets", "reset_sessions"} <= tables:
            with self.transaction():
                for statement in _statements(CHANNEL_SCHEMA + RESET_SCHEMA):
                    self.execute(statement)
        self._add_columns()

    def _add_columns(self) -> None:
        """Upgrade an older file in place: add the ``ADDED_COLUMNS`` it lacks."""
        missing = []
        for table, column, kind in ADDED_COLUMNS:
            have = {str(row[1]) for row in self.query(f"PRAGMA table_info({table})")}
            if column not in have:
                missing.append(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        if missing:
            with self.transaction():
                for statement in missing:
                    self.execute(statement)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    # -- transactions and raw access -----------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        """One atomic unit of work, fsync'd at commit. Not reentrant.

        ``durable=False`` skips the fsync (``synchronous=NORMAL`` for this commit): still
        atomic and still kept if the *process* dies, but a power loss may roll it back (never
        anything committed before it). Only for updates that are re-derived when lost (the
        ACCEPTED status: the envelope is resent and the relay answers ACCEPTED again).
        """
        if self._in_tx:
            raise RuntimeError("transactions do not nest")
        with _translated():
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
        self._in_tx = True
        try:
            yield
            with _translated():
                self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._in_tx = False
            if not durable:
                with _translated():
                    self._db.execute("PRAGMA synchronous = FULL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed (lastrowid for an INSERT)."""
        with _translated():
            cursor = self._db.execute(sql, params)
            if sql.lstrip().upper().startswith("INSERT"):
                return int(cursor.lastrowid or 0)
            return cursor.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with _translated():
            return [tuple(row) for row in self._db.execute(sql, params).fetchall()]

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    # -- sealing ---------------------------------------------------------------------------------

    def reseal(self, passphrase: str | bytes | None, *,
               _between: Callable[[str, str], None] | None = None) -> int:  # fmt: skip
        """Seal every sealed column (``SEALED_COLUMNS``) and the canary under ``passphrase``
        (a fresh salt; ``None``: store them plain), in **one transaction**: a crash or an
        error leaves the old state or the new one, never a mix. Returns the values re-sealed.
        Open the store with :meth:`open_exclusive` so no other process holds the old key.
        ``_between(table, column)`` runs after each column (tests inject a failure there)."""
        new = _Sealer(None)
        meta: dict[str, bytes] = {"kdf": b"none"}
        if passphrase is not None:
            salt = nacl.utils.random(argon2id.SALTBYTES)
            ops, mem = argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE
            new = _Sealer(_derive(passphrase, salt, ops, mem))
            meta = {"kdf": b"argon2id", "salt": salt, "opslimit": str(ops).encode(),
                    "memlimit": str(mem).encode()}  # fmt: skip
        count = 0
        with self.transaction():
            for table, column in SEALED_COLUMNS:
                rows = self.query(f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL")
                for rowid, value in rows:
                    plain = self._sealer.unseal(bytes(value))
                    self.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                                 (new.seal(plain), rowid))  # fmt: skip
                    count += 1
                if _between is not None:
                    _between(table, column)
            self.execute("DELETE FROM meta WHERE key IN ('salt', 'opslimit', 'memlimit')")
            for key, value in meta.items():
                self.set_meta(key, value)
            self.set_meta("canary", new.seal(_CANARY))
        self._sealer = new
        self.session_cache.clear()
        return count

    @property
    def sealed(self) -> bool:
        return self._sealer.sealed

    def seal(self, data: bytes) -> bytes:
        return self._sealer.seal(data)

    def unseal(self, data: bytes) -> bytes:
        return self._sealer.unseal(bytes(data))

    # -- meta and secrets ----------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        row = self.query_one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else bytes(row[0])

    def _required(self, key: str) -> bytes:
        value = self.get_meta(key)
        if value is None:
            raise CorruptState(f"the state file lacks {key!r}")
        return value

    def set_meta(self, key: str, value: bytes) -> None:
        self.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_secret(self, name: str) -> bytes | None:
        row = self.query_one("SELECT value FROM secrets WHERE name = ?", (name,))
        return None if row is None else self.unseal(row[0])

    def set_secret(self, name: str, value: bytes) -> None:
        self.execute(
            "INSERT OR REPLACE INTO secrets (name, value) VALUES (?, ?)", (name, self.seal(value))
        )

    def _load_keys(self) -> Keys:
        try:
            parts = {n: self.get_secret(n) for n in ("identity", "link", "spk", "kem")}
            values = {n: v for n, v in parts.items() if v is not None}
            if len(values) != len(parts):
                raise CorruptState("the state file lacks a private key")
            return Keys(
                IdentityKeyPair(values["identity"]),
                X25519KeyPair(values["link"]),
                int(self._required("spk_id")),
                X25519KeyPair(values["spk"]),
                int(self._required("kem_id")),
                KemKeyPair(values["kem"]),
            )
        except (LiaisonError, ValueError) as exc:
            raise CorruptState("a private key in the state file is malformed") from exc

    def store_keys(self, keys: Keys) -> None:
        """Write the long-term keys (inside a transaction)."""
        self.set_secret("identity", keys.identity.private_bytes())
        self.set_secret("link", keys.link.private_bytes())
        self.set_secret("spk", keys.spk.private_bytes())
        self.set_secret("kem", keys.kem.private_bytes())
        self.set_meta("spk_id", str(keys.spk_id).encode())
        self.set_meta("kem_id", str(keys.kem_id).encode())
        self.keys = keys

    # -- identity of this cell -------------------------------------------------------------------

    @property
    def cell_id(self) -> bytes | None:
        return self.get_meta("cell_id")

    @property
    def name(self) -> str:
        return (self.get_meta("cell_name") or b"").decode(errors="replace")

    @property
    def server_url(self) -> str:
        return self._required("server_url").decode()

    @property
    def relay_key(self) -> bytes:
        return self._required("relay_key")

    # -- one-time prekeys --------------------------------------------------------------------------

    def new_one_time_prekeys(self, count: int) -> list[tuple[int, X25519KeyPair]]:
        """Generate ``count`` one-time prekeys with fresh ids and store them (inside a
        transaction). Ids are never reused (M-KEY-2): ``next_opk_id`` only grows."""
        first = int(self.get_meta("next_opk_id") or b"1")
        if first + count >= 0xFFFFFFFF:
            raise CorruptState("one-time prekey ids are exhausted")
        keys = [(first + i, X25519KeyPair.generate()) for i in range(count)]
        now = int(time.time())
        for prekey_id, pair in keys:
            self.execute(
                "INSERT INTO one_time_prekeys (prekey_id, private, created_at) VALUES (?, ?, ?)",
                (prekey_id, self.seal(pair.private_bytes()), now),
            )
        self.set_meta("next_opk_id", str(first + count).encode())
        return keys

    def one_time_prekey(self, prekey_id: int) -> X25519KeyPair | None:
        row = self.query_one(
            "SELECT private FROM one_time_prekeys WHERE prekey_id = ?", (prekey_id,)
        )
        if row is None:
            return None
        try:
            return X25519KeyPair(self.unseal(row[0]))
        except LiaisonError as exc:
            raise CorruptState("a one-time prekey in the state file is malformed") from exc

    def delete_one_time_prekey(self, prekey_id: int) -> None:
        self.execute("DELETE FROM one_time_prekeys WHERE prekey_id = ?", (prekey_id,))

    def one_time_prekey_count(self) -> int:
        row = self.query_one("SELECT count(*) FROM one_time_prekeys")
        return 0 if row is None else int(row[0])

    def all_one_time_prekeys(self) -> list[tuple[int, X25519KeyPair]]:
        """Every stored one-time prekey (to re-send an interrupted enrollment)."""
        rows = self.query("SELECT prekey_id FROM one_time_prekeys ORDER BY prekey_id")
        out = []
        for (prekey_id,) in rows:
            pair = self.one_time_prekey(int(prekey_id))
            if pair is not None:
                out.append((int(prekey_id), pair))
        return out

    @staticmethod
    def remove(home: Path) -> None:
        """Delete a state file and its side files (an enrollment that was refused)."""
        path = Store.path_for(home)
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                path.with_name(STATE_FILE + suffix).unlink()
