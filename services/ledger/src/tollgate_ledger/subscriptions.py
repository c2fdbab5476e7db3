"""Dodo `subscription.*` webhooks: keep `ledger.subscriptions` in step with Dodo and re-derive
the customer's plan (planstate) in the transaction that stores the webhook.

Every subscription event carries the whole subscription, so each one is applied the same way:
the state it describes replaces the stored one. Order and repetition do not matter because:
- the inbox drops a repeated webhook-id;
- an event older (by Dodo's envelope `timestamp`) than the one already applied is ignored, so a
  late `active` never overwrites a newer `plan_changed` or `cancelled`;
- an ended subscription (cancelled, expired, failed, or past the end of a period it was
  cancelled at) is final: no later event revives it (a new purchase is a new subscription id).

What the state means:
- `active` pays for its plan (plus/team by product id; Team seats = included seats + seat add-on
  quantity); `on_hold`, `past_due`, `paused` stop paying (the customer is on Free: credits first,
  then the Free allowance) until Dodo says `active` again.
- A new billing period (Dodo's `previous_billing_date` moved, e.g. `renewed`, or a plan change
  that resets the anchor) resets the cap: usage counts from the local period start, which is
  `previous_billing_date`, or the event's time or the ledger's clock if earlier (a period never
  starts in the future: test clocks and the emulator move billing dates ahead of the wall clock,
  and Dodo's clock may run ahead of ours).
- `cancelled` with `status: cancelled` (or `expired`/`failed`) ends the plan now. A cancellation
  scheduled for the period end (`cancel_at_next_billing_date` while the status is still active,
  announced by `subscription.updated` or `subscription.cancelled`) keeps the plan until
  `next_billing_date`; then Dodo's own `cancelled`/`expired` event, or the ledger's period-end
  sweep if that event is late, moves the customer to Free.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from tollgate_dodo.catalogue import Catalogue
from tollgate_ledger import planstate
from tollgate_ledger.dodo_events import Env, Malformed, Outcome, RetryLater, parse_time, resolve_customer
from tollgate_ledger.effects import Effects

ENDED_STATUSES = frozenset({"cancelled", "expired", "failed"})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one event says about a subscription."""

    subscription_id: str
    product_id: str
    status: str
    addons: dict[str, int]
    dodo_period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool
    cancelled_at: datetime | None


def _time(value: Any) -> datetime | None:
    return parse_time(value) if isinstance(value, str) and value else None


def parse(data: dict[str, Any]) -> Snapshot:
    for name in ("subscription_id", "product_id", "status"):
        if not data.get(name):
            raise Malformed(f"data.{name} is missing")
    addons: dict[str, int] = {}
    for item in data.get("addons") or []:
        if not isinstance(item, dict) or not item.get("addon_id"):
            raise Malformed("data.addons has an item without addon_id")
        try:
            quantity = int(item.get("quantity", 1))
        except (TypeError, ValueError) as exc:
            raise Malformed("data.addons quantity is not a number") from exc
        addons[str(item["addon_id"])] = addons.get(str(item["addon_id"]), 0) + max(quantity, 0)
    return Snapshot(
        subscription_id=str(data["subscription_id"]), product_id=str(data["product_id"]),
        status=str(data["status"]), addons=addons, dodo_period_start=_time(data.get("previous_billing_date")),
        period_end=_time(data.get("next_billing_date")),
        cancel_at_period_end=bool(data.get("cancel_at_next_billing_date")),
        cancelled_at=_time(data.get("cancelled_at")),
    )


def seats_of(catalogue: Catalogue, plan: str, addons: dict[str, int]) -> int:
    if plan != "team":
        return 1
    extra = addons.get(catalogue.seat_addon_id, 0) if catalogue.seat_addon_id else 0
    return max(catalogue.team_included_seats, 1) + extra


def ends_now(event_type: str, snap: Snapshot, now: datetime) -> bool:
    if snap.status in ENDED_STATUSES or event_type == "subscription.expired":
        return True
    if event_type == "subscription.cancelled" and not snap.cancel_at_period_end:
        return True  # an immediate cancellation whose snapshot still shows the old status
    return snap.cancel_at_period_end and snap.period_end is not None and snap.period_end <= now


async def apply_event(env: Env, conn: asyncpg.Connection, effects: Effects, event_type: str, data: dict[str, Any],
                      *, event_at: datetime, webhook_id: str | None) -> Outcome:
    snap = parse(data)
    catalogue = env.catalogue.get()
    if catalogue is None:
        raise RetryLater("the Dodo catalogue is not available, so plans cannot be recognised")
    product = catalogue.plan_for(snap.product_id)
    if product is None:
        return Outcome("ignored", detail=f"product {snap.product_id} is not a Tollgate plan")
    known = await conn.fetchval(
        "SELECT customer_id FROM ledger.subscriptions WHERE subscription_id = $1", snap.subscription_id
    )
    customer_id = str(known) if known else await resolve_customer(conn, data, effects)
    if customer_id is None:
        return Outcome("unmatched", detail="no Tollgate customer for this subscription")

    await planstate.lock(conn, customer_id)  # always before the subscription row: one lock order
    row = await conn.fetchrow(
        "SELECT * FROM ledger.subscriptions WHERE subscription_id = $1 FOR UPDATE", snap.subscription_id
    )
    if row is not None and row["ended_at"] is not None:
        return Outcome("ignored", customer_id, "subscription already ended")
    if row is not None and event_at < row["event_at"]:
        return Outcome("ignored", customer_id, "older than the subscription state already applied")

    now = datetime.now(UTC)
    new_period = row is None or snap.dodo_period_start != row["dodo_period_start"]
    if new_period:
        period_start = min(snap.dodo_period_start or event_at, event_at, now)
    else:
        period_start = row["period_start"]
    ended_at = min(event_at, now) if ends_now(event_type, snap, now) else None
    await conn.execute(
        "INSERT INTO ledger.subscriptions (subscription_id, customer_id, product_id, plan, status, seats, "
        "dodo_period_start, period_start, period_end, cancel_at_period_end, cancelled_at, ended_at, event_at, "
        "last_event_type, last_webhook_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
        "ON CONFLICT (subscription_id) DO UPDATE SET product_id = EXCLUDED.product_id, plan = EXCLUDED.plan, "
        "status = EXCLUDED.status, seats = EXCLUDED.seats, dodo_period_start = EXCLUDED.dodo_period_start, "
        "period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end, "
        "cancel_at_period_end = EXCLUDED.cancel_at_period_end, cancelled_at = EXCLUDED.cancelled_at, "
        "ended_at = EXCLUDED.ended_at, event_at = EXCLUDED.event_at, last_event_type = EXCLUDED.last_event_type, "
        "last_webhook_id = EXCLUDED.last_webhook_id, updated_at = now()",
        snap.subscription_id, customer_id, snap.product_id, product.plan, snap.status,
        seats_of(catalogue, product.plan, snap.addons), snap.dodo_period_start, period_start, snap.period_end,
        snap.cancel_at_period_end, snap.cancelled_at, ended_at, event_at, event_type, webhook_id,
    )
    changed = await planstate.refresh(conn, effects, customer_id, change_id=webhook_id)
    return Outcome("applied", customer_id, None if changed else "plan unchanged")


async def end_due(conn: asyncpg.Connection, effects: Effects, customer_id: str, subscription_id: str) -> bool:
    """End a subscription cancelled at its period end once that end has passed (the sweep's
    half of the rule; Dodo's own cancelled/expired event usually gets there first)."""
    await planstate.lock(conn, customer_id)
    period_end = await conn.fetchval(
        "UPDATE ledger.subscriptions SET ended_at = period_end, updated_at = now() WHERE subscription_id = $1 "
        "AND ended_at IS NULL AND cancel_at_period_end AND period_end <= now() RETURNING period_end",
        subscription_id,
    )
    if period_end is None:
        return False
    await planstate.refresh(conn, effects, customer_id,
                            change_id=f"period-end:{subscription_id}:{period_end.isoformat()}")
    return True
