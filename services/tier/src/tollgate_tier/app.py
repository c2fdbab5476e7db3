"""The tier service: lifetime spend -> the rate limits the gateway enforces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as redis
from fastapi import FastAPI
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider

from tollgate_contracts.streams import TIER_BILLING
from tollgate_hotstate import HotState, create_redis
from tollgate_money import TierTable
from tollgate_platform import bus
from tollgate_platform.db import create_pool, migrate_async
from tollgate_platform.ops_http import ReadinessCheck
from tollgate_platform.service import build_app
from tollgate_tier.admin import admin_router, install_error_handlers
from tollgate_tier.consumer import ConsumerDeps, register
from tollgate_tier.engine import TierEngine, run_sweeper
from tollgate_tier.outbox import OutboxRelay
from tollgate_tier.settings import TierSettings

SERVICE = "tier"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


@dataclass
class _Runtime:
    pool: asyncpg.Pool | None = None
    redis: redis.Redis | None = None
    nc: Client | None = None
    engine: TierEngine | None = None


def create_app(settings: TierSettings, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    # Loaded here, not in the lifespan: a broken tiers file should stop the process at once.
    table = TierTable.load(settings.tiers_file, preset=settings.tier_preset)
    rt = _Runtime()
    deps = ConsumerDeps()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.run_migrations:
            await migrate_async(settings.database_url, MIGRATIONS_DIR, SERVICE)
        # Closed in reverse order, also when start-up fails half way.
        async with AsyncExitStack() as stack:
            rt.pool = pool = await create_pool(settings.database_url)
            stack.push_async_callback(pool.close)
            rt.redis = client = create_redis(settings.redis_url, max_connections=32)
            stack.push_async_callback(client.aclose)
            rt.nc = nc = await bus.connect(settings.nats_url, "tollgate-tier")
            stack.push_async_callback(nc.drain)
            js = nc.jetstream()
            await _require_provisioned(js)

            relay = OutboxRelay(
                pool, HotState(client), js, batch=settings.relay_batch, poll_s=settings.relay_poll_s,
                retention_days=settings.outbox_retention_days,
            )
            engine = TierEngine(pool, table, relay)
            await engine.sync_table()
            relay.start()
            stack.push_async_callback(relay.stop)  # a last pass over what is committed

            stop_sweeper = asyncio.Event()
            sweeper = asyncio.create_task(run_sweeper(engine, settings.sweep_interval_s, stop_sweeper))

            async def stop_sweeping() -> None:
                stop_sweeper.set()
                await sweeper

            stack.push_async_callback(stop_sweeping)
            deps.apply, deps.js = engine.apply_spend, js
            rt.engine = engine
            await broker.start()
            bus.harden_pull_subscribers(broker)
            stack.push_async_callback(broker.stop)  # first to run: waits for in-flight handlers
            yield
        rt.engine = None

    def checks() -> Mapping[str, ReadinessCheck]:
        async def postgres() -> None:
            assert rt.pool is not None
            await rt.pool.fetchval("SELECT 1 FROM tier.levels LIMIT 1")

        async def redis_ping() -> None:
            assert rt.redis is not None
            await rt.redis.ping()

        async def nats() -> None:
            assert rt.nc is not None and rt.nc.is_connected
            assert await broker.ping(timeout=1.0)

        return {"postgres": postgres, "redis": redis_ping, "nats": nats}

    app, provider = build_app(SERVICE, settings, lifespan=lifespan, checks=checks, tracer_provider=tracer_provider)
    broker = bus.create_broker(settings.nats_url, SERVICE, provider)
    register(broker, deps, settings.consumer_batch)
    install_error_handlers(app)

    def engine() -> TierEngine:
        assert rt.engine is not None, "tier service not started"
        return rt.engine

    app.include_router(admin_router(engine, settings.admin_token))
    return app


async def _require_provisioned(js: JetStreamContext) -> None:
    """Binding to a missing durable would make nats-py create one with default settings (no
    max_deliver, other ack wait); only provisioning may create it, from tollgate_contracts."""
    try:
        await js.consumer_info(TIER_BILLING.stream.name, TIER_BILLING.durable)
    except NotFoundError:
        raise RuntimeError(
            f"JetStream consumer {TIER_BILLING.stream.name}/{TIER_BILLING.durable} is missing: "
            "run `tollgate provision streams` first"
        ) from None


def create_app_from_env() -> FastAPI:
    return create_app(TierSettings())
