"""``liaison admin``: the relay's admin REST API from the command line.

Theory of operation
-------------------
Each command is one HTTP request to ``<server>/admin/...`` (made by :mod:`.admin_http`, which
also turns every failure into one ``error: <title>: <detail> (<code>)`` line and a documented exit
status) and prints the answer: aligned, human-readable text by default, the server's JSON with
``--json`` (before or after the command). The server URL and token come from
``--server``/``--token`` or ``LIAISON_SERVER``/``LIAISON_ADMIN_TOKEN``.

This module must not import ``liaison.server``: the client installs without server dependencies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import click

from .admin_http import EXIT_OTHER, AdminCliError, AdminContext
from .render import safe_text

__all__ = ["admin"]


# -- output --------------------------------------------------------------------------------------


def _when(value: Any) -> str:
    if not value:
        return "-"
    moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _yes_no(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _expiry(value: Any) -> str:
    if not value:
        return "-"
    moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    return _when(value) + (" (expired)" if moment <= datetime.now(UTC) else "")


def _text(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _fields(pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        click.echo(f"{label.ljust(width)}  {value}")


def _table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[tuple[str, Callable[[Mapping[str, Any]], str]]],
    empty: str,
) -> None:
    cells = [[render(row) for _, render in columns] for row in rows]
    if not cells:
        click.echo(empty, err=True)
        return
    table = [[header for header, _ in columns], *cells]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        padded = [value.ljust(width) for value, width in zip(line, widths, strict=True)]
        click.echo("  ".join(padded).rstrip())


def _emit(ctx: AdminContext, data: Any, human: Callable[[], None]) -> None:
    if ctx.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        human()


def _col(key: str, render: Callable[[Any], str] = _text) -> Callable[[Mapping[str, Any]], str]:
    return lambda row: render(row.get(key))


# -- commands ------------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def _json_flag(command: F) -> F:
    """Accept ``--json`` after the command too (``liaison admin cell list --json``)."""

    def remember(click_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        state = click_ctx.find_object(AdminContext)
        if value and state is not None:
            state.json = True

    option = click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=remember,
        help="Print the server's JSON answer.",
    )
    return option(command)


pass_admin = click.make_pass_decorator(AdminContext)


class _AdminGroup(click.Group):
    """Prints every :class:`AdminCliError` as its one line and exits with its status.

    An answer of an unexpected shape (a key missing, a wrong type) is reported the same way:
    the CLI never shows a traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdminCliError as exc:
            error = exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"the relay's answer has an unexpected shape ({type(exc).__name__})"
            error = AdminCliError("bad response", detail, "bad_response", EXIT_OTHER)
        click.echo(error.line, err=True)
        raise click.exceptions.Exit(error.exit_code)


@click.group(
    cls=_AdminGroup,
    epilog="""\b
Exit status:
  0  success
  1  any other failure (server error, rate limited, unexpected answer)
  2  usage: bad arguments, no server or token, or input the server rejected
  3  not found: no such cell, channel or token
  4  conflict: already exists, or not allowed in the object's current state
  5  unauthorized: missing, unknown or revoked admin token
  6  relay unreachable: connection refused, timeout, or a proxy's 502/503/504""",
)
@click.option(
    "--server",
    envvar="LIAISON_SERVER",
    show_envvar=True,
    metavar="URL",
    help="The relay's base URL, e.g. https://relay.example:8000.",
)
@click.option(
    "--token",
    envvar="LIAISON_ADMIN_TOKEN",
    show_envvar=True,
    help="An admin API token (prefer the environment variable: flags show in ps).",
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for the relay.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answers.")
@click.pass_context
def admin(
    ctx: click.Context, server: str | None, token: str | None, timeout: float, as_json: bool
) -> None:
    """Administer a relay: cells, channels, admin tokens and the audit log."""
    ctx.obj = AdminContext(server=server, token=token, timeout=timeout, json=as_json)


@admin.group()
def cell() -> None:
    """Provision cells and change their status."""


@cell.command("add")
@click.argument("name")
@_json_flag
@pass_admin
def cell_add(ctx: AdminContext, name: str) -> None:
    """Create cell NAME and print its one-time enrollment code."""
    created = ctx.request("POST", "/cells", {"name": name})

    def human() -> None:
        _fields(
            [
                ("cell", f"{created['name']} ({created['status']})"),
                ("id", created["id"]),
                ("enrollment code", created["enrollment_code"]),
                ("code expires", _when(created["code_expires_at"])),
            ]
        )
        click.echo("Give the code to the cell's operator: it is shown only once.", err=True)

    _emit(ctx, created, human)


@cell.command("code")
@click.argument("name")
@_json_flag
@pass_admin
def cell_code(ctx: AdminContext, name: str) -> None:
    """Issue a fresh enrollment code for pending cell NAME (earlier codes stop working)."""
    issued = ctx.request("POST", f"/cells/{_seg(name)}/codes")

    def human() -> None:
        _fields(
            [
                ("cell", issued["name"]),
                ("enrollment code", issued["enrollment_code"]),
                ("code expires", _when(issued["code_expires_at"])),
            ]
        )

    _emit(ctx, issued, human)


@cell.command("list")
@_json_flag
@pass_admin
def cell_list(ctx: AdminContext) -> None:
    """List every cell: status, online now, last seen, and for pending cells when the
    enrollment code expires (see `cell show` for the precision)."""
    cells = ctx.request("GET", "/cells")
    columns = [
        ("NAME", _col("name")),
        ("STATUS", _col("status")),
        ("ONLINE", _col("online", _yes_no)),
        ("LAST-SEEN", _col("last_seen_at", _when)),
        ("ID", _col("id")),
        ("CREATED", _col("created_at", _when)),
        ("ENROLLED", _col("enrolled_at", _when)),
        ("CODE-EXPIRES", _col("code_expires_at", _expiry)),
    ]
    _emit(ctx, cells, lambda: _table(cells, columns, "no cells"))


@cell.command("show")
@click.argument("name")
@_json_flag
@pass_admin
def cell_show(ctx: AdminContext, name: str) -> None:
    """Show cell NAME: status, online / last seen, key fingerprint, channels, queue depth,
    prekeys left and, while pending, when its enrollment code expires.

    Online and last seen come from the relay's store: link up and down reach it within about
    a second, last seen is at most one presence refresh (60 s) old while the cell is linked,
    and a cell whose relay node died shows offline within 150 s."""
    shown = ctx.request("GET", f"/cells/{_seg(name)}")

    def human() -> None:
        _fields(
            [
                ("name", shown["name"]),
                ("id", shown["id"]),
                ("status", shown["status"]),
                ("created", _when(shown["created_at"])),
                ("enrolled", _when(shown["enrolled_at"])),
                ("status changed", _when(shown["status_changed_at"])),
                ("online", _yes_no(shown.get("online"))),
                ("last seen", _when(shown.get("last_seen_at"))),
                *(
                    [("code expires", _expiry(shown["code_expires_at"]))]
                    if shown.get("code_expires_at")
                    else []
                ),
                ("identity key", _text(shown["identity_fingerprint"])),
                ("channels", _text(shown["channels"])),
                ("queued envelopes", str(shown["queue_depth"])),
                ("one-time prekeys", str(shown["one_time_prekeys"])),
            ]
        )

    _emit(ctx, shown, human)


def _status_command(action: str, help_text: str) -> None:
    @cell.command(action, help=help_text)
    @click.argument("name")
    @_json_flag
    @pass_admin
    def command(ctx: AdminContext, name: str) -> None:
        changed = ctx.request("POST", f"/cells/{_seg(name)}/{action}")
        _emit(ctx, changed, lambda: click.echo(f"cell {changed['name']} is {changed['status']}"))


_status_command("suspend", "Suspend active cell NAME: it is disconnected until resumed.")
_status_command("resume", "Let suspended cell NAME connect again.")
_status_command(
    "revoke", "Revoke cell NAME for good: disconnect it, tell its peers, drop its queue."
)


@admin.group()
def channel() -> None:
    """Pair cells so they may exchange messages."""


@channel.command("add")
@click.argument("a")
@click.argument("b")
@_json_flag
@pass_admin
def channel_add(ctx: AdminContext, a: str, b: str) -> None:
    """Pair cells A and B."""
    made = ctx.request("POST", "/channels", {"a": a, "b": b})
    _emit(ctx, made, lambda: click.echo(f"paired {made['a']} <-> {made['b']}"))


@channel.command("list")
@_json_flag
@pass_admin
def channel_list(ctx: AdminContext) -> None:
    """List every channel."""
    channels = ctx.request("GET", "/channels")
    columns = [("A", _col("a")), ("B", _col("b")), ("CREATED", _col("created_at", _when))]
    _emit(ctx, channels, lambda: _table(channels, columns, "no channels"))


@channel.command("remove")
@click.argument("a")
@click.argument("b")
@_json_flag
@pass_admin
def channel_remove(ctx: AdminContext, a: str, b: str) -> None:
    """Unpair cells A and B (already queued envelopes stay queued)."""
    ctx.request("DELETE", f"/channels/{_seg(a)}/{_seg(b)}")
    _emit(ctx, {"a": a, "b": b, "removed": True}, lambda: click.echo(f"unpaired {a} <-> {b}"))


@admin.group()
def token() -> None:
    """Create, list and revoke admin API tokens."""


@token.command("add")
@click.argument("name")
@_json_flag
@pass_admin
def token_add(ctx: AdminContext, name: str) -> None:
    """Create an admin token named NAME and print it (shown only once)."""
    made = ctx.request("POST", "/tokens", {"name": name})

    def human() -> None:
        _fields([("id", str(made["id"])), ("name", made["name"]), ("token", made["token"])])
        click.echo("Store the token now: the relay keeps only its hash.", err=True)

    _emit(ctx, made, human)


@token.command("list")
@_json_flag
@pass_admin
def token_list(ctx: AdminContext) -> None:
    """List admin tokens (never their text)."""
    tokens = ctx.request("GET", "/tokens")
    columns = [
        ("ID", _col("id")),
        ("NAME", _col("name")),
        ("CREATED", _col("created_at", _when)),
        ("REVOKED", _col("revoked_at", _when)),
    ]
    _emit(ctx, tokens, lambda: _table(tokens, columns, "no admin tokens"))


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@click.option(
    "--force",
    is_flag=True,
    help="Revoke it even if it is the last active admin token (which locks every admin out "
    "until `liaison server admin-token` makes a new one on the relay's host).",
)
@_json_flag
@pass_admin
def token_revoke(ctx: AdminContext, token_id: int, force: bool) -> None:
    """Revoke admin token ID at once. The last active token needs --force (exit 4 without)."""
    gone = ctx.request("DELETE", f"/tokens/{token_id}" + ("?force=true" if force else ""))
    if force:
        click.echo(
            "warning: if that was the last active admin token, only `liaison server "
            "admin-token` on the relay's host can make a new one",
            err=True,
        )
    _emit(ctx, gone, lambda: click.echo(f"revoked admin token {gone['id']} ({gone['name']})"))


@admin.command("audit")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="How many entries, newest first.",
)
@click.option(
    "--action",
    metavar="ACTION",
    default=None,
    help="Only this action (cell.revoke), or a family (cell.*, admin.*).",
)
@_json_flag
@pass_admin
def audit(ctx: AdminContext, limit: int, action: str | None) -> None:
    """Show the newest audit log entries (times in UTC; --json keeps the raw *_ms fields)."""
    query = f"/audit?limit={limit}" + (f"&action={quote(action, safe='')}" if action else "")
    entries = ctx.request("GET", query)

    def detail(value: Any) -> str:
        items = value.items() if isinstance(value, dict) else []
        return " ".join(_detail_item(k, v) for k, v in sorted(items)) or "-"

    columns = [
        ("AT", _col("at", _when)),
        ("ACTOR", _col("actor", lambda v: safe_text(_text(v)))),
        ("ACTION", _col("action")),
        ("TARGET", _col("target", lambda v: safe_text(_text(v)))),
        ("DETAIL", _col("detail", detail)),
    ]
    _emit(ctx, entries, lambda: _table(entries, columns, "no audit entries"))


def _detail_item(key: str, value: Any) -> str:
    """``key=value`` of an audit detail; a ``*_ms`` time as ``key=<UTC ISO time>``."""
    if key.endswith("_ms") and isinstance(value, int) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value / 1000, tz=UTC)
        return f"{key[:-3]}={moment.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return f"{key}={safe_text(str(value))}"


def _seg(value: str) -> str:
    """``value`` as one URL path segment (dots escaped, so ``..`` cannot climb the path)."""
    return quote(value, safe="").replace(".", "%2E")
