"""Small helpers shared by the tests that drive SDK cells."""

from __future__ import annotations

import asyncio
import contextlib

from liaison.client import Cell, Message

__all__ = ["take"]


async def take(cell: Cell, count: int, timeout: float = 10.0) -> list[Message]:
    """The next ``count`` messages ``cell.messages()`` yields (``TimeoutError`` if they do not
    all come within ``timeout`` seconds)."""
    out: list[Message] = []
    async with asyncio.timeout(timeout), contextlib.aclosing(cell.messages()) as stream:
        async for message in stream:
            out.append(message)
            if len(out) == count:
                break
    return out
