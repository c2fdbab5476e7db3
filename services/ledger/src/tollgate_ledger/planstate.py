"""The plan each customer is on now (`ledger.customer_plans`), derived from its Dodo
subscriptions or an operator's override, and how a change reaches the gateway and the bus.

Which subscription counts: the latest one (by Dodo's event time) that is `active` and not ended
pays -> its plan. Otherwise, if the customer has had a subscription (on hold, paused, past due,
cancelled, expired), the customer is on `free`. A customer that never subscribed has no plan
(`''`: credits only). An operator's override wins over all of that.

Every change bumps `plan_v`, pushes the hot fields with `HotState.set_fields(customer, "plan_v",
version, fields)` after commit (a late push never undoes a newer one), and publishes
`SubscriptionChanged` through the outbox. The usage counters are pushed only when they must be
reset: `pused` when a new period (or another plan) starts, `dused`/`dday` when the customer
lands on Free. Otherwise Redis keeps counting live: the gateway's settle adds usage the ledger
has not posted yet, which Postgres' count would drop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tollgate_contracts import subjects
from tollgate_contracts.events import SubscriptionChanged
from tollgate_ledger import metrics, outbox
from tollgate_ledger.effects import Effects
from tollgate_ledger.plans import FREE, NONE, is_paid

# Hash fields that describe the plan; pused and dused/dday are counters (see module doc).
DEFINITION_FIELDS = ("plan", "plan_models", "fallback", "cap", "free_models", "daily_cap")
PERIOD_COUNTER = ("pused",)
DAY_COUNTERS = ("dused", "dday")
ALL_FIELDS = DEFINITION_FIELDS + PERIOD_COUNTER + DAY_COUNTERS
VERSION_FIELD = "plan_v"


@dataclass(frozen=True, slots=True)
class Target:
    """What customer_plans should say (everything but versions and the soft-cap marker)."""

    plan: str
    subscription_id: str | None
    subscription_status: str | None
    seats: int
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool

    @classmethod
    def of(cls, row: asyncpg.Record) -> Target:
        return cls(row["plan"], row["subscription_id"], row["subscription_status"], row["seats"],
                   row["period_start"], row["period_end"], row["cancel_at_period_end"])

    @property
    def status(self) -> str:
        """The status SubscriptionChanged carries: Dodo's, or `cancelling` while a cancellation
        waits for the period end, or `operator` for an override."""
        if self.subscription_status == "active" and self.cancel_at_period_end:
            return "cancelling"
        return self.subscription_status or ("operator" if self.plan else "none")


async def lock(conn: asyncpg.Connection, customer_id: str) -> asyncpg.Record:
    """The customer's plan row, locked (created empty first). Every writer of a customer's plan
    state takes this lock first, so they serialise per customer in one order."""
    await conn.execute(
        "INSERT INTO ledger.customer_plans (customer_id) VALUES ($1) ON CONFLICT (customer_id) DO NOTHING",
        customer_id,
    )
    row = await conn.fetchrow("SELECT * FROM ledger.customer_plans WHERE customer_id = $1 FOR UPDATE", customer_id)
    assert row is not None
    return row


async def derive(conn: asyncpg.Connection, row: asyncpg.Record) -> Target:
    if row["operator_plan"] is not None:
        return Target(row["operator_plan"], None, None, row["operator_seats"] or 1, row["operator_set_at"], None,
                      False)
    sub = await conn.fetchrow(
        "SELECT subscription_id, plan, status, seats, period_start, period_end, cancel_at_period_end, "
        "(status = 'active' AND ended_at IS NULL) AS paying FROM ledger.subscriptions "
        "WHERE customer_id = $1 AND status <> 'pending' "
        "ORDER BY (status = 'active' AND ended_at IS NULL) DESC, event_at DESC, subscription_id LIMIT 1",
        row["customer_id"],
    )
    if sub is None:
        return Target(NONE, None, None, 1, None, None, False)
    status = sub["status"] if sub["paying"] or sub["status"] != "active" else "ended"
    if sub["paying"]:
        return Target(sub["plan"], sub["subscription_id"], status, sub["seats"], sub["period_start"],
                      sub["period_end"], sub["cancel_at_period_end"])
    return Target(FREE, sub["subscription_id"], status, 1, None, None, False)


async def refresh(conn: asyncpg.Connection, effects: Effects, customer_id: str, *, change_id: str | None) -> bool:
    """Re-derive the customer's plan; if anything changed, store it with a new version, queue the
    hot-state push and publish SubscriptionChanged. Returns whether it changed."""
    row = await lock(conn, customer_id)
    current = Target.of(row)
    target = await derive(conn, row)
    if target == current:
        return False
    new_period = target.plan != current.plan or target.period_start != current.period_start
    to_free = target.plan == FREE and current.plan != FREE
    # A new period counts from scratch (usage already posted since its start included); within a
    # period the usage consumer keeps adding to the counter.
    used = await _recount(conn, customer_id, target) if new_period else row["period_used_nanos"]
    version = await conn.fetchval(
        "UPDATE ledger.customer_plans SET plan = $2, subscription_id = $3, subscription_status = $4, seats = $5, "
        "period_start = $6, period_end = $7, cancel_at_period_end = $8, period_used_nanos = $9, "
        "plan_v = plan_v + 1, updated_at = now() WHERE customer_id = $1 RETURNING plan_v",
        customer_id, target.plan, target.subscription_id, target.subscription_status, target.seats,
        target.period_start, target.period_end, target.cancel_at_period_end, used,
    )
    await push(conn, effects, customer_id, int(version), period=new_period and is_paid(target.plan), day=to_free)
    await outbox.enqueue(
        conn, subjects.for_customer(subjects.SUBSCRIPTION_CHANGED, customer_id),
        SubscriptionChanged(
            customer_id=customer_id, subscription_id=target.subscription_id or "", plan=target.plan or "none",
            status=target.status, seats=target.seats, period_start=target.period_start,
            period_end=target.period_end, webhook_id=change_id or f"plan:{customer_id}:v{version}",
        ),
        effects,
    )
    metrics.PLAN_CHANGES.labels(target.plan or "none", target.status).inc()
    return True


async def _recount(conn: asyncpg.Connection, customer_id: str, target: Target) -> int:
    if not is_paid(target.plan) or target.period_start is None:
        return 0
    return int(await conn.fetchval(
        "SELECT COALESCE(sum(list_price_nanos), 0) FROM ledger.plan_usage WHERE customer_id = $1 "
        "AND billing_mode = 'subscription' AND occurred_at >= $2",
        customer_id, target.period_start,
    ))


async def bump(conn: asyncpg.Connection, effects: Effects, customer_id: str, *, counters: bool) -> None:
    """A new version with the same plan (e.g. the plan's definition changed): push it again."""
    version = await conn.fetchval(
        "UPDATE ledger.customer_plans SET plan_v = plan_v + 1, updated_at = now() WHERE customer_id = $1 "
        "RETURNING plan_v",
        customer_id,
    )
    if version is not None:
        await push(conn, effects, customer_id, int(version), period=counters, day=counters)


async def repush(conn: asyncpg.Connection, effects: Effects, customer_id: str) -> None:
    """Queue the current version again (a replayed webhook heals a hot copy a failed push left
    behind; a copy that already has this version ignores it)."""
    version = await conn.fetchval("SELECT plan_v FROM ledger.customer_plans WHERE customer_id = $1", customer_id)
    if version:
        await push(conn, effects, customer_id, int(version), period=False, day=False)


async def push(conn: asyncpg.Connection, effects: Effects, customer_id: str, version: int, *, period: bool,
               day: bool) -> None:
    """Queue the hot fields (read from the contract view, so Redis gets what a fresh load would)."""
    names = DEFINITION_FIELDS + (PERIOD_COUNTER if period else ()) + (DAY_COUNTERS if day else ())
    # The column names are the constants above, never input.
    query = "SELECT " + ", ".join(names) + " FROM ledger.hot_account WHERE customer_id = $1"  # noqa: S608
    row = await conn.fetchrow(query, customer_id)
    if row is None:
        return
    effects.plan(customer_id, version, {name: hot_value(row[name]) for name in names})


def hot_value(value: object) -> str | int:
    if isinstance(value, int):
        return value
    return "" if value is None else str(value)
