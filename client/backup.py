"""Backing up and restoring a cell's home without breaking its sessions (docs/backup.md).

Theory of operation
-------------------
:func:`backup` copies ``<home>/cell.db`` with SQLite's online backup API: a consistent
snapshot even while a ``listen`` is writing, into a new file created 0600 with ``O_EXCL``
(never overwriting anything), switched to a self-contained rollback journal and checked. The
copy is as sealed as the home (same passphrase); no passphrase is needed to make it.

A backup is older than the home by the time it is restored: its ratchet states are behind the
peers', its channel counters repeat numbers the peers have seen, its one-time prekey counter
is behind ids already uploaded. Using it as it is breaks every session (SPEC.md §12.9).
:func:`restore` therefore marks the restored state before it is put in place:

* a session reset (``resets``, M-SES-11) is requested with every paired, not revoked peer, so
  the next process that connects starts new sessions and tells the peers, before it seals
  anything else to them (M-SES-13);
* the next one-time prekey id skips ahead (``OPK_SKIP``), so no id the lost state uploaded is
  used again (M-KEY-2).

It refuses a file that is not a Liaison cell state, and a home that already holds one unless
``force``; the file is written next to the target and renamed into place, so a failure leaves
the home as it was. ``force`` takes SQLite's exclusive lock on the old state first: a running
process keeps it from being replaced (``StateLocked``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from .errors import BackupFailed, BadBackup, CorruptState, NotEnrolled, StateConflict, StateLocked
from .state import CHANNEL_SCHEMA, RESET_SCHEMA, STATE_FILE, Store, _private_dir, _statements

__all__ = ["OPK_SKIP", "RestoreResult", "backup", "restore"]

OPK_SKIP = 1 << 20
"""One-time prekey ids skipped by a restore (more than any number a cell uploads meanwhile)."""
_MAX_OPK_ID = 0xFFFFFFFE
_REQUIRED = {"meta", "secrets", "peers", "sessions", "outbox", "inbox"}


def _create_private(path: Path, error: type[Exception]) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise error(f"{path} already exists: it is never overwritten") from None
    except OSError as exc:
        raise error(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_cell(db: sqlite3.Connection, what: str, error: type[Exception]) -> str:
    """The cell's name if ``db`` is a Liaison cell state, else ``error``."""
    try:
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise error(f"{what} failed its integrity check")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if not tables >= _REQUIRED:
            raise error(f"{what} is not a Liaison cell state")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise error(f"{what} cannot be read: {exc}") from None
    if meta.get("schema_version") != b"1" or "cell_id" not in meta:
        raise error(f"{what} is not the state of an enrolled cell")
    return bytes(meta.get("cell_name") or b"").decode(errors="replace")


def backup(home: Path, target: Path) -> str:
    """Write a consistent snapshot of ``home``'s state to the new file ``target`` (0600);
    returns the cell's name. ``BackupFailed`` if ``target`` exists or cannot be written."""
    source_path = Store.path_for(Path(home))
    if not source_path.is_file():
        raise NotEnrolled(f"no cell state in {home}")
    target = Path(target)
    _create_private(target, BackupFailed)
    try:
        try:
            source = sqlite3.connect(source_path, isolation_level=None)
        except sqlite3.Error as exc:
            raise CorruptState(f"the state file cannot be used: {exc}") from None
        try:
            source.execute("PRAGMA busy_timeout = 5000")
            name = _check_cell(source, "the home's state", CorruptState)
            copy = sqlite3.connect(target, isolation_level=None)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                _check_cell(copy, "the backup", BackupFailed)
            finally:
                copy.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                raise StateLocked() from None
            raise BackupFailed(f"the backup cannot be written: {exc}") from None
        except sqlite3.Error as exc:
            raise BackupFailed(f"the backup cannot be written: {exc}") from None
        finally:
            source.close()
        _fsync(target)
    except BaseException:
        with contextlib.suppress(OSError):
            target.unlink()
        raise
    return name


class RestoreResult:
    """What :func:`restore` did: the cell's name and how many session resets it requested."""

    def __init__(self, name: str, resets: int) -> None:
        self.name = name
        self.resets = resets


def restore(source: Path, home: Path, *, force: bool = False) -> RestoreResult:
    """Put the backup ``source`` in place as ``home``'s state, marked for a session reset
    with every peer at the next connect (see the module docstring)."""
    source = Path(source)
    if not source.is_file():
        raise BadBackup(f"{source} is not a file")
    home = Path(home)
    target = Store.path_for(home)
    lock: sqlite3.Connection | None = None
    if target.exists():
        if not force:
            raise StateConflict(
                f"{home} already holds a cell state: restoring replaces it, and what it "
                "received since the backup is lost; stop every process using it and add --force"
            )
        lock = _lock_exclusive(target)
    try:
        _private_dir(home)
        staging = target.with_name(STATE_FILE + ".restoring")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        _create_private(staging, BackupFailed)
        try:
            result = _copy_marked(source, staging)
            _fsync(staging)
            if lock is not None:
                lock.close()
                lock = None
            for suffix in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    target.with_name(STATE_FILE + suffix).unlink()
            os.replace(staging, target)
            _fsync_dir(home)
        except BaseException:
            with contextlib.suppress(OSError):
                staging.unlink()
            raise
    finally:
        if lock is not None:
            lock.close()
    return result


def _lock_exclusive(path: Path) -> sqlite3.Connection:
    """SQLite's exclusive lock on an existing state file (``StateLocked`` if in use)."""
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=0.2)
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc).lower() or "busy" in str(exc).lower():
            raise StateLocked("the cell's state is in use by another process: stop it first") \
                from None  # fmt: skip
        raise CorruptState(f"the state file cannot be used: {exc}") from None
    except sqlite3.Error as exc:
        raise CorruptState(f"the state file cannot be used: {exc}") from None
    return db


def _copy_marked(source: Path, staging: Path) -> RestoreResult:
    """Copy the backup into ``staging`` and mark it restored, in one transaction."""
    try:
        backup_db = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise BadBackup(f"{source} cannot be read: {exc}") from None
    try:
        _check_cell(backup_db, str(source), BadBackup)
        copy = sqlite3.connect(staging, isolation_level=None)
        try:
            backup_db.backup(copy)
            name = _check_cell(copy, "the restored copy", BadBackup)
            copy.execute("BEGIN IMMEDIATE")
            for statement in _statements(CHANNEL_SCHEMA + RESET_SCHEMA):
                copy.execute(statement)
            now = time.time()
            count = copy.execute(
                "INSERT OR REPLACE INTO session_resets (peer, reason, requested_at) "
                "SELECT cell_id, 2, ? FROM peers WHERE paired = 1 AND status != 'revoked'",
                (now,),
            ).rowcount
            row = copy.execute("SELECT value FROM meta WHERE key = 'next_opk_id'").fetchone()
            next_id = int(bytes(row[0])) if row is not None else 1
            skipped = min(next_id + OPK_SKIP, _MAX_OPK_ID - 1000)
            copy.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_opk_id', ?)",
                         (str(max(next_id, skipped)).encode(),))  # fmt: skip
            copy.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('restored_at', ?)",
                         (str(int(now)).encode(),))  # fmt: skip
            copy.execute("COMMIT")
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise BadBackup(f"{source} cannot be restored: {exc}") from None
    except ValueError:
        raise BadBackup(f"{source} has a malformed prekey counter") from None
    finally:
        backup_db.close()
    return RestoreResult(name, count)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
