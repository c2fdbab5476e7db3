"""FastAPI application factory for the Dodo emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from . import (
    checkout_page,
    routes_checkouts,
    routes_control,
    routes_credits,
    routes_customers,
    routes_events,
    routes_meters,
    routes_payments,
    routes_products,
    routes_subscriptions,
    routes_webhooks,
)
from .errors import install_error_handlers
from .faults import FaultMiddleware
from .routes_events import IngestFastPath
from .runtime import Emulator
from .settings import EmulatorSettings

_ROUTERS = (
    routes_customers, routes_products, routes_checkouts, routes_payments, routes_subscriptions, routes_meters,
    routes_events, routes_credits, routes_webhooks, routes_control, checkout_page,
)


class DirtyMarker:
    """Marks the state for saving after every request that may have changed it."""

    def __init__(self, app: ASGIApp, emu: Emulator) -> None:
        self.app = app
        self.emu = emu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            self.emu.mark_dirty()


def create_app(settings: EmulatorSettings | None = None) -> FastAPI:
    emu = Emulator(settings or EmulatorSettings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        emu.load()
        await emu.start()
        try:
            yield
        finally:
            await emu.stop()

    app = FastAPI(
        title="Dodo Payments emulator (Tollgate stand-in)",
        description="Speaks the Dodo Payments HTTP API for local development and tests.",
        lifespan=lifespan,
    )
    app.state.emu = emu
    install_error_handlers(app)
    for module in _ROUTERS:
        app.include_router(module.router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Faults wrap everything so that an injected error looks like the server's own answer; the
    # ingest fast path sits innermost, inside the faults and the dirty marker like the route.
    app.add_middleware(IngestFastPath, emu=emu)
    app.add_middleware(DirtyMarker, emu=emu)
    app.add_middleware(FaultMiddleware, emu=emu)
    return app
