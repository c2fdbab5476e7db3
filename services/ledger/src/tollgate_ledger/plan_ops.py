"""Operator actions on subscriptions: Dodo checkout for Plus and Team, seat changes and
cancellation through the official SDK, the customer's plan as it stands, and an operator's plan
override (Enterprise, or Free). Dodo stays the source of truth for paid plans: the SDK calls ask
Dodo for a change, and the ledger applies it when Dodo's webhook arrives."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tollgate_dodo.catalogue import Catalogue, PlanProduct
from tollgate_ledger import planstate, team
from tollgate_ledger.context import Ledger
from tollgate_ledger.effects import Effects
from tollgate_ledger.errors import ApiError
from tollgate_ledger.operations import get_customer, link_dodo, record
from tollgate_ledger.plans import FREE, NONE, is_paid
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

SUBSCRIPTION_COLUMNS = (
    " subscription_id, product_id, plan, status, seats, dodo_period_start, period_start, period_end, "
    "cancel_at_period_end, cancelled_at, ended_at, event_at, last_event_type "
)


def _catalogue(ledger: Ledger) -> Catalogue:
    catalogue = ledger.catalogue.get()
    if catalogue is None:
        raise ApiError(503, "the Dodo catalogue is not provisioned (run `tollgate dodo bootstrap`)",
                       "catalogue_missing", "api_error")
    return catalogue


def _product(catalogue: Catalogue, plan: str) -> PlanProduct:
    product = next((p for p in catalogue.plans if p.plan == plan), None)
    if product is None:
        raise ApiError(404, f"plan {plan} is not sold through Dodo (no product in the catalogue)",
                       "plan_not_found", "not_found_error")
    return product


def _dodo(ledger: Ledger) -> Any:
    if ledger.dodo is None:
        raise ApiError(503, "Dodo is not configured", "dodo_unavailable", "api_error")
    return ledger.dodo.with_options(max_retries=1, timeout=ledger.settings.dodo_timeout_s)


def _dodo_failed(what: str, exc: Exception) -> ApiError:
    return ApiError(502, f"Dodo refused or did not answer the {what}: {type(exc).__name__}", "dodo_unavailable",
                    "api_error")


async def _open_subscription(ledger: Ledger, customer_id: str) -> asyncpg.Record | None:
    """The customer's subscription that has not ended (the one seat changes and cancels apply to)."""
    return await ledger.pool.fetchrow(
        "SELECT" + SUBSCRIPTION_COLUMNS + "FROM ledger.subscriptions WHERE customer_id = $1 AND ended_at IS NULL "
        "AND status NOT IN ('cancelled', 'expired', 'failed') ORDER BY event_at DESC LIMIT 1",
        customer_id,
    )


async def checkout(ledger: Ledger, customer_id: str, *, plan: str, seats: int) -> dict[str, Any]:
    customer = await get_customer(ledger, customer_id)
    catalogue = _catalogue(ledger)
    product = _product(catalogue, plan)
    if plan != "team" and seats != 1:
        raise ApiError(422, "seats: only the Team plan is sold per seat", "invalid_request")
    extra = seats - max(catalogue.team_included_seats, 1) if plan == "team" else 0
    if extra < 0:
        raise ApiError(422, f"seats: Team includes {catalogue.team_included_seats} seat(s) at least",
                       "invalid_request")
    if extra > 0 and not catalogue.seat_addon_id:
        raise ApiError(503, "the catalogue has no seat add-on (re-run `tollgate dodo bootstrap`)",
                       "catalogue_missing", "api_error")
    current = await _open_subscription(ledger, customer_id)
    if current is not None and current["status"] == "active":
        raise ApiError(409, f"the customer already has an active {current['plan']} subscription "
                       f"({current['subscription_id']}); change its seats or cancel it first", "already_subscribed")
    client = _dodo(ledger)
    if not customer["dodo_customer_id"]:
        customer = await link_dodo(ledger, customer_id)
    item: dict[str, Any] = {"product_id": product.product_id, "quantity": 1}
    if extra > 0:
        item["addons"] = [{"addon_id": catalogue.seat_addon_id, "quantity": extra}]
    try:
        session = await client.checkout_sessions.create(
            product_cart=[item],
            customer={"customer_id": customer["dodo_customer_id"]},
            metadata={"tollgate_customer_id": customer_id, "tollgate_plan": plan},
            return_url=f"{ledger.settings.public_base_url.rstrip('/')}/checkout/return",
        )
    except Exception as exc:
        raise _dodo_failed("checkout", exc) from exc
    return {
        "customer_id": customer_id, "plan": plan, "seats": seats, "checkout_url": session.checkout_url,
        "session_id": session.session_id, "product_id": product.product_id,
        "monthly_cents": product.price_cents * (seats if plan == "team" else 1),
    }


async def change_seats(ledger: Ledger, customer_id: str, seats: int) -> dict[str, Any]:
    await get_customer(ledger, customer_id)
    catalogue = _catalogue(ledger)
    current = await _open_subscription(ledger, customer_id)
    if current is None or current["plan"] != "team" or current["status"] != "active":
        raise ApiError(409, "the customer has no active Team subscription", "no_team_subscription")
    included = max(catalogue.team_included_seats, 1)
    if seats < included:
        raise ApiError(422, f"seats: Team includes {included} seat(s) at least", "invalid_request")
    members = await team.seats_in_use(ledger, customer_id)
    if seats < members:
        raise ApiError(409, f"{members} members hold seats; remove members before going down to {seats}",
                       "seats_below_members")
    result: dict[str, Any] = {"subscription_id": current["subscription_id"], "seats": current["seats"],
                              "requested_seats": seats, "payment_id": None}
    if seats == current["seats"]:
        return {**result, "status": "unchanged"}
    if seats > included and not catalogue.seat_addon_id:
        raise ApiError(503, "the catalogue has no seat add-on (re-run `tollgate dodo bootstrap`)",
                       "catalogue_missing", "api_error")
    addons = [{"addon_id": catalogue.seat_addon_id, "quantity": seats - included}] if seats > included else []
    try:
        changed = await _dodo(ledger).subscriptions.change_plan(
            current["subscription_id"], product_id=current["product_id"], quantity=1, addons=addons,
            proration_billing_mode=ledger.settings.seat_change_proration,
        )
    except Exception as exc:
        raise _dodo_failed("plan change", exc) from exc
    # The seat count changes when Dodo's subscription.plan_changed webhook arrives.
    return {**result, "status": "requested", "payment_id": changed.payment_id}


async def cancel(ledger: Ledger, customer_id: str, *, at_period_end: bool) -> dict[str, Any]:
    await get_customer(ledger, customer_id)
    current = await _open_subscription(ledger, customer_id)
    if current is None:
        raise ApiError(409, "the customer has no subscription to cancel", "no_subscription")
    client = _dodo(ledger)
    try:
        if at_period_end:
            await client.subscriptions.update(current["subscription_id"], cancel_at_next_billing_date=True)
        else:
            await client.subscriptions.update(current["subscription_id"], status="cancelled")
    except Exception as exc:
        raise _dodo_failed("cancellation", exc) from exc
    return {
        "subscription_id": current["subscription_id"], "status": "requested", "at_period_end": at_period_end,
        "plan_ends_at": current["period_end"] if at_period_end else None,
    }


async def set_override(ledger: Ledger, customer_id: str, *, plan: str | None, seats: int | None) -> dict[str, Any]:
    """An operator's plan (e.g. an invoiced Enterprise contract, or Free); None hands the customer
    back to its Dodo subscriptions. The override's period starts now."""
    await get_customer(ledger, customer_id)
    if plan not in (None, NONE, FREE):
        known = await ledger.pool.fetchval("SELECT 1 FROM ledger.plan_definitions WHERE plan = $1", plan)
        if not known:
            raise ApiError(404, f"plan {plan} is not in the price book", "plan_not_found", "not_found_error")

    async def work(conn: asyncpg.Connection, effects: Effects) -> None:
        await planstate.lock(conn, customer_id)
        await conn.execute(
            "UPDATE ledger.customer_plans SET operator_plan = $2, operator_seats = $3, "
            "operator_set_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END WHERE customer_id = $1",
            customer_id, plan, (seats or 1) if plan is not None else None,
        )
        await planstate.refresh(conn, effects, customer_id, change_id=None)

    _, effects = await ledger.transaction(work)
    await ledger.after_commit(effects)
    return await show(ledger, customer_id)


def _decode_models(encoded: str) -> list[str]:
    return [m for m in encoded.split(",") if m]


def _decode_fallback(encoded: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in encoded.split(",") if "=" in pair)


async def show(ledger: Ledger, customer_id: str) -> dict[str, Any]:
    await get_customer(ledger, customer_id)
    row = await ledger.pool.fetchrow(
        "SELECT h.plan, h.plan_models, h.fallback, h.cap, h.pused, h.free_models, h.daily_cap, h.dused, h.plan_v, "
        "p.subscription_id, p.subscription_status, p.seats, p.period_start, p.period_end, p.cancel_at_period_end, "
        "p.operator_plan, p.softcap_period FROM ledger.hot_account h "
        "LEFT JOIN ledger.customer_plans p USING (customer_id) WHERE h.customer_id = $1",
        customer_id,
    )
    assert row is not None
    sub = None
    if row["subscription_id"]:
        sub = await ledger.pool.fetchrow(
            "SELECT" + SUBSCRIPTION_COLUMNS + "FROM ledger.subscriptions WHERE subscription_id = $1",
            row["subscription_id"],
        )
    target = planstate.Target(row["plan"], row["subscription_id"], row["subscription_status"], row["seats"] or 1,
                              row["period_start"], row["period_end"], bool(row["cancel_at_period_end"]))
    paid = is_paid(row["plan"])
    result: dict[str, Any] = {
        "customer_id": customer_id,
        "plan": row["plan"],
        "plan_v": row["plan_v"],
        "source": "operator" if row["operator_plan"] is not None else ("dodo" if row["subscription_id"] else "none"),
        "status": target.status,
        "seats": target.seats,
        "members": await team.seats_in_use(ledger, customer_id),
        "period_start": row["period_start"] if paid else None,
        "period_end": row["period_end"] if paid else None,
        "cancel_at_period_end": target.cancel_at_period_end,
        "models": _decode_models(row["plan_models"] or row["free_models"]),
        "fallback": _decode_fallback(row["fallback"]),
        "cap_nanos": row["cap"] if row["cap"] >= 0 else None,
        "used_nanos": row["pused"],
        "softcap_reached": paid and row["softcap_period"] is not None and row["softcap_period"] == row["period_start"],
        "daily_cap_nanos": row["daily_cap"] if row["plan"] == FREE else None,
        "daily_used_nanos": row["dused"] if row["plan"] == FREE else None,
        "subscription": record(sub) if sub else None,
        "hot": None,
    }
    try:
        snap = await asyncio.wait_for(ledger.hot.snapshot(customer_id), timeout=1.0)
    except Exception:
        snap = {}
    if "loaded" in snap:
        result["hot"] = {
            "plan": snap.get("plan", ""), "plan_v": int(snap.get("plan_v") or 0),
            "cap_nanos": int(snap.get("cap") or -1), "used_nanos": int(snap.get("pused") or 0),
            "daily_used_nanos": int(snap.get("dused") or 0),
        }
    return result
