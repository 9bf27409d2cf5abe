"""The relay application factory: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from liaison.protocol.enrollment import EnrollmentCode, secret_hash
from liaison.protocol.keys import X25519KeyPair

from . import store
from .admin import build_admin_router
from .bus import create_bus
from .db import create_engine
from .link import build_link_router
from .metrics import METRICS_TYPE, render_metrics
from .migrate import check_schema
from .problems import install_problem_handlers
from .relay import Relay
from .relay_key import load_or_create
from .settings import Settings
from .writer import GroupCommitWriter

__all__ = ["RelayHooks", "create_app"]

log = logging.getLogger("liaison.server")

FULL_PASS_SECONDS = 600.0  # the longest a reference cycle waits to be collected


class RelayHooks:
    """What the admin API calls into: enrollment codes and status-change notifications."""

    def __init__(self, relay: Relay, relay_key: X25519KeyPair) -> None:
        self._relay = relay
        self._relay_public = bytes(relay_key.public)

    def new_enrollment_code(self) -> tuple[str, bytes]:
        code = EnrollmentCode.generate(self._relay_public)
        return code.text(), secret_hash(code.secret)

    async def on_cell_status(self, cell_id: bytes, status: str, peers: list[bytes]) -> None:
        await self._relay.on_cell_status(cell_id, status, peers)

    async def on_channels_changed(self) -> None:
        await self._relay.directory_changed()

    async def on_sender_notices(self, senders: list[bytes]) -> None:
        await self._relay.notices_stored(senders)


async def _tend_heap(stop: asyncio.Event, every: float = 0.25) -> None:
    """Keep full garbage collections short while connections pile up.

    CPython's full collection walks every tracked object; with thousands of links open that
    is 100-300 ms of a stalled event loop, set off each time the heap grows by a quarter.
    Four times a second the heap is frozen (``gc.freeze``: O(1), moves every tracked object to
    the permanent generation), so a collection only walks what the last quarter second made.
    Frozen objects are still freed by reference counting; only reference cycles among them
    (about 5 KB per closed connection, measured) wait for the full pass every
    ``FULL_PASS_SECONDS``, which unfreezes and collects everything once. So memory held by
    dead cycles is bounded by ten minutes of connection churn (a flood of 12,000 short-lived
    connections: about 60 MB until the pass), and the one long pause comes every ten minutes
    rather than with every burst. (A pass set off when a flood ends instead walked the garbage
    of thousands of connections at once: 130 ms.)
    """
    loop = asyncio.get_running_loop()
    last_full = loop.time()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if loop.time() - last_full >= FULL_PASS_SECONDS:
            gc.unfreeze()
            gc.collect()
            last_full = loop.time()
        gc.freeze()


def create_app(
    settings: Settings | None = None, *, relay_key: X25519KeyPair | None = None
) -> FastAPI:
    """Build the relay. The relay key is loaded (or created) from ``settings.key_file`` unless
    given; the database must already be migrated to head (``liaison server db upgrade``)."""
    settings = settings or Settings()
    if relay_key is None:
        relay_key, _created = load_or_create(settings.key_file)
    engine = create_engine(settings.database_url)
    writer = GroupCommitWriter(
        engine,
        settings.commit_batch_max,
        on_batch=lambda items, seconds: relay.metrics.on_batch(items, seconds),
    )
    relay = Relay(settings, engine, writer, create_bus(settings.bus_url, settings.bus_channel))
    hooks = RelayHooks(relay, relay_key)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await check_schema(engine)
        writer.start()
        await relay.start()
        # Move every object that exists now (framework, ORM, compiled routes and schemas) to
        # CPython's permanent generation: full collections then no longer traverse that heap.
        # Without it, a burst of connections set off full collections that stalled the loop
        # for 100-250 ms each (tests/reliability/test_exhaustion.py).
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        background = [
            asyncio.create_task(relay.run_expiry(stop), name="expiry"),
            asyncio.create_task(relay.run_fallback(stop), name="bus-fallback"),
            asyncio.create_task(_tend_heap(stop), name="gc"),
            asyncio.create_task(relay.presence.run(stop, relay.hub.cells), name="presence"),
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*background)
            await relay.bus.close()
            await writer.close()
            await engine.dispose()
            gc.unfreeze()

    app = FastAPI(
        title="Liaison relay",
        version="1",
        summary="End-to-end-encrypted store-and-forward relay for liaison cells",
        lifespan=lifespan,
        # Swagger UI and ReDoc pages fetch their assets from a CDN: only when asked for.
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
    )
    app.state.relay = relay
    app.state.settings = settings
    install_problem_handlers(app)
    app.include_router(build_link_router(relay, relay_key))
    app.include_router(
        build_admin_router(
            engine,
            hooks,
            code_ttl_seconds=settings.enrollment_code_ttl_seconds,
            presence_refresh_seconds=settings.presence_refresh_seconds,
        ),
        prefix="/admin",
    )

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "connections": len(relay.hub)}

    @app.get("/readyz", tags=["health"], summary="The database is reachable")
    async def readyz() -> JSONResponse:
        # The bus is reported, not required: without it the node still delivers (fallback).
        bus = "connected" if relay.bus.connected else "degraded"
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return JSONResponse(
                {"status": "unavailable", "database": "unreachable", "bus": bus}, 503
            )
        return JSONResponse({"status": "ok", "database": "reachable", "bus": bus})

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Counters in the Prometheus text format (no secrets, no cell names)",
        response_class=PlainTextResponse,
    )
    async def metrics() -> PlainTextResponse:
        try:
            queues: dict[int, tuple[int, float]] | None = await store.queue_depths(engine)
        except Exception:  # the counters are still worth serving without the database
            queues = None
        return PlainTextResponse(render_metrics(relay, queues), media_type=METRICS_TYPE)

    return app
