"""Waiting until the pipeline has nothing left in flight: every durable consumer caught up, the
gateways' spools and Redis' unposted usage empty, the outboxes published, Tollgate's credit
movements on Dodo done, alert deliveries finished, Dodo's webhooks delivered; then Dodo's meter
deduction runs. Only then are the books comparable."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import asyncpg
import httpx
import redis.asyncio as redis

from chaos.cluster import Cluster
from chaos.load import Customer
from tollgate_contracts.streams import ALL_CONSUMERS
from tollgate_hotstate import CustomerKeys
from tollgate_platform import bus

_SPOOL = re.compile(r"^gateway_usage_spool_pending\s+([0-9.e+]+)$", re.M)


async def pending_work(cluster: Cluster, customers: list[Customer]) -> dict[str, Any]:
    """Everything still in flight, by place; empty when drained."""
    system, infra = cluster.system, cluster.infra
    left: dict[str, Any] = {}
    nc = await bus.connect(infra.nats_url, "chaos-drain")
    try:
        js = nc.jetstream()
        for spec in ALL_CONSUMERS:
            info = await js.consumer_info(spec.stream.name, spec.durable)
            if info.num_pending or info.num_ack_pending:
                left[f"consumer {spec.durable}"] = (info.num_pending, info.num_ack_pending)
    finally:
        await nc.close()
    async with httpx.AsyncClient(timeout=5) as client:
        for i, replica in enumerate(system.replicas["gateway"]):
            text = (await client.get(f"{replica.url}/metrics")).text
            spooled = sum(float(v) for v in _SPOOL.findall(text))
            if spooled:
                left[f"gateway[{i}] spool"] = spooled
        deliveries = (await client.get(f"{system.url('dodo-emulator')}/_emulator/webhook-deliveries",
                                       params={"status": "pending"})).json()["items"]
        if deliveries:
            left["dodo webhooks pending"] = len(deliveries)
    r = redis.Redis.from_url(infra.redis_url)
    try:
        unposted = 0
        for c in customers:
            unposted += await r.hlen(CustomerKeys(c.customer_id).unposted)
        if unposted:
            left["redis unposted usage"] = unposted
    finally:
        await r.aclose()
    conn = await asyncpg.connect(infra.database_url)
    try:
        for name, sql in (
            ("ledger outbox", "SELECT count(*) FROM ledger.outbox WHERE published_at IS NULL"),
            ("tier outbox", "SELECT count(*) FROM tier.outbox WHERE published_at IS NULL"),
            ("dodo sync", "SELECT count(*) FROM ledger.dodo_sync WHERE status = 'pending'"),
            ("alert deliveries", "SELECT count(*) FROM notifier.deliveries WHERE status = 'pending'"),
            ("parked webhooks", "SELECT count(*) FROM ledger.webhook_inbox WHERE outcome = 'parked'"),
        ):
            count = await conn.fetchval(sql)
            if count:
                left[name] = count
    finally:
        await conn.close()
    return left


async def drain(
    cluster: Cluster, customers: list[Customer], timeout_s: float, timeline: list[str] | None = None
) -> tuple[float, dict[str, Any]]:
    """Returns (seconds it took, what was still pending at the deadline — empty on success). The
    state must be empty twice in a row: a consumer can look idle between a redelivery's naks.
    `timeline` receives what was pending whenever that changes (the summary shows what a slow
    drain waited for)."""
    started = time.monotonic()
    last: dict[str, Any] = {}
    quiet = 0
    while time.monotonic() - started < timeout_s:
        try:
            now = await pending_work(cluster, customers)
        except (OSError, asyncpg.PostgresError, httpx.HTTPError, redis.RedisError, TimeoutError) as exc:
            now = {"unreachable": type(exc).__name__}
        if timeline is not None and sorted(now) != sorted(last):
            timeline.append(f"drain {time.monotonic() - started:6.1f}s: {now or 'nothing pending'}")
        last = now
        quiet = quiet + 1 if not last else 0
        if quiet >= 2:
            break
        await asyncio.sleep(1.0)
    async with httpx.AsyncClient(timeout=30) as client:
        (await client.post(f"{cluster.system.url('dodo-emulator')}/_emulator/deduct")).raise_for_status()
    return time.monotonic() - started, last
