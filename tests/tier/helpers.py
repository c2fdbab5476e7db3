"""Helpers for the tier tests: run the tier service on a real port, publish billing events the
way the ledger's outbox does, and read what the service wrote to the TIERS stream."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from support.servers import AppServer, Infra, eventually
from tollgate_contracts import subjects
from tollgate_contracts.events import DisputeLost, Event, PaymentSucceeded, RefundSucceeded, TierChanged
from tollgate_contracts.streams import TIER_BILLING
from tollgate_hotstate import HotState, create_redis
from tollgate_platform import bus
from tollgate_tier.app import create_app
from tollgate_tier.settings import TierSettings

ADMIN_TOKEN = "tier-test-admin-token"


def new_customer() -> str:
    return f"cus_{uuid.uuid4().hex[:16]}"


@dataclass
class TierService:
    url: str
    nc: Client
    js: JetStreamContext
    hot: HotState
    pool: asyncpg.Pool

    def admin(self, token: str | None = ADMIN_TOKEN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)

    # -- the billing events the ledger publishes ------------------------------------------
    async def publish(self, event: Event, msg_id: str | None = None) -> None:
        """msg_id: a different Nats-Msg-Id makes JetStream store a replay it would otherwise drop,
        which is what a replay beyond the dedup window looks like to the consumer."""
        if isinstance(event, PaymentSucceeded):
            base = subjects.PAYMENT_SUCCEEDED
        elif isinstance(event, RefundSucceeded):
            base = subjects.REFUND_SUCCEEDED
        elif isinstance(event, DisputeLost):
            base = subjects.DISPUTE_LOST
        else:
            raise TypeError(type(event))
        subject = subjects.for_customer(base, event.customer_id)  # type: ignore[attr-defined]
        if msg_id is None:
            await bus.publish_event(self.js, subject, event)
        else:
            await bus.publish_raw(self.js, subject, event.model_dump_json().encode(), msg_id)

    async def pay(self, customer: str, cents: int, *, payment_id: str | None = None,
                  occurred_at: datetime | None = None) -> PaymentSucceeded:
        extra: dict[str, Any] = {"occurred_at": occurred_at} if occurred_at else {}
        event = PaymentSucceeded(payment_id=payment_id or f"pay_{uuid.uuid4().hex[:12]}", customer_id=customer,
                                 amount_cents=cents, credited_nanos=cents * 10_000_000, **extra)
        await self.publish(event)
        return event

    async def refund(self, customer: str, payment_id: str, cents: int) -> RefundSucceeded:
        event = RefundSucceeded(refund_id=f"ref_{uuid.uuid4().hex[:12]}", payment_id=payment_id, customer_id=customer,
                                amount_cents=cents, debited_nanos=cents * 10_000_000)
        await self.publish(event)
        return event

    # -- what the service did ---------------------------------------------------------------
    async def settled(self) -> None:
        """Every billing message handled and every outbox row relayed: only then is the absence
        of a change meaningful."""

        async def done() -> bool:
            info = await self.js.consumer_info(TIER_BILLING.stream.name, TIER_BILLING.durable)
            if info.num_pending or info.num_ack_pending:
                return False
            pending = await self.pool.fetchval("SELECT count(*) FROM tier.outbox WHERE published_at IS NULL")
            return bool(pending == 0)

        await eventually(done)

    async def tier_events(self, customer: str) -> list[TierChanged]:
        return [TierChanged.model_validate_json(body) for body in await self.stream_bodies(
            "TIERS", subjects.for_customer(subjects.TIER_CHANGED, customer))]

    async def stream_bodies(self, stream: str, subject: str) -> list[bytes]:
        info = await self.js.stream_info(stream, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        if not count:
            return []
        sub = await self.js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=10.0))
        bodies: list[bytes] = []
        try:
            while len(bodies) < count:
                bodies += [m.data for m in await sub.fetch(batch=count - len(bodies), timeout=5)]
        finally:
            await sub.unsubscribe()
        return bodies

    async def hot_limits(self, customer: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM tier.hot_limits WHERE customer_id = $1", customer)

    async def load_hot_state(self, customer: str, rpm: int = 3, tpm: int = 40_000) -> None:
        """What the gateway does on a customer's first request: the hot state exists, limits_v 0."""
        await self.hot.load(customer, {"bal": 10**12, "seq": 1, "rpm": rpm, "tpm": tpm, "tier": "", "limits_v": 0,
                                       "plan": ""})


@contextlib.asynccontextmanager
async def running_tier(infra: Infra, database_url: str | None = None, **overrides: Any) -> AsyncIterator[TierService]:
    """The tier app in this test's event loop, on a real port."""
    settings = TierSettings(
        nats_url=infra.nats_url, redis_url=infra.redis_url, database_url=database_url or infra.database_url,
        admin_token=ADMIN_TOKEN, sweep_interval_s=0.5, relay_poll_s=0.2, log_json=True, log_level="WARNING",
        **overrides,
    )
    await provisioned(infra)
    async with AppServer(create_app(settings)) as server, connected(infra, server.url, settings.database_url) as svc:
        yield svc


async def provisioned(infra: Infra) -> None:
    """Streams and consumers as provisioning makes them; creates what is missing, empties nothing."""
    nc = await bus.connect(infra.nats_url, "tier-tests-provision")
    try:
        await bus.provision(nc.jetstream())
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def connected(infra: Infra, url: str, database_url: str) -> AsyncIterator[TierService]:
    """Test-side connections to what a running tier service (in-process or not) writes."""
    nc = await bus.connect(infra.nats_url, "tier-tests")
    redis = create_redis(infra.redis_url, max_connections=8)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield TierService(url, nc, nc.jetstream(), HotState(redis), pool)
    finally:
        await pool.close()
        await redis.aclose()
        await nc.close()
