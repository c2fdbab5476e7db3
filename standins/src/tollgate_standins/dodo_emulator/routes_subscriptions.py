"""`/subscriptions`: read, update (cancel, pause), change plan (seats via add-ons), on-demand charges."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends

from . import render
from .billing import cancel_now, change_plan, charge_on_demand, get_subscription
from .credits import balance_of, overage_of
from .decimals import ZERO, fmt, parse_decimal
from .deps import Emu, Page, newest_first, require_auth
from .errors import unprocessable
from .schemas import ChangePlanIn, ChargeIn, SubscriptionUpdate
from .state import Obj
from .timeutil import add_interval, iso, now_iso, parse_dt

router = APIRouter(dependencies=[Depends(require_auth)], tags=["subscriptions"])

_PLAIN_FIELDS = ("metadata", "tax_id", "customer_business_name", "cancellation_comment", "cancellation_feedback")


@router.get("/subscriptions/{subscription_id}")
async def retrieve(subscription_id: str, emu: Emu) -> Obj:
    return render.subscription(emu, get_subscription(emu, subscription_id))


@router.get("/subscriptions")
async def list_subscriptions(
    emu: Emu,
    page: Page,
    customer_id: str | None = None,
    product_id: str | None = None,
    status: str | None = None,
    brand_id: str | None = None,
    cancel_at_next_billing_date: bool | None = None,
    created_at_gte: datetime | None = None,
    created_at_lte: datetime | None = None,
) -> Obj:
    items = []
    for s in newest_first(list(emu.state.subscriptions.values())):
        created = parse_dt(s["created_at"])
        if customer_id is not None and s["customer_id"] != customer_id:
            continue
        if product_id is not None and s["product_id"] != product_id:
            continue
        if status is not None and s["status"] != status:
            continue
        if brand_id is not None and s["brand_id"] != brand_id:
            continue
        if cancel_at_next_billing_date is not None and s["cancel_at_next_billing_date"] != cancel_at_next_billing_date:
            continue
        if created_at_gte is not None and created < parse_dt(created_at_gte):
            continue
        if created_at_lte is not None and created > parse_dt(created_at_lte):
            continue
        items.append(s)
    return {"items": [render.subscription_list_item(emu, s) for s in page.slice(items)]}


def _update_status(emu: Emu, sub: Obj, body: SubscriptionUpdate) -> None:
    status = body.status
    if status == "cancelled":
        cancel_now(emu, sub, body.cancellation_feedback, body.cancellation_comment)
        return
    if len(body.model_fields_set) > 1:
        raise unprocessable("status paused or active must be sent alone")
    if status == "paused" and sub["status"] == "active":
        sub.update(status="paused", paused_at=now_iso())
        emu.webhooks.emit("subscription.paused", kind="subscription", ref_id=sub["subscription_id"])
    elif status == "active" and sub["status"] == "paused":
        sub.update(status="active", paused_at=None)
        emu.webhooks.emit("subscription.unpaused", kind="subscription", ref_id=sub["subscription_id"])
    elif status != sub["status"]:
        raise unprocessable(f"cannot move a {sub['status']} subscription to {status}")


@router.patch("/subscriptions/{subscription_id}")
async def update(subscription_id: str, body: SubscriptionUpdate, emu: Emu) -> Obj:
    sub = get_subscription(emu, subscription_id)
    fields = body.model_fields_set
    if "pause" in fields:
        raise unprocessable("pause is no longer supported; send status: paused")
    if "status" in fields and body.status is not None:
        _update_status(emu, sub, body)
        if body.status != "cancelled":
            return render.subscription(emu, sub)
    changed = False
    if body.cancel_at_next_billing_date is not None and body.cancel_at_next_billing_date != sub[
        "cancel_at_next_billing_date"
    ]:
        sub["cancel_at_next_billing_date"] = body.cancel_at_next_billing_date
        changed = True
    for field in _PLAIN_FIELDS:
        if field in fields:
            value = getattr(body, field)
            sub[field] = ({} if value is None else value) if field == "metadata" else value
            changed = True
    if body.billing is not None:
        sub["billing"] = body.billing.model_dump()
        changed = True
    if body.next_billing_date is not None:
        sub["next_billing_date"] = iso(parse_dt(body.next_billing_date))
        changed = True
    if body.customer_name is not None:
        emu.state.customers[sub["customer_id"]]["name"] = body.customer_name
        changed = True
    if body.subscription_period_count is not None or body.subscription_period_interval is not None:
        count = body.subscription_period_count or sub["subscription_period_count"]
        interval = body.subscription_period_interval or sub["subscription_period_interval"]
        new_end = add_interval(parse_dt(sub["created_at"]), count, interval)
        if sub.get("expires_at") and new_end < parse_dt(sub["expires_at"]):
            raise unprocessable("the subscription period can only be extended")
        sub.update(subscription_period_count=count, subscription_period_interval=interval, expires_at=iso(new_end))
        changed = True
    for item in body.credit_entitlement_cart or []:
        if item.credits_amount is not None:
            parse_decimal(item.credits_amount, "credits_amount")
        overrides = sub.setdefault("_credit_overrides", {})
        overrides.setdefault(item.credit_entitlement_id, {}).update(item.model_dump(exclude_unset=True))
        changed = True
    if changed and sub["status"] != "cancelled":
        emu.webhooks.emit("subscription.updated", kind="subscription", ref_id=sub["subscription_id"])
    return render.subscription(emu, sub)


@router.post("/subscriptions/{subscription_id}/change-plan")
async def change_subscription_plan(subscription_id: str, body: ChangePlanIn, emu: Emu) -> Obj:
    return change_plan(emu, get_subscription(emu, subscription_id), body)


@router.post("/subscriptions/{subscription_id}/charge")
async def charge(subscription_id: str, body: ChargeIn, emu: Emu) -> Obj:
    return charge_on_demand(emu, get_subscription(emu, subscription_id), body)


@router.get("/subscriptions/{subscription_id}/credit-usage")
async def credit_usage(subscription_id: str, emu: Emu) -> Obj:
    sub = get_subscription(emu, subscription_id)
    product = emu.state.products[sub["product_id"]]
    items = []
    for mapping in product["credit_entitlements"]:
        ce = emu.state.credit_entitlements.get(mapping["credit_entitlement_id"])
        if ce is None:
            continue
        precision = ce["precision"]
        balance = balance_of(emu, ce["id"], sub["customer_id"])
        overage = overage_of(emu, ce["id"], sub["customer_id"])
        limit = mapping.get("overage_limit")
        headroom = None
        if mapping["overage_enabled"] and limit is not None:
            headroom = fmt(max(parse_decimal(limit, "overage_limit") - overage, ZERO), precision)
        items.append(
            {
                "credit_entitlement_id": ce["id"],
                "credit_entitlement_name": ce["name"],
                "unit": ce["unit"],
                "balance": fmt(balance, precision),
                "overage": fmt(overage, precision),
                "overage_enabled": mapping["overage_enabled"],
                "limit_reached": balance <= 0 and (
                    not mapping["overage_enabled"] or (headroom is not None and parse_decimal(headroom, "x") <= 0)
                ),
                "overage_limit": limit,
                "remaining_headroom": headroom,
            }
        )
    return {"subscription_id": sub["subscription_id"], "items": items}
