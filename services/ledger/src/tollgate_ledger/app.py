"""The ledger's ASGI app: Dodo webhooks, the admin API, the usage consumer and the background
workers (outbox relay, Dodo credit sync, reconciliation), all opened and closed by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from faststream.nats import NatsBroker
from opentelemetry.sdk.trace import TracerProvider

from tollgate_dodo.client import create_client
from tollgate_hotstate import HotState, create_redis
from tollgate_ledger import MIGRATIONS_DIR, admin, consumer, errors, plan_admin, plan_upkeep, webhooks
from tollgate_ledger.catalogue import CatalogueSource
from tollgate_ledger.console import create_router as console_router
from tollgate_ledger.context import Ledger
from tollgate_ledger.dodo_sync import DodoSyncWorker
from tollgate_ledger.outbox import OutboxRelay
from tollgate_ledger.reconcile import Reconciler
from tollgate_ledger.settings import LedgerSettings
from tollgate_platform import bus
from tollgate_platform.db import create_pool, migrate_async
from tollgate_platform.ops_http import ReadinessCheck
from tollgate_platform.service import build_app

SERVICE = "ledger"

DESCRIPTION = """The system of record for money: customers, API keys, the append-only ledger
(integer nano-dollars), Dodo webhooks, reconciliation with Dodo, and the operator API.
Admin routes need `Authorization: Bearer <TOLLGATE_ADMIN_TOKEN>`."""


def create_app(settings: LedgerSettings, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    provider_box: dict[str, TracerProvider] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_migrations:
            await migrate_async(settings.database_url, MIGRATIONS_DIR, SERVICE)
        pool = await create_pool(settings.database_url, min_size=2, max_size=settings.db_pool_max)
        redis = create_redis(settings.redis_url)
        nc = await bus.connect(settings.nats_url, f"tollgate-{SERVICE}")
        dodo = (
            create_client(settings, max_retries=1, timeout=settings.dodo_timeout_s)
            if settings.dodo_base_url or settings.dodo_environment else None
        )
        ledger = Ledger(settings, pool, HotState(redis), CatalogueSource(settings.dodo_catalogue_file), nc, dodo)
        app.state.ledger = ledger
        broker: NatsBroker | None = None
        reconciler = Reconciler(ledger)
        sweeper = plan_upkeep.PlanSweeper(ledger)
        try:
            await plan_upkeep.sync_from_book(ledger)
            if settings.run_outbox_relay:
                ledger.relay = OutboxRelay(
                    pool, lambda: nc.jetstream(), batch_size=settings.outbox_batch_size,
                    poll_interval_s=settings.outbox_poll_interval_s, retention_days=settings.outbox_retention_days,
                )
                await ledger.relay.start()
            if settings.dodo_sync_credits:
                ledger.dodo_worker = DodoSyncWorker(ledger)
                ledger.dodo_worker.start()
            if settings.run_reconciler:
                reconciler.start()
            if settings.run_plan_sweeper:
                sweeper.start()
            if settings.consume_usage:
                broker = bus.create_broker(settings.nats_url, SERVICE, provider_box.get("provider"))
                consumer.register(broker, ledger)
                await broker.start()
                bus.harden_pull_subscribers(broker)
            yield
        finally:
            # Stop taking work first (the broker waits for the batch in hand), then let the
            # workers finish what was committed, then close the connections.
            if broker is not None:
                await broker.stop()
            await reconciler.stop()
            await sweeper.stop()
            if ledger.dodo_worker is not None:
                await ledger.dodo_worker.stop()
            if ledger.relay is not None:
                await ledger.relay.stop()
            await ledger.close()
            if nc.is_connected:
                await nc.drain()
            await redis.aclose()
            await pool.close()
            if dodo is not None:
                await dodo.close()

    def checks() -> Mapping[str, ReadinessCheck]:
        ledger: Ledger | None = getattr(app.state, "ledger", None)
        if ledger is None:
            return {"started": _not_started}

        async def postgres() -> None:
            await ledger.pool.fetchval("SELECT 1")

        async def redis() -> None:
            await ledger.hot.redis.ping()

        async def nats() -> None:
            if ledger.nc is None or not ledger.nc.is_connected:
                raise ConnectionError("NATS disconnected")

        return {"postgres": postgres, "redis": redis, "nats": nats}

    app, provider = build_app(
        SERVICE, settings, lifespan=lifespan, checks=checks, tracer_provider=tracer_provider,
        description=DESCRIPTION, version="1.0.0",
    )
    provider_box["provider"] = provider
    errors.install(app)
    app.include_router(webhooks.router)
    app.include_router(admin.router)
    app.include_router(console_router(settings))
    app.include_router(plan_admin.router)

    @app.get("/checkout/return", include_in_schema=False)
    async def checkout_return() -> HTMLResponse:
        return HTMLResponse(
            "<!doctype html><title>Payment received</title><h1>Thank you</h1>"
            "<p>Your credits appear on your balance as soon as the payment is confirmed.</p>"
        )

    return app


async def _not_started() -> None:
    raise RuntimeError("the ledger has not finished starting")


def create_app_from_env() -> FastAPI:
    return create_app(LedgerSettings())
