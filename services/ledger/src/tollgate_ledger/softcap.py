"""Per-period plan usage and `softcap.reached`, once per billing period.

Runs inside the usage batch's transaction with the subscription usage the batch inserted. Each
subscriber's plan row is locked (in customer order), the batch's usage since the row's
`period_start` is added to `period_used_nanos`, and when that crosses the cap for the first time in
the period, SoftCapReached goes to the outbox and `softcap_period` records the period announced.
The lock makes it exact with several replicas: a concurrent batch waits and then adds on top, and a
renewal that recounts the new period either sees a batch's rows (committed) or the batch adds them
after it (it reads the new period_start once it holds the lock). Postgres is authoritative for
the event; Redis' `pused` is the gateway's live count that decides routing (ahead of Postgres by
usage not posted yet). The event's msg_id (`softcap:<customer>:<period start>`) makes a repeat the
same fact."""

from __future__ import annotations

from collections import defaultdict

import asyncpg

from tollgate_contracts import subjects
from tollgate_contracts.events import SoftCapReached, UsageRecorded
from tollgate_ledger import metrics, outbox
from tollgate_ledger.effects import Effects


def fallback_models(encoded: str | None) -> str | None:
    """`,gpt-4o=gpt-4o-mini,o1=gpt-4o-mini,` -> `gpt-4o-mini`."""
    models = sorted({pair.split("=", 1)[1] for pair in (encoded or "").split(",") if "=" in pair})
    return ", ".join(models) or None


async def record(conn: asyncpg.Connection, effects: Effects, events: list[UsageRecorded]) -> int:
    """Count newly posted subscription usage into its customers' periods; publish SoftCapReached
    for each period that reached its cap just now. Returns how many were published."""
    by_customer: dict[str, list[UsageRecorded]] = defaultdict(list)
    for event in events:
        if event.billing_mode == "subscription" and event.list_price_nanos > 0:
            by_customer[event.customer_id].append(event)
    if not by_customer:
        return 0
    plans = await conn.fetch(
        "SELECT customer_id, period_start FROM ledger.customer_plans WHERE customer_id = ANY($1::text[]) "
        "AND plan NOT IN ('', 'free') AND period_start IS NOT NULL ORDER BY customer_id FOR UPDATE",
        sorted(by_customer),
    )
    published = 0
    for plan in plans:
        customer_id, period_start = plan["customer_id"], plan["period_start"]
        delta = sum(e.list_price_nanos for e in by_customer[customer_id] if e.occurred_at >= period_start)
        if delta == 0:
            continue  # late usage of an earlier period
        await conn.execute(
            "UPDATE ledger.customer_plans SET period_used_nanos = period_used_nanos + $2 WHERE customer_id = $1",
            customer_id, delta,
        )
        row = await conn.fetchrow(
            "SELECT h.plan, h.cap, h.pused, d.fallback, p.softcap_period FROM ledger.hot_account h "
            "JOIN ledger.customer_plans p USING (customer_id) LEFT JOIN ledger.plan_definitions d ON d.plan = h.plan "
            "WHERE h.customer_id = $1",
            customer_id,
        )
        if row is None or row["cap"] < 0 or row["pused"] < row["cap"] or row["softcap_period"] == period_start:
            continue
        await conn.execute(
            "UPDATE ledger.customer_plans SET softcap_period = period_start WHERE customer_id = $1", customer_id
        )
        await outbox.enqueue(
            conn, subjects.for_customer(subjects.SOFTCAP_REACHED, customer_id),
            SoftCapReached(
                customer_id=customer_id, plan=row["plan"], period_start=period_start, cap_nanos=row["cap"],
                used_nanos=row["pused"], fallback_model=fallback_models(row["fallback"]),
            ),
            effects,
        )
        metrics.SOFTCAP_REACHED.labels(row["plan"]).inc()
        published += 1
    return published
