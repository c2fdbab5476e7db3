"""The notifier service: three durable consumers turn bus events into alerts, a delivery worker
sends them (email, Slack, signed webhook), and an admin API shows the delivery log and edits
preferences. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import structlog
from fastapi import FastAPI
from faststream.nats import NatsBroker
from opentelemetry.sdk.trace import TracerProvider

from tollgate_notifier import admin
from tollgate_notifier.consumers import Handler, build_broker
from tollgate_notifier.settings import NotifierSettings
from tollgate_notifier.worker import DeliveryWorker
from tollgate_platform import bus
from tollgate_platform.db import create_pool, migrate_async
from tollgate_platform.ops_http import ReadinessCheck
from tollgate_platform.service import build_app

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SERVICE = "notifier"

log = structlog.get_logger("tollgate_notifier")


@dataclass
class Runtime:
    pool: asyncpg.Pool | None = None
    broker: NatsBroker | None = None
    worker: DeliveryWorker | None = None

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("the notifier is not started")
        return self.pool


def create_app(settings: NotifierSettings, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    runtime = Runtime()
    provider_holder: dict[str, TracerProvider] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_migrations:
            await migrate_async(settings.database_url, MIGRATIONS_DIR, SERVICE)
        pool = await create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_max)
        http = httpx.AsyncClient(timeout=settings.http_timeout_s, follow_redirects=False,
                                 headers={"user-agent": "tollgate-notifier/1"})
        worker = DeliveryWorker(pool, http, settings, provider_holder["provider"])
        broker = build_broker(settings, provider_holder["provider"], Handler(pool, settings, worker.wake))
        runtime.pool, runtime.worker, runtime.broker = pool, worker, broker
        worker.start()
        try:
            await broker.start()
            bus.harden_pull_subscribers(broker)
            log.info("notifier started")
            yield
        finally:
            # Consumers first (no new alerts), then let in-flight sends finish, then the pools.
            await broker.stop()
            await worker.stop()
            await http.aclose()
            await pool.close()
            runtime.pool = runtime.broker = runtime.worker = None

    def checks() -> dict[str, ReadinessCheck]:
        async def postgres() -> None:
            await runtime.require_pool().fetchval("SELECT 1")

        async def nats() -> None:
            if runtime.broker is None or not await runtime.broker.ping(timeout=1.0):
                raise ConnectionError("NATS unreachable")

        return {"postgres": postgres, "nats": nats}

    app, provider = build_app(SERVICE, settings, lifespan=lifespan, checks=checks, tracer_provider=tracer_provider)
    provider_holder["provider"] = provider
    admin.install(app, settings, runtime.require_pool)
    return app


def create_app_from_env() -> FastAPI:
    return create_app(NotifierSettings())
