"""The SDK's package rules: installable with the base dependencies, an explicit public API."""

from __future__ import annotations

import subprocess
import sys

import liaison.client

SDK_MODULES = ("cell", "core", "enroll", "errors", "link", "models", "outgoing", "receive",
               "runner", "state", "tables", "transport")  # fmt: skip
SERVER_ONLY = ("liaison.server", "fastapi", "starlette", "sqlalchemy", "uvicorn", "alembic",
               "aiosqlite", "asyncpg", "pydantic_settings")  # fmt: skip


def test_the_sdk_imports_nothing_of_the_server() -> None:
    """``liaison.client`` and every SDK module load without the relay or its dependencies
    (checked in a fresh interpreter)."""
    code = (
        "import sys, importlib\n"
        "import liaison.client\n"
        f"for name in {SDK_MODULES!r}:\n"
        "    importlib.import_module('liaison.client.' + name)\n"
        f"bad = sorted(n for n in sys.modules if n.startswith({SERVER_ONLY!r}))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == ""


def test_public_api() -> None:
    assert liaison.client.__all__ == sorted(liaison.client.__all__)
    for name in liaison.client.__all__:
        assert getattr(liaison.client, name) is not None
    errors = [getattr(liaison.client, n) for n in liaison.client.__all__]
    codes = [
        e.code for e in errors if isinstance(e, type) and issubclass(e, liaison.client.ClientError)
    ]
    assert len(codes) == len(set(codes))  # every error has its own stable code
