"""The relay's static link key: created once, kept in a 0600 file, never logged."""

from __future__ import annotations

import os
from pathlib import Path

from liaison.protocol.enrollment import relay_key_fingerprint
from liaison.protocol.keys import X25519KeyPair

__all__ = ["fingerprint_text", "load_or_create"]


def load_or_create(path: Path) -> tuple[X25519KeyPair, bool]:
    """Load the key at ``path``, or create it (mode 0600, written atomically).

    Returns ``(key, created)``. A file of the wrong size or with group/other permission bits
    is refused rather than silently used.
    """
    if path.exists():
        return _load(path), False
    key = X25519KeyPair.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name, then a hard link that fails if the key appeared meanwhile: two
    # nodes starting together on one key file both end up with the SAME key (the winner's).
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.private_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _load(path), False
    finally:
        tmp.unlink()
    return key, True


def _load(path: Path) -> X25519KeyPair:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    data = path.read_bytes()
    if len(data) != 32:
        raise ValueError(f"{path} is not a relay key file (expected 32 bytes)")
    return X25519KeyPair(data)


def fingerprint_text(key: X25519KeyPair) -> str:
    """The relay key fingerprint as operators read it: 8 groups of 4 hex digits."""
    raw = relay_key_fingerprint(bytes(key.public)).hex()
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))
