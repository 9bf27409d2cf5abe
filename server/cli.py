"""``liaison server ...``: run the relay, migrate its database, issue admin tokens."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from .settings import Settings

__all__ = ["server"]

EXIT_USAGE = 2
EXIT_BIND = 3
EXIT_SCHEMA = 4
PORT_RANGE = click.IntRange(1, 65535)


def _settings(database: str | None, key_file: Path | None, bus: str | None = None) -> Settings:
    overrides: dict[str, object] = {}
    if bus:
        overrides["bus_url"] = bus
    if database:
        overrides["database_url"] = database
    if key_file:
        overrides["key_file"] = key_file
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:  # a bad LIAISON_* variable (or flag): one line, exit 2
        first = exc.errors()[0]
        name = "LIAISON_" + "_".join(str(part) for part in first["loc"]).upper()
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        # The message only, never the value: a database URL may hold a password.
        click.echo(f"liaison: invalid setting {name}: {first['msg']}{more}", err=True)
        sys.exit(2)
    _check_database_url(settings.database_url)
    return settings


def _check_database_url(url: str) -> None:
    """A URL SQLAlchemy cannot parse, or of a driver that is not installed: one line, exit 2
    (never echoing the URL, which may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        reason = "unknown database driver" if isinstance(exc, NoSuchModuleError) else "malformed"
        click.echo(
            f"liaison: invalid database URL (--database / LIAISON_DATABASE_URL): {reason}, "
            "e.g. sqlite+aiosqlite:///./liaison.db",
            err=True,
        )
        sys.exit(2)


database_option = click.option(
    "--database",
    envvar="LIAISON_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL [default: sqlite+aiosqlite:///./liaison.db; env LIAISON_DATABASE_URL]",
)


class _ServerGroup(click.Group):
    """Reports a bad argument or setting of a ``server`` command as one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            click.echo(f"liaison: {exc.format_message()}", err=True)
            raise click.exceptions.Exit(EXIT_USAGE) from None


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)``, as uvicorn would bind it (``SO_REUSEADDR``;
    IPv6 when the host has a colon). Raises ``OSError`` if the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@click.group(
    cls=_ServerGroup,
    epilog="""\b
Exit status of server commands:
  0  success (run: stopped cleanly)
  2  usage: a bad argument or setting (e.g. --port outside 1-65535)
  3  run: the address cannot be bound (port in use, no permission)
  4  the database schema does not match this version (run: liaison server db upgrade)""",
)
def server() -> None:
    """Run and administer a relay (needs the [server] extra)."""


@server.command("run")
@click.option("--host", envvar="LIAISON_HOST", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    envvar="LIAISON_PORT",
    default=8000,
    show_default=True,
    show_envvar=True,
    type=PORT_RANGE,
    help="TCP port, 1-65535.",
)
@database_option
@click.option(
    "--key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="relay static key file [default: ./liaison-relay.key]; every node of a cluster uses "
    "the same key",
)
@click.option(
    "--bus",
    envvar="LIAISON_BUS_URL",
    default=None,
    help="cross-node bus: memory:// (one node), redis://HOST:PORT or nats://HOST:PORT "
    "[default: memory://; env LIAISON_BUS_URL]",
)
def run(host: str, port: int, database: str | None, key_file: Path | None, bus: str | None) -> None:
    """Start the relay. On first start: create the relay key, migrate an empty database and
    print the relay key fingerprint and a first admin token.

    The address is bound before anything else happens: with the port in use (or not allowed)
    the command says so and exits 3, before it creates a key or mints the first admin token."""
    from .bus import BusError, bus_kind

    settings = _settings(database, key_file, bus)
    try:
        bus_kind(settings.bus_url)
    except BusError as exc:
        click.echo(f"liaison: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        listener = bind_listener(host, port)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        click.echo(f"liaison: cannot listen on {host}:{port}: {reason}", err=True)
        sys.exit(EXIT_BIND)
    try:
        _serve(settings, listener, host, port)
    finally:
        listener.close()


def _serve(settings: Settings, listener: socket.socket, host: str, port: int) -> None:
    import uvicorn

    from liaison.protocol.noise import MAX_MESSAGE_LEN

    from .admin_auth import count_admin_tokens, create_admin_token
    from .app import create_app
    from .db import create_engine
    from .logs import log_config
    from .migrate import SchemaMismatch, check_schema, current_revision_async, upgrade_async
    from .relay_key import fingerprint_text, load_or_create

    key, created = load_or_create(settings.key_file)

    async def prepare() -> str | None:
        engine = create_engine(settings.database_url)
        try:
            if await current_revision_async(engine) is None:
                await upgrade_async(engine)  # a new, empty database: create the schema
            await check_schema(engine)
            if await count_admin_tokens(engine, include_revoked=True) == 0:
                return await create_admin_token(engine, "first-admin")
            return None
        finally:
            await engine.dispose()

    try:
        token = asyncio.run(prepare())
    except SchemaMismatch as exc:
        click.echo(f"liaison: {exc}", err=True)
        sys.exit(EXIT_SCHEMA)
    click.echo(f"relay key fingerprint: {fingerprint_text(key)}" + (" (new)" if created else ""))
    if token is not None:
        click.echo("first start: keep this admin token, it is shown only once")
        click.echo(f"admin token: {token}")
    sys.stdout.flush()
    app = create_app(settings, relay_key=key)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        # A link message is one Noise transport message: never more than 65535 bytes, so an
        # unauthenticated peer cannot make the relay buffer uvicorn's default 16 MiB.
        ws_max_size=MAX_MESSAGE_LEN,
        limit_concurrency=settings.max_connections,
        log_config=log_config(),
        # Forwarding headers only from the proxies the operator names (uvicorn would otherwise
        # believe X-Forwarded-For from 127.0.0.1, letting any local client pick its address).
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        log_level="info",
        access_log=False,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # uvicorn logs this line itself only when it binds the socket
                shown = f"[{host}]" if ":" in host else host
                logging.getLogger("uvicorn.error").info(
                    "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port
                )

    Server(config).run(sockets=[listener])


@server.group("db")
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@database_option
def db_upgrade(database: str | None) -> None:
    """Apply all migrations up to the code's head."""
    from .migrate import current_revision, head_revision, upgrade

    settings = _settings(database, None)
    upgrade(settings.database_url)
    click.echo(f"database at {current_revision(settings.database_url)} (head {head_revision()})")


@server.command("admin-token")
@database_option
@click.option("--name", default="script", show_default=True, help="a label for the token")
def admin_token(database: str | None, name: str) -> None:
    """Print a new admin API token (for scripts)."""
    from .admin_auth import create_admin_token
    from .db import create_engine
    from .migrate import SchemaMismatch, check_schema

    settings = _settings(database, None)

    async def make() -> str:
        engine = create_engine(settings.database_url)
        try:
            await check_schema(engine)
            return await create_admin_token(engine, name)
        finally:
            await engine.dispose()

    try:
        click.echo(asyncio.run(make()))
    except SchemaMismatch as exc:
        click.echo(f"liaison: {exc}", err=True)
        sys.exit(EXIT_SCHEMA)
