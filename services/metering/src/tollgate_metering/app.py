"""The metering service: a FastAPI shell (ops routes) around the `metering-usage` consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from tollgate_metering.runtime import Runtime
from tollgate_metering.settings import MeteringSettings
from tollgate_platform.ops_http import ReadinessCheck
from tollgate_platform.service import build_app

SERVICE = "metering"


def create_app(settings: MeteringSettings, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    holder: dict[str, Runtime] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, provider)
        holder["runtime"] = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            holder.clear()

    def checks() -> Mapping[str, ReadinessCheck]:
        runtime = holder.get("runtime")
        if runtime is None:
            return {"runtime": _not_started}
        return {"nats": runtime.check_nats, "consumer": runtime.check_consumer, "dodo": runtime.check_dodo}

    app, provider = build_app(SERVICE, settings, lifespan=lifespan, checks=checks, tracer_provider=tracer_provider)
    app.state.runtime = holder
    return app


async def _not_started() -> None:
    raise RuntimeError("not started")


def create_app_from_env() -> FastAPI:
    return create_app(MeteringSettings())
