"""The tier service as real processes (`python -m tollgate_tier serve`), two replicas sharing the
one durable consumer: every payment is counted once and every change published once."""

from __future__ import annotations

import contextlib
import uuid

import httpx

from support.servers import Infra, service_process
from tier.helpers import ADMIN_TOKEN, connected, new_customer, provisioned


async def test_two_replicas_count_every_payment_once(infra: Infra) -> None:
    await provisioned(infra)
    env = {"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN, "TIER_SWEEP_INTERVAL_S": "1", "TIER_CONSUMER_BATCH": "4",
           "LOG_LEVEL": "WARNING"}
    async with contextlib.AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(service_process("tollgate_tier", infra, env=env))
                    for _ in range(2)]
        tier = await stack.enter_async_context(
            connected(infra, f"http://127.0.0.1:{replicas[0].port}", infra.database_url))

        customers = [new_customer() for _ in range(8)]
        payments = []
        for customer in customers:
            for _ in range(3):  # $20 + $20 + $20: the third payment crosses $50
                payments.append(await tier.pay(customer, 20_00, payment_id=f"pay_{uuid.uuid4().hex[:12]}"))
        for payment in payments[::2]:  # and a replay of every other one, past the dedup window
            await tier.publish(payment, msg_id=f"replay-{uuid.uuid4()}")
        await tier.settled()

        for customer in customers:
            row = await tier.hot_limits(customer)
            assert row is not None and (row["tier"], row["lifetime_spend_nanos"]) == ("tier-2", 60 * 10**9)
            assert [(e.old_tier, e.new_tier) for e in await tier.tier_events(customer)] == [("tier-1", "tier-2")]

        async with httpx.AsyncClient(timeout=10) as http:
            for replica in replicas:
                base = f"http://127.0.0.1:{replica.port}"
                ready = (await http.get(f"{base}/readyz")).json()
                assert ready == {"ready": True, "checks": {"postgres": "ok", "redis": "ok", "nats": "ok"}}
                shown = await http.get(f"{base}/admin/v1/tiers/{customers[0]}",
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                assert shown.json()["tier"] == "tier-2"
                metrics = (await http.get(f"{base}/metrics")).text
                assert 'tier_billing_events_total{kind="payment",result="applied"}' in metrics

        counted = await tier.pool.fetchval(
            "SELECT count(*) FROM tier.spend_events WHERE customer_id = ANY($1::text[])", customers)
        assert counted == len(payments)
