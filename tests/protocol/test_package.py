"""Package-level rules: a pure protocol core and an explicit public API."""

from __future__ import annotations

import subprocess
import sys

import liaison.protocol

FORBIDDEN = ("asyncio", "socket", "fastapi", "sqlalchemy", "websockets", "uvicorn", "httpx")


def test_protocol_imports_no_io_modules() -> None:
    """``import liaison.protocol`` (every submodule) pulls in no asyncio, socket, FastAPI,
    SQLAlchemy or websockets module — checked in a fresh interpreter."""
    code = (
        "import sys, pkgutil, importlib, liaison.protocol as p\n"
        "for m in pkgutil.iter_modules(p.__path__):\n"
        "    importlib.import_module(f'{p.__name__}.{m.name}')\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_public_api_is_explicit() -> None:
    """``liaison.protocol.__all__`` lists exactly the lazily exported names, and each resolves
    to the object of the module that defines it."""
    import importlib

    exports = liaison.protocol._EXPORTS
    assert liaison.protocol.__all__ == sorted(exports)
    for name, module in exports.items():
        defining = importlib.import_module(f"liaison.protocol.{module}")
        assert getattr(liaison.protocol, name) is getattr(defining, name)
        assert name in defining.__all__


def test_relay_facing_modules_do_not_import_the_ratchet() -> None:
    """The relay parses envelopes, frames and bundles; none of those modules may pull in the
    ratchet or session code (the relay stays ignorant of end-to-end sessions)."""
    code = (
        "import sys\n"
        "import liaison.protocol.envelope, liaison.protocol.frames, liaison.protocol.bundle\n"
        "import liaison.protocol.link, liaison.protocol.enrollment\n"
        "print(','.join(n for n in ('liaison.protocol.ratchet', 'liaison.protocol.session')"
        " if n in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_envelope_and_ratchet_agree_on_the_header_size() -> None:
    from liaison.protocol import envelope, ratchet

    assert envelope.HEADER_CIPHERTEXT_LEN == ratchet.HEADER_CIPHERTEXT_LEN
