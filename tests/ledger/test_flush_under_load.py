"""Redis is a cache: flushing it while requests are reserved, settled and posted loses no money.
When the usage pipeline has drained, every balance comes back exactly from Postgres."""

from __future__ import annotations

import asyncio
import random

from ledger.support import CENT, RunningLedger, balance_of, funded_customer, publish, settle_in_gateway, usage_event
from support.servers import eventually
from tollgate_contracts.events import UsageRecorded
from tollgate_hotstate import AdmitRequest, Admitted, HotState, NeedsLoad
from tollgate_hotstate.loader import load_customer
from tollgate_ledger.usage import post_usage


async def gateway_worker(
    ledger: RunningLedger, hot: HotState, customers: list[str], rng: random.Random, requests: int,
    charged: list[UsageRecorded],
) -> None:
    """What the gateway does per request: admit (load on demand), settle, publish usage."""
    pool = ledger.ledger.pool
    for _ in range(requests):
        customer = rng.choice(customers)
        hold_amount = rng.randint(1, 2 * CENT)
        event = usage_event(customer, rng.randint(0, hold_amount))
        request = AdmitRequest(event.event_id, "gpt-4o-mini", 1, hold_amount, 0, 0, 0, 60_000, 0, check_rate=False)
        verdict = await hot.admit(customer, request)
        if isinstance(verdict, NeedsLoad):
            await load_customer(pool, hot, customer, 0, 0)
            verdict = await hot.admit(customer, request)
        if not isinstance(verdict, Admitted):
            continue
        await settle_in_gateway(hot, event)
        await publish(ledger.settings.nats_url, [event])
        if event.cost_nanos > 0:
            charged.append(event)


async def test_flushing_redis_under_load_loses_no_money(consuming_ledger: RunningLedger) -> None:
    ledger = consuming_ledger
    hot = ledger.ledger.hot
    pool = ledger.ledger.pool
    customers = [await funded_customer(ledger, 500) for _ in range(6)]
    rng = random.Random(11)
    charged: list[UsageRecorded] = []
    workers = [
        asyncio.create_task(gateway_worker(ledger, hot, customers, random.Random(rng.random()), 60, charged))
        for _ in range(10)
    ]
    for _ in range(3):
        await asyncio.sleep(0.3)
        await hot.redis.flushall()  # everything: balances, holds, unposted usage, key cache
    await asyncio.gather(*workers)

    async def drained() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE kind = 'usage' AND customer_id = ANY($1::text[])", customers
        )
        return int(n) == len(charged)

    await eventually(drained, timeout=30)
    assert len(charged) > 100  # the flushes really happened under load
    for customer in customers:
        spent = sum(e.cost_nanos for e in charged if e.customer_id == customer)
        assert await balance_of(pool, customer) == 500 * CENT - spent

    async def hot_copies_agree() -> bool:
        for customer in customers:
            snap = await hot.snapshot(customer)
            if "loaded" in snap and (int(snap["bal"]), snap["unposted"]) != (await balance_of(pool, customer), "0"):
                return False
        return True

    await eventually(hot_copies_agree)
    # A rebuild from Postgres alone gives the same balances.
    await hot.redis.flushall()
    for customer in customers:
        await load_customer(pool, hot, customer, 0, 0)
        assert await hot.available(customer) == await balance_of(pool, customer)


async def test_usage_settled_after_a_flush_is_counted_once_whichever_comes_first(ledger: RunningLedger) -> None:
    """A request admitted before a flush settles after it, on a state not loaded yet."""
    core = ledger.ledger
    hot = core.hot
    for post_before_load in (False, True):
        customer = await ledger.new_customer()
        async with ledger.admin() as admin:
            await admin.post(f"/customers/{customer}/grants",
                             json={"amount_cents": 100, "reason": "test", "idempotency_key": f"f-{customer}"})
        event = usage_event(customer, 30 * CENT)
        await settle_in_gateway(hot, event)  # Redis holds nothing loaded for this customer
        if post_before_load:
            await post_usage(core, [event])
            await load_customer(core.pool, hot, customer, 0, 0)
        else:
            await load_customer(core.pool, hot, customer, 0, 0)
            assert await hot.available(customer) == 70 * CENT  # settled, not posted: still counted
            await post_usage(core, [event])
        assert await hot.available(customer) == 70 * CENT == await balance_of(core.pool, customer)
        assert (await hot.snapshot(customer))["unposted"] == "0"
