"""Relay settings: ``LIAISON_*`` environment variables, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every limit the relay enforces lives here, with its documented default."""

    model_config = SettingsConfigDict(env_prefix="LIAISON_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./liaison.db"
    host: str = "127.0.0.1"
    port: int = 8000  # `server run --port` / LIAISON_PORT is checked by the CLI (1-65535)
    key_file: Path = Path("./liaison-relay.key")
    # Several nodes on one PostgreSQL: the bus carries cross-node hints (bus.py); every
    # ``bus_fallback_seconds`` each node re-reads the store for what a lost hint would have said.
    bus_url: str = "memory://"
    bus_fallback_seconds: float = Field(default=1.0, gt=0, le=60)
    # The Redis channel / NATS subject: deployments sharing one bus server use distinct ones.
    bus_channel: str = Field(default="liaison.events", pattern=r"^[A-Za-z0-9_.-]{1,100}$")

    # Store-and-forward limits (SPEC.md §11).
    max_envelope_bytes: int = Field(default=65280, ge=4096, le=65280)
    # At most 1000: a recipient refuses to skip more than 1000 message keys, and precedence
    # delivery lets a late envelope overtake every earlier one of its chain, so no more than
    # 1000 may wait for one recipient (which also bounds each sender -> recipient pair,
    # SPEC.md M-REL-7).
    queue_max_messages: int = Field(default=1000, ge=1, le=1000)
    queue_max_bytes: int = Field(default=256 * 1024 * 1024, ge=65280)
    max_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    expiry_sweep_seconds: float = Field(default=5.0, gt=0)

    # Group commit: the writer takes whatever is queued, up to this many, per transaction.
    commit_batch_max: int = Field(default=512, ge=1)

    # Link limits.
    handshake_timeout_seconds: float = Field(default=10.0, gt=0)
    idle_timeout_seconds: float = Field(default=120.0, gt=0)
    ping_interval_seconds: float = Field(default=30.0, gt=0)
    max_unauthenticated: int = Field(default=1024, ge=1)
    # Handshake admission per source (an IPv4 address or an IPv6 /64; server/handshake_guard.py,
    # SPEC.md §6.4): slots one source may hold in the handshake at once (more for a source a
    # cell authenticated from within known_address_ttl_seconds), the share of max_unauthenticated
    # kept for such known sources, and the handshake rate per source (x10 when known).
    max_unauthenticated_per_address: int = Field(default=32, ge=1)
    max_unauthenticated_per_known_address: int = Field(default=256, ge=1)
    unauthenticated_reserve_fraction: float = Field(default=0.25, ge=0, lt=1)
    handshakes_per_address_per_second: float = Field(default=20.0, gt=0)
    handshake_burst_per_address: int = Field(default=64, ge=1)
    known_address_ttl_seconds: float = Field(default=24 * 3600.0, gt=0)
    # The hello (the first WebSocket message) and the cell's first transport frame must each
    # come within this many seconds; handshake_timeout_seconds bounds both together.
    hello_timeout_seconds: float = Field(default=2.0, gt=0)
    # Addresses of the reverse proxies whose X-Forwarded-For / X-Forwarded-Proto headers are
    # believed (comma-separated IPs or networks, uvicorn's forwarded_allow_ips; "*" for any).
    # Unset (the default): no forwarding header is believed, from anywhere, loopback
    # included; every limit per address counts the connection's own peer address.
    forwarded_allow_ips: str | None = None
    # Every open connection of the process (links, handshakes, HTTP requests, and requests
    # still sending their headers): beyond it, new ones get HTTP 503 (uvicorn's
    # limit_concurrency). Keep it under the process's open-file limit.
    max_connections: int = Field(default=10000, ge=16)
    # Presence (admin cell list/show): last_seen of linked cells is refreshed this often; a
    # cell not refreshed for 2.5 intervals (its node died) shows offline (presence.py).
    presence_refresh_seconds: float = Field(default=60.0, gt=0, le=3600)
    prekeys_low_threshold: int = Field(default=10, ge=0)
    max_one_time_prekeys: int = Field(default=1000, ge=1)

    # /docs (Swagger UI) and /redoc load their scripts from a public CDN, which a closed network
    # does not reach: off unless enabled. /openapi.json is always served.
    api_docs: bool = False

    # Enrollment.
    enrollment_code_ttl_seconds: int = Field(default=24 * 3600, ge=60)
