"""The online work of the ``liaison cell`` commands, run here or in the home's link holder.

Each operation is ``async def op(cell, params) -> result`` with JSON-able ``params`` and
``result``, so it runs the same on a cell this process opened or, handed over through
``<home>/cell.sock`` (``local_ipc``), on the cell of the process that holds the home's link
(a running ``listen``, another command, an SDK program). The commands render the result the
same way either way, so their output does not depend on where the work ran.

:func:`run_op` is the CLI's entry: with a link holder it first checks locally that the state
opens with the passphrase given (so a sealed home still needs it), then hands the request
over; without one it opens the cell itself (becoming the holder for the command's duration)
and does not wait long for the relay: a send is stored and reported ``queued``, the peer list
comes from local state marked ``stale``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import local_ipc
from .errors import ClientError, LinkHeld, RelayUnreachable
from .state import Store

if TYPE_CHECKING:
    from .cell import Cell
    from .core import CellCore

__all__ = ["OPS", "REACH_TIMEOUT", "dispatch", "run_op"]

REACH_TIMEOUT = 5.0
"""Seconds a command waits for the relay before working from local state (``queued``,
``stale``); a refused connection ends the wait at once."""
HOLDER_TIMEOUT = 30.0
"""Seconds a command waits for a starting link holder to answer on its socket."""
FLUSH_TIMEOUT = 2.0
"""Seconds a command that opened the link itself gives the relay to take its receipts."""

Op = Callable[["Cell", dict[str, Any]], Awaitable[Any]]


async def _fresh_peers(cell: Cell) -> bool:
    """Refresh the peer list from the relay if it answers soon; whether it did."""
    if await cell.wait_link_state(REACH_TIMEOUT) != "online":
        return False
    try:
        async with asyncio.timeout(REACH_TIMEOUT):
            await cell.refresh_peers()
    except (TimeoutError, RelayUnreachable):
        return False
    return True


async def op_send(cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
    """Store and send; the status to print, and the CLI's error to exit with (``problem``)
    when a status asked for was not reached or the message failed (``cell_io.outcome``).
    Without ``--wait`` and with the relay not reached soon, ``queued`` at once."""
    from . import cell_io

    body: str | bytes = params["text"] if "text" in params else bytes.fromhex(params["hex"])
    wait: str | None = params.get("wait")
    state = await cell.wait_link_state(REACH_TIMEOUT)
    message_id = await cell.send(
        params["peer"], body, precedence=params["precedence"], ttl=int(params["ttl"]),
        marking=params["marking"], file_name=params.get("file_name"),
    )  # fmt: skip
    if wait is None and not (state == "online" and cell.online):
        return {"message_id": message_id, "status": await cell.status(message_id)}
    status, problem = await cell_io.outcome(cell, message_id, wait, float(params["timeout"]))
    result: dict[str, Any] = {"message_id": message_id, "status": status}
    if problem is not None:
        result["problem"] = {"code": problem.code, "message": cell_io.cli_text(problem),
                             "exit_code": problem.exit_code}  # fmt: skip
    return result


async def op_peers(cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
    fresh = await _fresh_peers(cell)
    return {"peers": [asdict(p) for p in cell.peers()], "stale": not fresh}


async def op_safety_number(cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
    """The pinned key's number, and the changed key's if one waits (``cell_io.Numbers``)."""
    from . import cell_io

    fresh = await _fresh_peers(cell)
    return {"numbers": asdict(cell_io.numbers(cell, params["peer"])), "stale": not fresh}


async def op_verify(cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
    """Verify (``safety_number``: the number compared, checked), or accept a changed key:
    with its new number; with ``yes``, the number found (returned as ``shown``); with
    neither, only the numbers (``numbers``) for the CLI to ask its operator."""
    from . import cell_io

    fresh = await _fresh_peers(cell)
    peer, given = params["peer"], params.get("safety_number")
    accept = bool(params["accept_new_key"])
    found = cell_io.numbers(cell, peer)
    result: dict[str, Any] = {"stale": not fresh}
    if accept and given is None and found.new is not None:
        if not params.get("yes"):
            return result | {"numbers": asdict(found)}
        result["shown"] = asdict(found)
        given = found.new
    verified = await cell.verify(peer, accept_new_key=accept, safety_number=given)
    return result | {"peer": asdict(verified)}


OPS: dict[str, Op] = {
    "send": op_send,
    "peers": op_peers,
    "safety_number": op_safety_number,
    "verify": op_verify,
}


async def dispatch(cell: CellCore, op: str, params: dict[str, Any]) -> Any:
    """Run the operation ``op`` on ``cell`` (a request handed over by a sibling process)."""
    from .cell import Cell

    run = OPS.get(op)
    if run is None or not isinstance(cell, Cell):
        raise ValueError(f"unknown hand-off operation {op!r}")
    return await run(cell, params)


async def run_op(
    home: Path, passphrase: str | None, op: str, params: dict[str, Any], **options: Any
) -> Any:
    """Run ``op`` in this home's link holder if there is one, else on a cell opened here."""
    from .cell import Cell

    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLDER_TIMEOUT
    pause = 0.05
    while True:
        connection = await local_ipc.connect(home)
        if connection is not None:
            try:  # the state must open with what this command was given
                await asyncio.to_thread(_check_state, home, passphrase)
            except BaseException:
                connection[1].close()
                raise
            return await local_ipc.exchange(connection, op, params)
        cell = Cell.open(home, passphrase, wait_connected=None, linger=0, **options)
        try:
            await cell.start()
        except LinkHeld:  # a holder is starting: its socket answers in a moment
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(0.5, pause * 2)
            continue
        try:
            result = await OPS[op](cell, params)
            if cell.online:
                with contextlib.suppress(ClientError):
                    await cell.flush(FLUSH_TIMEOUT)
            return result
        finally:
            await cell.aclose()


def _check_state(home: Path, passphrase: str | None) -> None:
    Store.open(home, passphrase).close()
