"""The gateway's ASGI application. `/v1/*` is served by the raw hot path (proxy.HotPath) ahead of
FastAPI's routing and middleware; FastAPI serves the ops routes (/healthz, /readyz, /metrics)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from starlette.types import Receive, Scope, Send

from tollgate_gateway.hotpath import HotPath
from tollgate_gateway.runtime import Runtime
from tollgate_gateway.settings import GatewaySettings
from tollgate_platform.ops_http import ReadinessCheck
from tollgate_platform.service import build_app


class GatewayApp(FastAPI):
    """FastAPI, except that `/v1/*` goes straight to the hot path: per request that skips the
    router, the exception and server-error middlewares and the ASGI OpenTelemetry middleware
    (which opens extra spans per message of a stream); the hot path opens its own one span."""

    hot: HotPath

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.hot(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: GatewaySettings, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    hot = HotPath()
    runtime: list[Runtime] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        rt = await Runtime.start(settings, provider)
        runtime.append(rt)
        hot.rt = rt
        # Start-up objects never die: keep them out of every future collection (long GC pauses
        # under load were the p99 tail of comparable proxies), and collect less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        try:
            yield
        finally:
            await rt.stop()
            hot.rt = None
            runtime.clear()

    def checks() -> Mapping[str, ReadinessCheck]:
        if not runtime:
            return {"runtime": _not_started}
        rt = runtime[0]
        return {"redis": rt.pipe.ping, "postgres": rt.pg.ping}

    app, provider = build_app("gateway", settings, lifespan=lifespan, checks=checks, tracer_provider=tracer_provider)
    app.__class__ = GatewayApp
    app.hot = hot  # type: ignore[attr-defined]
    return app


async def _not_started() -> None:
    raise RuntimeError("not started")


def create_app_from_env() -> FastAPI:
    return create_app(GatewaySettings())
