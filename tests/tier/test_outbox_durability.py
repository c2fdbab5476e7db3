"""A tier change committed while NATS is down is not lost: the outbox relays it once NATS is
back, and the consumer carries on with new payments afterwards."""

from __future__ import annotations

import asyncio

from support.servers import Infra, eventually
from tier.helpers import TierService, new_customer


async def test_a_change_made_while_nats_is_down_is_published_when_it_returns(tier: TierService, infra: Infra) -> None:
    customer = new_customer()
    await tier.load_hot_state(customer)
    infra.nats.kill()
    try:
        async with tier.admin() as http:
            for name in ("tier-3", "tier-2"):
                response = await http.put(f"/admin/v1/tiers/{customer}/pin", json={"tier": name})
                assert response.status_code == 200
        # Redis is reachable: the gateway enforces the latest limits even before NATS is back
        await eventually(lambda: _rpm(tier, customer, "10"))
        pending = await tier.pool.fetchval(
            "SELECT count(*) FROM tier.outbox WHERE customer_id = $1 AND published_at IS NULL", customer)
        assert pending == 2
    finally:
        await asyncio.to_thread(infra.nats.start)

    events = await eventually(lambda: _count(tier, customer, 2), timeout=45)
    assert [(e.old_tier, e.new_tier, e.cause) for e in events] == [
        ("tier-1", "tier-3", "operator"), ("tier-3", "tier-2", "operator")]

    other = new_customer()
    await tier.pay(other, 60_00)
    row = await eventually(lambda: _view_tier(tier, other), timeout=30)
    assert row == "tier-2"


async def _rpm(tier: TierService, customer: str, rpm: str) -> bool:
    return bool((await tier.hot.snapshot(customer)).get("rpm") == rpm)


async def _count(tier: TierService, customer: str, n: int) -> object:
    events = await tier.tier_events(customer)
    return events if len(events) >= n else None


async def _view_tier(tier: TierService, customer: str) -> str | None:
    row = await tier.hot_limits(customer)
    return None if row is None else str(row["tier"])
