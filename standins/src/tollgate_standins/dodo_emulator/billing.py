"""Money movements: checkout payment, subscriptions (renewal, plan change, on-demand charges),
refunds and disputes. Amounts are integer minor units; proration uses exact fractions."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .credits import expire_grant, grant_credits, reset_overage, subscription_credits
from .errors import ApiError, bad_request, not_found
from .ids import new_id
from .render import refunded_amount
from .state import Obj
from .timeutil import add_interval, iso, now_iso, parse_dt, utcnow

if TYPE_CHECKING:
    from .runtime import Emulator
    from .schemas import ChangePlanIn, ChargeIn, RefundCreate

CHECKOUT_LIFETIME = timedelta(hours=24)
MINIMUM_CHARGE = 50  # Dodo refuses payments under 0.50 in the currency's minor unit
DEFAULT_BILLING: Obj = {"country": "US", "city": None, "state": None, "street": None, "zipcode": None}


def get_payment(emu: Emulator, payment_id: str) -> Obj:
    payment = emu.state.payments.get(payment_id)
    if payment is None:
        raise not_found("payment", payment_id)
    return payment


def get_subscription(emu: Emulator, subscription_id: str) -> Obj:
    sub = emu.state.subscriptions.get(subscription_id)
    if sub is None:
        raise not_found("subscription", subscription_id)
    return sub


def _round_half_up(value: Fraction) -> int:
    return (value.numerator * 2 + value.denominator) // (2 * value.denominator)


def unit_price(price: Obj, amount_override: int | None = None) -> int:
    if price["type"] == "usage_based_price":
        unit = int(price["fixed_price"])
    else:
        unit = int(price["price"])
        if price.get("pay_what_you_want") and amount_override is not None:
            unit = max(amount_override, unit)
    bps = price.get("discount_bps")
    if bps is None and price.get("discount"):
        bps = int(price["discount"]) * 100
    if bps:
        unit = _round_half_up(Fraction(unit * (10000 - int(bps)), 10000))
    return unit


def recurring_amount(emu: Emulator, product: Obj, quantity: int, addons: list[Obj]) -> int:
    total = unit_price(product["price"]) * quantity
    for addon in addons:
        total += int(emu.state.addons[addon["addon_id"]]["price"]) * int(addon["quantity"])
    return total


def check_cart_addons(emu: Emulator, product: Obj, addons: list[Obj]) -> None:
    for addon in addons:
        if addon["addon_id"] not in emu.state.addons:
            raise not_found("addon", addon["addon_id"])
        if addon["addon_id"] not in (product.get("addons") or []):
            raise bad_request(f"addon {addon['addon_id']} is not attached to product {product['product_id']}")


def new_payment(
    emu: Emulator,
    *,
    customer_id: str,
    total: int,
    currency: str,
    succeeded: bool,
    charge_type: str | None,
    subscription_ids: list[str],
    lines: list[Obj],
    product_cart: list[Obj] | None = None,
    checkout_session_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    billing: Obj | None = None,
    service_periods: list[Obj] | None = None,
    payment_link: str | None = None,
) -> Obj:
    now = now_iso()
    payment: Obj = {
        "payment_id": new_id("pay"),
        "business_id": emu.settings.business_id,
        "brand_id": emu.settings.brand_id,
        "created_at": now,
        "updated_at": now,
        "total_amount": total,
        "currency": currency,
        "settlement_amount": total,
        "settlement_currency": currency,
        "tax": 0,
        "settlement_tax": 0,
        "billing": billing or dict(DEFAULT_BILLING),
        "metadata": metadata or {},
        "status": "succeeded" if succeeded else "failed",
        "product_cart": product_cart,
        "subscription_id": subscription_ids[0] if len(subscription_ids) == 1 else None,
        "subscription_ids": subscription_ids,
        "service_periods": service_periods or [],
        "charge_type": charge_type,
        "checkout_session_id": checkout_session_id,
        "digital_products_delivered": False,
        "includes_usage": False,
        "is_multi_subscription": len(subscription_ids) > 1,
        "is_update_payment_method": False,
        "payment_provider": "stripe",
        "retry_attempt": 0,
        "payment_link": payment_link,
        "payment_method": "card",
        "payment_method_type": "credit",
        "payment_method_id": "pm_emulator_card",
        "card_last_four": "4242" if succeeded else "0002",
        "card_network": "VISA",
        "card_type": "CREDIT",
        "card_exp_month": "12",
        "card_exp_year": "2030",
        "card_holder_name": emu.state.customers[customer_id]["name"],
        "card_issuing_country": "US",
        "error_code": None if succeeded else "CARD_DECLINED",
        "error_message": None if succeeded else "The card was declined (emulated).",
        "invoice_id": new_id("inv"),
        "invoice_url": None,
        "discounts": None,
        "discount_id": None,
        "custom_field_responses": None,
        "three_ds_flow": None,
        "three_ds_status": None,
        "three_ds_version": None,
        "_customer_id": customer_id,
        "_lines": lines,
    }
    emu.state.payments[payment["payment_id"]] = payment
    emu.webhooks.emit("payment.succeeded" if succeeded else "payment.failed", kind="payment",
                      ref_id=payment["payment_id"])
    return payment


def _service_period(sub: Obj) -> Obj:
    return {
        "subscription_id": sub["subscription_id"],
        "starts_at": sub["previous_billing_date"],
        "ends_at": sub["next_billing_date"],
        "proration_factor": "1",
    }


# -- checkout ---------------------------------------------------------------------------------

def checkout_quote(emu: Emulator, request: Obj) -> tuple[int, str]:
    """The amount due today for a checkout request and its currency."""
    total = 0
    currency: str | None = None
    trial_override = (request.get("subscription_data") or {}).get("trial_period_days")
    on_demand = (request.get("subscription_data") or {}).get("on_demand")
    for item in request["product_cart"]:
        product = emu.state.products[item["product_id"]]
        price = product["price"]
        if currency is not None and price["currency"] != currency:
            raise bad_request("all products in one checkout must use the same currency", "CURRENCY_MISMATCH")
        currency = price["currency"]
        if not product["is_recurring"]:
            total += unit_price(price, item.get("amount")) * item["quantity"]
            continue
        trial_days = trial_override if trial_override is not None else price.get("trial_period_days") or 0
        if on_demand is not None:
            total += 0 if on_demand.get("mandate_only") else int(on_demand.get("product_price") or 0)
        elif trial_days:
            total += int(price.get("trial_amount") or 0)
        else:
            total += recurring_amount(emu, product, item["quantity"], item.get("addons") or [])
    assert currency is not None
    return total, currency


def _new_subscription(emu: Emulator, session: Obj, item: Obj, product: Obj, customer_id: str) -> Obj:
    request = session["request"]
    price = product["price"]
    data = request.get("subscription_data") or {}
    trial_days = data["trial_period_days"] if data.get("trial_period_days") is not None else (
        price.get("trial_period_days") or 0
    )
    now = utcnow()
    addons = [{"addon_id": a["addon_id"], "quantity": a["quantity"]} for a in item.get("addons") or []]
    first_period_end = now + timedelta(days=trial_days) if trial_days else add_interval(
        now, price["payment_frequency_count"], price["payment_frequency_interval"]
    )
    overrides = {c["credit_entitlement_id"]: {"credits_amount": c["credits_amount"]}
                 for c in item.get("credit_entitlements") or []}
    sub: Obj = {
        "subscription_id": new_id("sub"),
        "product_id": product["product_id"],
        "customer_id": customer_id,
        "status": "active",
        "quantity": item["quantity"],
        "addons": addons,
        "recurring_pre_tax_amount": recurring_amount(emu, product, item["quantity"], addons),
        "currency": price["currency"],
        "tax_inclusive": bool(price.get("tax_inclusive")),
        "previous_billing_date": iso(now),
        "next_billing_date": iso(first_period_end),
        "payment_frequency_count": price["payment_frequency_count"],
        "payment_frequency_interval": price["payment_frequency_interval"],
        "subscription_period_count": price["subscription_period_count"],
        "subscription_period_interval": price["subscription_period_interval"],
        "trial_period_days": trial_days,
        "trial_amount": price.get("trial_amount"),
        "on_demand": data.get("on_demand") is not None,
        "cancel_at_next_billing_date": False,
        "has_payment_method": True,
        "metadata": request.get("metadata") or {},
        "billing": request.get("billing_address") or dict(DEFAULT_BILLING),
        "brand_id": product["brand_id"],
        "created_at": iso(now),
        "cancelled_at": None,
        "cancelled_by": None,
        "cancellation_feedback": None,
        "cancellation_comment": None,
        "custom_field_responses": None,
        "customer_business_name": None,
        "discount_cycles_remaining": None,
        "discount_id": None,
        "discounts": None,
        "expires_at": iso(add_interval(now, price["subscription_period_count"],
                                       price["subscription_period_interval"])),
        "paused_at": None,
        "payment_method_id": "pm_emulator_card",
        "scheduled_change": None,
        "tax_id": None,
        "_credit_overrides": overrides,
        "_in_trial": bool(trial_days),
        "_card_declines": False,
    }
    emu.state.subscriptions[sub["subscription_id"]] = sub
    return sub


def grant_subscription_credits(emu: Emulator, sub: Obj, *, reference_id: str) -> None:
    product = emu.state.products[sub["product_id"]]
    for mapping in product["credit_entitlements"]:
        ce = emu.state.credit_entitlements.get(mapping["credit_entitlement_id"])
        if ce is None or ce.get("_deleted"):
            continue
        amount = subscription_credits(sub, mapping)
        if sub.get("_in_trial") and mapping.get("trial_credits") is not None:
            amount = Decimal(mapping["trial_credits"]) * sub["quantity"]
        if amount <= 0:
            continue
        override = (sub.get("_credit_overrides") or {}).get(ce["id"], {})
        grant_credits(
            emu, ce["id"], sub["customer_id"], amount, source_type="subscription",
            source_id=sub["subscription_id"], reference_type="subscription", reference_id=reference_id,
            expires_after_days=override.get("expires_after_days", mapping.get("expires_after_days")),
            metadata={"subscription_id": sub["subscription_id"], "product_id": product["product_id"]},
            description=f"credits for subscription {sub['subscription_id']}",
        )


def _grant_one_time_credits(emu: Emulator, product: Obj, item: Obj, customer_id: str, payment_id: str) -> None:
    overrides = {c["credit_entitlement_id"]: c["credits_amount"] for c in item.get("credit_entitlements") or []}
    for mapping in product["credit_entitlements"]:
        ce = emu.state.credit_entitlements.get(mapping["credit_entitlement_id"])
        if ce is None or ce.get("_deleted"):
            continue
        amount = Decimal(overrides.get(ce["id"], mapping["credits_amount"])) * item["quantity"]
        if amount <= 0:
            continue
        grant_credits(
            emu, ce["id"], customer_id, amount, source_type="one_time", source_id=payment_id,
            reference_type="payment", reference_id=payment_id,
            expires_after_days=mapping.get("expires_after_days"),
            metadata={"payment_id": payment_id, "product_id": product["product_id"]},
            description=f"credits for purchase of {product.get('name') or product['product_id']}",
        )


def _resolve_buyer(emu: Emulator, session: Obj, email: str | None, name: str | None) -> str:
    from .routes_customers import create_customer

    if session["customer_id"] is not None:
        return str(session["customer_id"])
    customer = create_customer(emu, email or "buyer@example.com", name or "Emulator Buyer")
    session["customer_id"] = customer["customer_id"]
    return str(customer["customer_id"])


def _check_session_open(session: Obj) -> None:
    if session["status"] == "succeeded":
        raise ApiError(409, "CHECKOUT_SESSION_ALREADY_COMPLETED", f"checkout {session['session_id']} is already paid")
    if parse_dt(session["expires_at"]) < utcnow():
        raise bad_request(f"checkout {session['session_id']} has expired", "CHECKOUT_SESSION_EXPIRED")


def pay_checkout(emu: Emulator, session: Obj, email: str | None = None, name: str | None = None) -> Obj:
    _check_session_open(session)
    customer_id = _resolve_buyer(emu, session, email, name)
    request = session["request"]
    total, currency = checkout_quote(emu, request)
    subs: list[tuple[Obj, Obj]] = []
    one_time: list[tuple[Obj, Obj]] = []
    lines: list[Obj] = []
    for item in request["product_cart"]:
        product = emu.state.products[item["product_id"]]
        if product["is_recurring"]:
            sub = _new_subscription(emu, session, item, product, customer_id)
            subs.append((sub, product))
            lines.append({"item_id": product["product_id"], "amount": sub["recurring_pre_tax_amount"]})
        else:
            one_time.append((item, product))
            lines.append({"item_id": product["product_id"],
                          "amount": unit_price(product["price"], item.get("amount")) * item["quantity"]})
    payment = new_payment(
        emu, customer_id=customer_id, total=total, currency=currency, succeeded=True,
        charge_type="new" if subs else None, subscription_ids=[s["subscription_id"] for s, _ in subs],
        lines=lines, product_cart=[{"product_id": p["product_id"], "quantity": i["quantity"]} for i, p in one_time]
        or None, checkout_session_id=session["session_id"], metadata=request.get("metadata"),
        billing=request.get("billing_address"), service_periods=[_service_period(s) for s, _ in subs],
        payment_link=session["checkout_url"],
    )
    session.update(status="succeeded", payment_id=payment["payment_id"], payment_status="succeeded",
                   subscription_ids=[s["subscription_id"] for s, _ in subs])
    for sub, _ in subs:
        emu.webhooks.emit("subscription.active", kind="subscription", ref_id=sub["subscription_id"])
    for item, product in one_time:
        _grant_one_time_credits(emu, product, item, customer_id, payment["payment_id"])
    for sub, _ in subs:
        grant_subscription_credits(emu, sub, reference_id=sub["subscription_id"])
    return payment


def decline_checkout(emu: Emulator, session: Obj, email: str | None = None, name: str | None = None) -> Obj:
    _check_session_open(session)
    customer_id = _resolve_buyer(emu, session, email, name)
    request = session["request"]
    total, currency = checkout_quote(emu, request)
    payment = new_payment(
        emu, customer_id=customer_id, total=total, currency=currency, succeeded=False, charge_type=None,
        subscription_ids=[], lines=[], checkout_session_id=session["session_id"],
        metadata=request.get("metadata"), billing=request.get("billing_address"),
        payment_link=session["checkout_url"],
    )
    session.update(status="failed", payment_id=payment["payment_id"], payment_status="failed")
    return payment


# -- subscriptions ----------------------------------------------------------------------------

def _require_status(sub: Obj, *allowed: str) -> None:
    if sub["status"] not in allowed:
        raise bad_request(f"subscription {sub['subscription_id']} is {sub['status']}", "SUBSCRIPTION_INACTIVE")


def _apply_plan(emu: Emulator, sub: Obj, product: Obj, quantity: int, addons: list[Obj]) -> bool:
    changed_product = bool(product["product_id"] != sub["product_id"])
    price = product["price"]
    sub.update(
        product_id=product["product_id"],
        quantity=quantity,
        addons=addons,
        recurring_pre_tax_amount=recurring_amount(emu, product, quantity, addons),
        currency=price["currency"],
        payment_frequency_count=price["payment_frequency_count"],
        payment_frequency_interval=price["payment_frequency_interval"],
        subscription_period_count=price["subscription_period_count"],
        subscription_period_interval=price["subscription_period_interval"],
        scheduled_change=None,
    )
    if changed_product:
        sub["_credit_overrides"] = {}
    return changed_product


def _start_new_cycle(emu: Emulator, sub: Obj) -> None:
    """Forfeit last cycle's unused subscription credits (unless rollover), reset overage, re-grant."""
    product = emu.state.products[sub["product_id"]]
    for mapping in product["credit_entitlements"]:
        ce_id = mapping["credit_entitlement_id"]
        if not mapping["rollover_enabled"]:
            for grant in list(emu.state.grants.values()):
                if (grant["source_type"] == "subscription" and grant["source_id"] == sub["subscription_id"]
                        and grant["credit_entitlement_id"] == ce_id and not grant["is_expired"]):
                    expire_grant(emu, grant, description="unused subscription credits forfeited at renewal")
        if ce_id in emu.state.credit_entitlements:
            reset_overage(emu, ce_id, sub["customer_id"], reference_id=sub["subscription_id"])
    sub["_in_trial"] = False
    grant_subscription_credits(emu, sub, reference_id=sub["subscription_id"])


def renew(emu: Emulator, sub: Obj) -> Obj:
    _require_status(sub, "active", "on_hold")
    if sub["cancel_at_next_billing_date"]:
        raise ApiError(409, "SUBSCRIPTION_SCHEDULED_TO_CANCEL",
                       "subscription cancels at the end of this period; use /_emulator/subscriptions/{id}/expire")
    if sub.get("_card_declines"):
        return fail_renewal(emu, sub)
    was_on_hold = sub["status"] == "on_hold"
    change = sub.get("scheduled_change")
    if change:
        product = emu.state.products[change["product_id"]]
        _apply_plan(emu, sub, product, change["quantity"],
                    [{"addon_id": a["addon_id"], "quantity": a["quantity"]} for a in change["addons"]])
    start = parse_dt(sub["next_billing_date"])
    sub["previous_billing_date"] = iso(start)
    sub["next_billing_date"] = iso(add_interval(start, sub["payment_frequency_count"],
                                                sub["payment_frequency_interval"]))
    sub["status"] = "active"
    payment = new_payment(
        emu, customer_id=sub["customer_id"], total=sub["recurring_pre_tax_amount"], currency=sub["currency"],
        succeeded=True, charge_type="renewal", subscription_ids=[sub["subscription_id"]],
        lines=[{"item_id": sub["product_id"], "amount": sub["recurring_pre_tax_amount"]}],
        metadata=sub["metadata"], billing=sub["billing"], service_periods=[_service_period(sub)],
    )
    emu.webhooks.emit("subscription.renewed", kind="subscription", ref_id=sub["subscription_id"],
                      extra={"payment_id": payment["payment_id"]})
    if change:
        emu.webhooks.emit("subscription.plan_changed", kind="subscription", ref_id=sub["subscription_id"])
    if was_on_hold:
        emu.webhooks.emit("subscription.active", kind="subscription", ref_id=sub["subscription_id"])
    _start_new_cycle(emu, sub)
    return payment


def fail_renewal(emu: Emulator, sub: Obj) -> Obj:
    _require_status(sub, "active", "on_hold")
    sub["status"] = "on_hold"
    payment = new_payment(
        emu, customer_id=sub["customer_id"], total=sub["recurring_pre_tax_amount"], currency=sub["currency"],
        succeeded=False, charge_type="renewal", subscription_ids=[sub["subscription_id"]], lines=[],
        metadata=sub["metadata"], billing=sub["billing"],
    )
    emu.webhooks.emit("subscription.on_hold", kind="subscription", ref_id=sub["subscription_id"])
    return payment


def expire(emu: Emulator, sub: Obj) -> str:
    _require_status(sub, "active", "on_hold", "paused")
    period_end = sub["next_billing_date"]
    if sub["cancel_at_next_billing_date"]:
        sub.update(status="cancelled", cancelled_at=period_end)
        event = "subscription.cancelled"
    else:
        sub.update(status="expired", expires_at=period_end)
        event = "subscription.expired"
    emu.webhooks.emit(event, kind="subscription", ref_id=sub["subscription_id"])
    return event


def cancel_now(emu: Emulator, sub: Obj, feedback: str | None, comment: str | None) -> None:
    if sub["status"] == "cancelled":
        return
    sub.update(
        status="cancelled",
        cancelled_at=now_iso(),
        cancelled_by={"actor_type": "api_key", "email": None, "name": None},
        cancellation_feedback=feedback,
        cancellation_comment=comment,
    )
    emu.webhooks.emit("subscription.cancelled", kind="subscription", ref_id=sub["subscription_id"])


def change_plan(emu: Emulator, sub: Obj, body: ChangePlanIn) -> Obj:
    from .routes_products import get_product

    if sub["status"] != "active":
        raise bad_request("only active subscriptions can change plan",
                          "INACTIVE_SUBSCRIPTION_PLAN_CHANGE_NOT_SUPPORTED")
    if sub["scheduled_change"] is not None:
        raise ApiError(409, "PLAN_CHANGE_ALREADY_SCHEDULED", "a plan change is already scheduled")
    product = get_product(emu, body.product_id)
    if product["_archived"]:
        raise bad_request(f"product {product['product_id']} is archived", "PRODUCT_IS_DELETED")
    if not product["is_recurring"]:
        raise bad_request("a subscription can only change to a subscription product")
    addons: list[Obj] = [{"addon_id": a.addon_id, "quantity": a.quantity} for a in body.addons or []]
    check_cart_addons(emu, product, addons)
    if body.metadata is not None:
        sub["metadata"] = body.metadata
    now = utcnow()
    if body.effective_at == "next_billing_date":
        sub["scheduled_change"] = {
            "id": new_id("spc"),
            "product_id": product["product_id"],
            "quantity": body.quantity,
            "addons": [{**a, "name": emu.state.addons[a["addon_id"]]["name"]} for a in addons],
            "created_at": iso(now),
            "effective_at": sub["next_billing_date"],
            "product_name": product.get("name"),
            "product_description": product.get("description"),
        }
        emu.webhooks.emit("subscription.updated", kind="subscription", ref_id=sub["subscription_id"])
        return {"payment_id": None, "payment_link": None, "client_secret": None, "expires_on": None}
    old_amount = int(sub["recurring_pre_tax_amount"])
    new_amount = recurring_amount(emu, product, body.quantity, addons)
    start, end = parse_dt(sub["previous_billing_date"]), parse_dt(sub["next_billing_date"])
    period = max(int((end - start).total_seconds() * 1_000_000), 1)
    left = min(max(int((end - now).total_seconds() * 1_000_000), 0), period)
    remaining = Fraction(left, period)
    mode = body.proration_billing_mode
    if mode == "do_not_bill":
        charge = 0
    elif mode == "full_immediately":
        charge = new_amount
    elif mode == "difference_immediately":
        charge = max(new_amount - old_amount, 0)
    elif mode == "prorated_immediately":
        charge = max(_round_half_up(new_amount - old_amount * remaining), 0)
    else:  # prorated_immediately_keep_cycle
        charge = max(_round_half_up((new_amount - old_amount) * remaining), 0)
    changed_product = _apply_plan(emu, sub, product, body.quantity, addons)
    if mode not in ("do_not_bill", "prorated_immediately_keep_cycle"):
        # Dodo resets the billing anchor to the change date for the immediate billing modes.
        sub["previous_billing_date"] = iso(now)
        sub["next_billing_date"] = iso(add_interval(now, sub["payment_frequency_count"],
                                                    sub["payment_frequency_interval"]))
    payment_id = None
    if charge > 0:
        payment = new_payment(
            emu, customer_id=sub["customer_id"], total=charge, currency=sub["currency"], succeeded=True,
            charge_type="plan_change", subscription_ids=[sub["subscription_id"]],
            lines=[{"item_id": product["product_id"], "amount": charge}], metadata=sub["metadata"],
            billing=sub["billing"], service_periods=[_service_period(sub)],
        )
        payment_id = payment["payment_id"]
    emu.webhooks.emit("subscription.plan_changed", kind="subscription", ref_id=sub["subscription_id"])
    if changed_product:
        grant_subscription_credits(emu, sub, reference_id=sub["subscription_id"])
    return {"payment_id": payment_id, "payment_link": None, "client_secret": None, "expires_on": None}


def charge_on_demand(emu: Emulator, sub: Obj, body: ChargeIn) -> Obj:
    _require_status(sub, "active")
    if not sub["on_demand"]:
        raise bad_request(f"subscription {sub['subscription_id']} is not on-demand", "SUBSCRIPTION_NOT_ON_DEMAND")
    payment = new_payment(
        emu, customer_id=sub["customer_id"], total=body.product_price,
        currency=body.product_currency or sub["currency"], succeeded=not sub.get("_card_declines"),
        charge_type="on_demand", subscription_ids=[sub["subscription_id"]],
        lines=[{"item_id": sub["product_id"], "amount": body.product_price}],
        metadata=body.metadata or {}, billing=sub["billing"],
    )
    return {"payment_id": payment["payment_id"]}


# -- refunds and disputes ---------------------------------------------------------------------

def create_refund(emu: Emulator, body: RefundCreate) -> Obj:
    payment = get_payment(emu, body.payment_id)
    if payment["status"] != "succeeded":
        raise bad_request(f"payment {payment['payment_id']} did not succeed", "PAYMENT_NOT_SUCCEEDED")
    refundable = int(payment["total_amount"]) - refunded_amount(emu, payment["payment_id"])
    if refundable <= 0:
        raise bad_request(f"payment {payment['payment_id']} is already fully refunded", "PAYMENT_ALREADY_REFUNDED")
    if body.items:
        lines = {line["item_id"]: int(line["amount"]) for line in payment["_lines"]}
        amount = 0
        for item in body.items:
            if item.item_id not in lines:
                raise bad_request(f"item {item.item_id} is not part of payment {payment['payment_id']}")
            amount += item.amount if item.amount is not None else lines[item.item_id]
    else:
        amount = refundable
    if amount > refundable:
        raise bad_request(f"refund of {amount} exceeds the refundable {refundable}",
                          "REFUND_AMOUNT_EXCEEDS_PAID_AMOUNT")
    refund: Obj = {
        "refund_id": new_id("ref"),
        "payment_id": payment["payment_id"],
        "business_id": emu.settings.business_id,
        "brand_id": emu.settings.brand_id,
        "created_at": now_iso(),
        "is_partial": amount < int(payment["total_amount"]),
        "status": "succeeded",
        "amount": amount,
        "currency": payment["currency"],
        "reason": body.reason,
        "metadata": body.metadata or {},
        "network_reference": None,
        "network_reference_type": None,
        "network_reference_updated_at": None,
        "_customer_id": payment["_customer_id"],
    }
    emu.state.refunds[refund["refund_id"]] = refund
    payment["updated_at"] = now_iso()
    emu.webhooks.emit("refund.succeeded", kind="refund", ref_id=refund["refund_id"])
    return refund


def dispute_payment(emu: Emulator, payment: Obj, outcome: str, amount: int | None, remarks: str | None) -> Obj:
    if payment["status"] != "succeeded":
        raise bad_request(f"payment {payment['payment_id']} did not succeed", "PAYMENT_NOT_SUCCEEDED")
    open_disputes = [d for d in emu.state.disputes.values()
                     if d["payment_id"] == payment["payment_id"] and d["dispute_status"] == "dispute_opened"]
    if outcome == "opened" and open_disputes:
        raise ApiError(409, "DISPUTE_ALREADY_OPEN", f"payment {payment['payment_id']} already has an open dispute")
    if open_disputes and outcome != "opened":
        dispute = open_disputes[-1]
    else:
        dispute = {
            "dispute_id": new_id("dsp"),
            "payment_id": payment["payment_id"],
            "business_id": emu.settings.business_id,
            "created_at": now_iso(),
            "amount": str(amount if amount is not None else payment["total_amount"]),
            "currency": payment["currency"],
            "dispute_stage": "dispute",
            "dispute_status": "dispute_opened",
            "remarks": remarks,
            "is_resolved_by_rdr": False,
            "reason": None,
            "_customer_id": payment["_customer_id"],
        }
        emu.state.disputes[dispute["dispute_id"]] = dispute
    dispute["dispute_status"] = f"dispute_{outcome}"
    if remarks is not None:
        dispute["remarks"] = remarks
    payment["updated_at"] = now_iso()
    emu.webhooks.emit(f"dispute.{outcome}", kind="dispute", ref_id=dispute["dispute_id"])
    return dispute
