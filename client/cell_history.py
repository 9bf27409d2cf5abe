"""``liaison cell history`` and ``liaison cell inbox``: what was received and sent, from local
state only (they work with the relay down and beside a running ``listen``).

``history [PEER] [--since WHEN] [--search TEXT] [--limit N]`` lists received *and* sent
messages, oldest first; ``inbox`` is the same with received messages only. A sent message's
text is kept in the outbox (sealed at rest like inbox bodies; sends from before this version
show no body). ``--json`` prints one JSON list, exact (bodies as they are; a file body in hex
with ``body_encoding: hex``); the human output shows everything a peer controls through
``safe_text``.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import click

from . import tables
from .cell import Cell
from .cell_cli import Context, _dump, cell
from .listening import local_note
from .models import content_type_name, precedence_name, utc
from .render import safe_text

__all__ = ["history_entries", "parse_since"]

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``30m``/``2h``/``7d``/``1w`` ago, or an ISO 8601 date or time (UTC unless it says)."""
    now = time.time() if now is None else now
    match = _RELATIVE.match(text.strip().lower())
    if match:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            "give an ISO 8601 date/time (2026-12-01, 2026-12-01T08:00) or 30m, 2h, 7d, 1w"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _body(content_type: int | None, raw: bytes | None) -> tuple[str | None, str | None]:
    """The body as shown in JSON, and its encoding (``hex`` for a file)."""
    if raw is None:
        return None, None
    if content_type in (1, 2):  # TEXT, JSON
        return raw.decode(errors="replace"), None
    return raw.hex(), "hex"


def history_entries(
    opened: Cell, peer: str | None, since: float | None, search: str | None,
    limit: int | None, received_only: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """The matching messages, oldest first (the last ``limit`` of them)."""
    store = opened._require_store()
    peer_id = None
    labels = {row.cell_id: row.label for row in tables.peer_rows(store)}
    if peer is not None:
        found = tables.peer_by_name(store, peer)
        if found is None and len(peer) == 32:
            try:
                found = tables.peer_by_id(store, bytes.fromhex(peer))
            except ValueError:
                found = None
        if found is None:
            from .errors import UnknownPeer

            raise UnknownPeer(peer)
        peer_id = found.cell_id
    out: list[dict[str, Any]] = []
    for row in tables.inbox_rows(store, peer_id, -1):
        at = row.received_at_ms / 1000
        if since is not None and at < since:
            continue
        body, encoding = _body(row.content_type, row.body)
        out.append({"direction": "received", "id": row.message_id.hex(),
                    "peer": labels.get(row.sender, row.sender.hex()), "peer_id": row.sender.hex(),
                    "at": utc(at), "precedence": precedence_name(row.precedence),
                    "content_type": content_type_name(row.content_type), "marking": row.marking,
                    "body": body, "body_encoding": encoding,
                    "status": "read" if row.read else "unread", "error": row.error})  # fmt: skip
    if not received_only:
        for (
            _rid,
            mid,
            to,
            status,
            prec,
            ctype,
            created,
            raw,
            marking,
            error,
        ) in tables.outbox_sent_rows(store, peer_id, since, None):
            body, encoding = _body(int(ctype), raw)
            out.append({"direction": "sent", "id": bytes(mid).hex(),
                        "peer": labels.get(bytes(to), bytes(to).hex()), "peer_id": bytes(to).hex(),
                        "at": utc(created), "precedence": precedence_name(prec),
                        "content_type": content_type_name(ctype), "marking": marking,
                        "body": body, "body_encoding": encoding, "status": status,
                        "error": error})  # fmt: skip
    if search:
        needle = search.casefold()
        out = [e for e in out
               if needle in (e["body"] or "").casefold() if e["body_encoding"] is None
               or needle in e["marking"].casefold()]  # fmt: skip
    out.sort(key=lambda e: e["at"])
    return out if limit is None else out[-limit:]


def _line(entry: dict[str, Any]) -> str:
    when = entry["at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    arrow = "<-" if entry["direction"] == "received" else "->"
    marking = f" [{safe_text(entry['marking'])}]" if entry["marking"] else ""
    head = (f"{when} {arrow} {safe_text(entry['peer']):<20} {entry['precedence'].upper():<9} "
            f"{entry['id'][:8]} {entry['status']}{marking}:")  # fmt: skip
    if entry["error"] and entry["direction"] == "received":
        return f"{head} (could not be opened: {safe_text(entry['error'])})"
    if entry["body"] is None:
        return f"{head} (text not kept)"
    if entry["body_encoding"] == "hex":
        return f"{head} ({entry['content_type']}, {len(entry['body']) // 2} bytes)"
    return f"{head} {safe_text(entry['body'])}"


def _show(ctx: Context, peer: str | None, since: str | None, search: str | None, limit: int,
          received_only: bool) -> None:  # fmt: skip
    cutoff = None if since is None else parse_since(since)

    async def go(passphrase: str | None) -> list[dict[str, Any]]:
        async with Cell.open(ctx.home, passphrase, connect=False) as opened:
            return history_entries(opened, peer, cutoff, search, limit, received_only)

    entries = ctx.run(go)
    local_note(ctx.home)
    if ctx.json:
        click.echo(_dump(entries))
        return
    for entry in entries:
        click.echo(_line(entry))


_since = click.option("--since", default=None, help="only after this: 2h, 7d, 2026-12-01T08:00")
_search = click.option("--search", default=None, help="only messages whose text contains this")
_limit = click.option("--limit", type=click.IntRange(1), default=50, show_default=True,
                      help="the last N matching messages")  # fmt: skip


@cell.command()
@click.argument("peer", required=False)
@_since
@_search
@_limit
@click.pass_obj
def history(ctx: Context, peer: str | None, since: str | None, search: str | None,
            limit: int) -> None:  # fmt: skip
    """Messages received and sent (with PEER, or all), oldest first, from local state."""
    _show(ctx, peer, since, search, limit, received_only=False)


@cell.command()
@click.argument("peer", required=False)
@_since
@_search
@_limit
@click.pass_obj
def inbox(ctx: Context, peer: str | None, since: str | None, search: str | None,
          limit: int) -> None:  # fmt: skip
    """Messages received (from PEER, or all), oldest first, from local state: ``history``
    without the sent ones."""
    _show(ctx, peer, since, search, limit, received_only=True)
