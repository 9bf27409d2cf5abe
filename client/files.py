"""Small files in one message (content type FILE, SPEC.md §9.4), and saving received ones.

A FILE payload is ``name length N (u16, 1..255) ‖ name (N bytes, UTF-8) ‖ the file's bytes``,
so one envelope carries at most :func:`max_file_bytes` bytes of file (about 61 KB; larger,
chunked attachments are a separate feature). The name is chosen by the sender and is
**untrusted**: :func:`safe_file_name` reduces it to one harmless path component, and
:func:`save_file` writes the bytes into a directory without ever leaving it, following a
symlink or overwriting anything.
"""

from __future__ import annotations

import os
import struct
import unicodedata
from pathlib import Path

from liaison.protocol.envelope import (
    BODY_OVERHEAD,
    MAX_ENVELOPE,
    EnvelopeKind,
    body_capacity,
)

__all__ = [
    "MAX_FILE_NAME",
    "MAX_SAVED_NAME",
    "decode_file",
    "encode_file",
    "max_file_bytes",
    "max_payload",
    "safe_file_name",
    "save_file",
]

MAX_FILE_NAME = 255
"""Bytes of UTF-8 a FILE payload's name may have."""
MAX_SAVED_NAME = 120
"""Bytes of UTF-8 a saved file's name is cut to (leaving room for a ``-N`` suffix)."""
MAX_SUFFIX = 10_000
_NAME_LEN = struct.Struct(">H")


def max_payload(marking: str = "", *, first: bool = False) -> int:
    """The largest payload one envelope holds with ``marking``; ``first``: the first
    message of a new session, which also carries the session setup (SPEC.md §9.2)."""
    kind = EnvelopeKind.PREKEY if first else EnvelopeKind.MESSAGE
    return body_capacity(kind, MAX_ENVELOPE) - BODY_OVERHEAD - len(marking.encode())


def max_file_bytes(name: str, marking: str = "", *, first: bool = False) -> int:
    """The largest file (bytes) one message holds under ``name`` with ``marking``."""
    return max_payload(marking, first=first) - _NAME_LEN.size - len(name.encode())


def encode_file(name: str, data: bytes) -> bytes:
    """The FILE payload of ``data`` named ``name`` (``ValueError`` for an empty name, one
    over 255 bytes of UTF-8, or one with a NUL or a ``/``: send the last path component)."""
    try:
        raw = name.encode()
    except UnicodeEncodeError:
        raise ValueError("the file name is not encodable as UTF-8") from None
    if not 1 <= len(raw) <= MAX_FILE_NAME:
        raise ValueError(f"a file name has 1..{MAX_FILE_NAME} bytes of UTF-8")
    if "\x00" in name or "/" in name:
        raise ValueError("a file name is one path component (no '/' or NUL)")
    return _NAME_LEN.pack(len(raw)) + raw + data


def decode_file(payload: bytes) -> tuple[str, bytes]:
    """``(name, data)`` of a FILE payload; ``ValueError`` if it breaks SPEC.md §9.4. The
    name is the sender's, unchecked beyond that: untrusted."""
    if len(payload) < _NAME_LEN.size:
        raise ValueError("a FILE payload starts with the name's length")
    (length,) = _NAME_LEN.unpack_from(payload)
    end = _NAME_LEN.size + length
    if not 1 <= length <= MAX_FILE_NAME or end > len(payload):
        raise ValueError("the FILE name length is out of range")
    try:
        name = payload[_NAME_LEN.size : end].decode()
    except UnicodeDecodeError:
        raise ValueError("the FILE name is not valid UTF-8") from None
    return name, payload[end:]


def _harmless(char: str) -> bool:
    category = unicodedata.category(char)
    # C*: controls, format (bidi, zero-width), surrogates, private use, unassigned;
    # Z* other than a plain space: line/paragraph separators and odd spaces.
    return not (category[0] == "C" or (category[0] == "Z" and char != " "))


def safe_file_name(name: str | None, fallback: str) -> str:
    """One harmless path component for an untrusted ``name``: NFC-normalised; every control,
    format (bidi, zero-width) or separator character and every ``/`` or ``\\`` becomes
    ``_``; leading dots and spaces (hidden files, ``.``, ``..``) and trailing dots and spaces
    are dropped; cut to :data:`MAX_SAVED_NAME` bytes keeping a short extension. An empty
    result (or no name) gives ``fallback`` (which must itself be safe)."""
    text = unicodedata.normalize("NFC", name or "")
    text = "".join(c if _harmless(c) and c not in "/\\" else "_" for c in text)
    text = text.lstrip(". ").rstrip(". ")
    if len(text.encode()) > MAX_SAVED_NAME:
        stem, dot, ext = text.rpartition(".")
        ext = f".{ext}" if dot and stem and len(ext.encode()) <= 16 else ""
        stem = text[: len(text) - len(ext)] if ext else text
        budget = MAX_SAVED_NAME - len(ext.encode())
        raw = stem.encode()[:budget].decode(errors="ignore").rstrip(". ")
        text = raw + ext
    return text or fallback


def _numbered(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    if dot and stem:
        return f"{stem}-{n}.{ext}"
    return f"{name}-{n}"


def save_file(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as a new file in ``directory`` (created 0700 if missing) under the
    safe name ``name`` (from :func:`safe_file_name`), or ``name-1.ext``, ``name-2.ext``, ...
    if that exists; returns its path. The file is created with ``O_CREAT | O_EXCL |
    O_NOFOLLOW`` relative to the opened directory, mode 0600, and synced before this
    returns: nothing is overwritten, no symlink is followed, nothing lands outside
    ``directory``. ``OSError`` if it cannot be written (a partial file is removed)."""
    if "/" in name or name in ("", ".", "..") or "\x00" in name:
        raise ValueError("save_file takes one safe path component (safe_file_name)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        for n in range(MAX_SUFFIX):
            candidate = name if n == 0 else _numbered(name, n)
            try:
                fd = os.open(candidate, flags, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd, "wb") as sink:
                    sink.write(data)
                    sink.flush()
                    os.fsync(sink.fileno())
            except BaseException:
                os.unlink(candidate, dir_fd=dir_fd)
                raise
            os.fsync(dir_fd)
            return directory / candidate
        raise FileExistsError(f"{MAX_SUFFIX} files named like {name!r} exist in {directory}")
    finally:
        os.close(dir_fd)
