"""Everything a gateway worker holds open: Redis, Postgres (lazily), the upstream pool, NATS, the
usage publisher and its spool. Built in the app's lifespan, never at import time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import redis.asyncio as redis
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from tollgate_gateway.auth import Authenticator, FailureThrottle, KeyCache
from tollgate_gateway.bus import BusConnection
from tollgate_gateway.loader import CustomerLoader
from tollgate_gateway.pg import Postgres
from tollgate_gateway.publisher import UsagePublisher
from tollgate_gateway.republisher import Republisher
from tollgate_gateway.resp import PipelinedRedis
from tollgate_gateway.settings import GatewaySettings
from tollgate_gateway.upstream import UpstreamPool
from tollgate_hotstate import HotState, create_redis
from tollgate_money import PriceBook, TierTable
from tollgate_platform.logging import get_logger

log = get_logger("tollgate.gateway")


@dataclass
class Runtime:
    settings: GatewaySettings
    book: PriceBook
    tiers: TierTable
    redis: redis.Redis
    pipe: PipelinedRedis
    hot: HotState
    pg: Postgres
    auth: Authenticator
    loader: CustomerLoader
    upstream: UpstreamPool
    bus: BusConnection
    publisher: UsagePublisher
    republisher: Republisher
    tracer: trace.Tracer
    inflight: int = 0
    closing: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, settings: GatewaySettings, provider: TracerProvider) -> Runtime:
        book = PriceBook.load(settings.pricing_file)
        tiers = TierTable.load(settings.tiers_file)
        client = create_redis(settings.redis_url, max_connections=64)
        pipe = PipelinedRedis(settings.redis_url)
        hot = HotState(client, scripts=pipe)
        pg = Postgres(settings.database_url)
        cache = KeyCache(settings.key_cache_ttl_s, settings.key_negative_ttl_s, settings.key_cache_size)
        auth = Authenticator(client, pg.api_key, cache, FailureThrottle(settings.auth_failures_per_minute))
        first = tiers.tiers[0]
        loader = CustomerLoader(pg, hot, first.rpm, first.tpm)
        upstream = UpstreamPool(
            settings.upstream_base_url, settings.upstream_api_key.get_secret_value(),
            connect_timeout_s=settings.upstream_connect_timeout_s, max_idle=settings.upstream_pool_size,
        )
        bus = BusConnection(settings.nats_url, cache.drop, cache.drop_customer)
        bus.start()
        tracer = provider.get_tracer("tollgate.gateway")
        publisher = UsagePublisher(
            bus, tracer, settings.spool_dir, queue_size=settings.publish_queue_size,
            timeout_s=settings.publish_timeout_s, drain_interval_s=settings.spool_drain_interval_s,
            linger_s=settings.publish_linger_ms / 1000, max_unacked=settings.publish_max_unacked,
        )
        await publisher.start()
        republisher = Republisher(client, publisher, settings.republish_after_s, settings.republish_interval_s)
        republisher.start()
        with contextlib.suppress(TimeoutError):
            # Usually NATS answers at once; if it does not, start anyway and spool.
            await asyncio.wait_for(bus.ready.wait(), timeout=2.0)
        runtime = cls(
            settings, book, tiers, client, pipe, hot, pg, auth, loader, upstream, bus, publisher, republisher, tracer
        )
        runtime.idle.set()
        return runtime

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()

    async def stop(self, drain_timeout_s: float = 20.0) -> None:
        self.closing = True
        deadline = time.monotonic() + drain_timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout=max(0.0, deadline - time.monotonic()))
        if self.inflight:
            log.warning("shutting down with requests in flight", inflight=self.inflight)
        await self.republisher.stop()
        await self.publisher.stop()
        await self.bus.close()
        await self.upstream.aclose()
        await self.pg.close()
        await self.pipe.aclose()
        await self.redis.aclose()
