"""``liaison cell listen`` as the one receiving process of a home, through relay outages.

``receiver`` takes the home's receive lock (a second ``listen`` gets ``already_listening``,
28), then the link: if a short-lived command holds it, listen says so once and waits until it
is released (commands end within their own timeouts; an SDK program that keeps the link keeps
listen waiting: run such a program with ``connect=False`` beside listen, or stop it). Listen
then holds the link and serves the other commands of the home (``local_ipc``). It never exits
because the relay is down: the link retries with backoff (capped at ``LISTEN_BACKOFF``) and
``watch_link`` prints ``relay unreachable, retrying`` once per outage and ``connected to the
relay again`` when it is over (stderr; stdout stays the messages).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import click

from . import local_ipc
from .cell import Cell
from .errors import ClientError, LinkHeld

__all__ = ["LISTEN_BACKOFF", "STALE_NOTE", "local_note", "receiver", "watch_link"]

LISTEN_BACKOFF = (0.5, 5.0)
"""``(base, cap)`` seconds between link attempts of ``listen``: it is back soon after an
outage."""
FIRST_LINK_TIMEOUT = 10.0
STALE_NOTE = "note: the relay was not reached; this is from local state and may be stale"
LOCAL_NOTE = "note: from local state (no process of this cell is connected); it may be stale"


def local_note(home: Path) -> None:
    """Say on stderr that local-only output may be stale, unless a link holder keeps the
    state current."""
    if not local_ipc.holder_running(home):
        click.echo(LOCAL_NOTE, err=True)


@contextlib.asynccontextmanager
async def receiver(home: Path, passphrase: str | None) -> AsyncIterator[Cell]:
    """The home's cell, opened as its only receiver and link holder (see the module)."""
    with local_ipc.receive_lock(home):
        told = False
        while True:
            opened = Cell.open(home, passphrase, wait_connected=None, backoff=LISTEN_BACKOFF)
            try:
                await opened.start()
                break
            except LinkHeld:
                if not told:
                    click.echo("waiting for another process of this home to release the link",
                               err=True)  # fmt: skip
                    told = True
                await asyncio.sleep(0.1)
        # The first link's bring-up (the peer list) before any message is shown, so senders
        # have their names; an unreachable relay ends this wait at once.
        with contextlib.suppress(ClientError):
            await opened.wait_link_state(FIRST_LINK_TIMEOUT)
        watcher = asyncio.create_task(watch_link(opened), name="liaison-listen-watch")
        try:
            yield opened
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await opened.aclose()


async def watch_link(opened: Cell) -> None:
    """Print one line when the relay becomes unreachable and one when it is back."""
    down = False
    while True:
        waiter = opened._changed.waiter()
        state = opened.link_state
        if state == "unreachable" and not down:
            click.echo("relay unreachable, retrying", err=True)
            down = True
        elif state == "online" and down:
            click.echo("connected to the relay again", err=True)
            down = False
        await waiter.wait()
