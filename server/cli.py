"""``liaison server ...``: run the relay, migrate its database, issue admin tokens."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from .settings import Settings

__all__ = ["server"]

EXIT_SCHEMA = 4


def _settings(database: str | None, key_file: Path | None, bus: str | None = None) -> Settings:
    overrides: dict[str, object] = {}
    if bus:
        overrides["bus_url"] = bus
    if database:
        overrides["database_url"] = database
    if key_file:
        overrides["key_file"] = key_file
    return Settings(**overrides)  # type: ignore[arg-type]


database_option = click.option(
    "--database",
    envvar="LIAISON_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL [default: sqlite+aiosqlite:///./liaison.db; env LIAISON_DATABASE_URL]",
)


@click.group()
def server() -> None:
    """Run and administer a relay (needs the [server] extra)."""


@server.command("run")
@click.option("--host", envvar="LIAISON_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="LIAISON_PORT", default=8000, show_default=True, type=int)
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
    print the relay key fingerprint and a first admin token."""
    import uvicorn

    from liaison.protocol.noise import MAX_MESSAGE_LEN

    from .admin_auth import count_admin_tokens, create_admin_token
    from .app import create_app
    from .bus import BusError, bus_kind
    from .db import create_engine
    from .migrate import SchemaMismatch, check_schema, current_revision_async, upgrade_async
    from .relay_key import fingerprint_text, load_or_create

    settings = _settings(database, key_file, bus)
    try:
        bus_kind(settings.bus_url)
    except BusError as exc:
        click.echo(f"liaison: {exc}", err=True)
        sys.exit(2)
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
    uvicorn.run(
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
        # Forwarding headers only from the proxies the operator names (uvicorn would otherwise
        # believe X-Forwarded-For from 127.0.0.1, letting any local client pick its address).
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        log_level="info",
        access_log=False,
    )


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
