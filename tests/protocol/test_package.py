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
    """The names exported by ``liaison.protocol`` are exactly those in ``__all__``."""
    exported = {name for name in vars(liaison.protocol) if not name.startswith("_")}
    submodules = {"enrollment", "envelope", "errors", "fingerprint", "frames", "keys", "link",
                  "noise",
                  "primitives", "ratchet", "session"}  # fmt: skip
    assert exported - submodules == set(liaison.protocol.__all__)
    for name in liaison.protocol.__all__:
        assert getattr(liaison.protocol, name) is not None
