"""Wire renderers: turn stored objects into the exact response shapes of the SDK's models.

Fields that depend on other objects (a payment's refunds, a subscription's credit balances, the
customer's current name) are computed here, so every response and webhook shows current state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .credits import balance_of, overage_of
from .decimals import fmt
from .state import Obj, public

if TYPE_CHECKING:
    from .runtime import Emulator


def customer(c: Obj) -> Obj:
    return public(c)


def customer_limited(emu: Emulator, customer_id: str) -> Obj:
    c = emu.state.customers[customer_id]
    return {
        "customer_id": c["customer_id"],
        "email": c["email"],
        "name": c["name"],
        "metadata": c.get("metadata") or {},
        "phone_number": c.get("phone_number"),
    }


def refund_list_item(r: Obj) -> Obj:
    return {
        k: r[k] for k in (
            "refund_id", "payment_id", "business_id", "created_at", "is_partial", "status", "amount",
            "currency", "reason",
        )
    }


def refund(emu: Emulator, r: Obj) -> Obj:
    out = public(r)
    out["customer"] = customer_limited(emu, r["_customer_id"])
    return out


def dispute(d: Obj) -> Obj:
    return {
        k: d[k] for k in (
            "dispute_id", "payment_id", "business_id", "created_at", "amount", "currency", "dispute_stage",
            "dispute_status", "remarks", "is_resolved_by_rdr",
        )
    }


def dispute_full(emu: Emulator, d: Obj) -> Obj:
    out = dispute(d)
    out.update(
        brand_id=emu.settings.brand_id,
        customer=customer_limited(emu, d["_customer_id"]),
        payment_provider="stripe",
        reason=d.get("reason"),
    )
    return out


def dispute_list_item(d: Obj) -> Obj:
    out = dispute(d)
    out["payment_provider"] = "stripe"
    return out


def _payment_refunds(emu: Emulator, payment_id: str) -> list[Obj]:
    return [r for r in emu.state.refunds.values() if r["payment_id"] == payment_id]


def refunded_amount(emu: Emulator, payment_id: str) -> int:
    return sum(r["amount"] for r in _payment_refunds(emu, payment_id) if r["status"] == "succeeded")


def _refund_status(emu: Emulator, p: Obj) -> str | None:
    refunded = refunded_amount(emu, p["payment_id"])
    if refunded <= 0:
        return None
    return "full" if refunded >= p["total_amount"] else "partial"


def payment(emu: Emulator, p: Obj) -> Obj:
    out = public(p)
    out["customer"] = customer_limited(emu, p["_customer_id"])
    out["refunds"] = [refund_list_item(r) for r in _payment_refunds(emu, p["payment_id"])]
    out["disputes"] = [dispute(d) for d in emu.state.disputes.values() if d["payment_id"] == p["payment_id"]]
    out["refund_status"] = _refund_status(emu, p)
    return out


_PAYMENT_LIST_FIELDS = (
    "brand_id", "created_at", "currency", "digital_products_delivered", "includes_usage", "is_multi_subscription",
    "metadata", "payment_id", "payment_provider", "retry_attempt", "service_periods", "subscription_ids",
    "total_amount", "card_last_four", "card_network", "card_type", "card_exp_month", "card_exp_year",
    "charge_type", "checkout_session_id", "payment_method", "payment_method_type", "status", "subscription_id",
)


def payment_list_item(emu: Emulator, p: Obj) -> Obj:
    out = {k: p.get(k) for k in _PAYMENT_LIST_FIELDS}
    out["customer"] = customer_limited(emu, p["_customer_id"])
    out["has_license_key"] = False
    out["refund_status"] = _refund_status(emu, p)
    disputes = [d for d in emu.state.disputes.values() if d["payment_id"] == p["payment_id"]]
    out["dispute_status"] = disputes[-1]["dispute_status"] if disputes else None
    return out


def _product_credit_cart(emu: Emulator, s: Obj, product: Obj) -> list[Obj]:
    from .credits import subscription_credits

    cart = []
    for mapping in product["credit_entitlements"]:
        ce = emu.state.credit_entitlements.get(mapping["credit_entitlement_id"])
        if ce is None:
            continue
        override = (s.get("_credit_overrides") or {}).get(ce["id"], {})
        precision = ce["precision"]
        cart.append(
            {
                "credit_entitlement_id": ce["id"],
                "credit_entitlement_name": ce["name"],
                "credits_amount": fmt(subscription_credits(s, mapping), precision),
                "overage_balance": fmt(overage_of(emu, ce["id"], s["customer_id"]), precision),
                "overage_behavior": mapping["overage_behavior"],
                "overage_enabled": override.get("overage_enabled", mapping["overage_enabled"]),
                "product_id": product["product_id"],
                "remaining_balance": fmt(balance_of(emu, ce["id"], s["customer_id"]), precision),
                "rollover_enabled": override.get("rollover_enabled", mapping["rollover_enabled"]),
                "unit": ce["unit"],
                "expires_after_days": override.get("expires_after_days", mapping.get("expires_after_days")),
                "low_balance_threshold_percent": override.get(
                    "low_balance_threshold_percent", mapping.get("low_balance_threshold_percent")
                ),
                "max_rollover_count": mapping.get("max_rollover_count"),
                "overage_limit": override.get("overage_limit", mapping.get("overage_limit")),
                "rollover_percentage": mapping.get("rollover_percentage"),
                "rollover_timeframe_count": mapping.get("rollover_timeframe_count"),
                "rollover_timeframe_interval": mapping.get("rollover_timeframe_interval"),
            }
        )
    return cart


def _product_meters(emu: Emulator, product: Obj) -> tuple[list[Obj], list[Obj]]:
    price = product["price"]
    meters: list[Obj] = []
    links: list[Obj] = []
    for m in price.get("meters") or []:
        meter = emu.state.meters.get(m["meter_id"])
        if meter is None:
            continue
        meters.append(
            {
                "currency": price["currency"],
                "free_threshold": m.get("free_threshold") or 0,
                "measurement_unit": meter["measurement_unit"],
                "meter_id": meter["id"],
                "name": meter["name"],
                "description": meter.get("description"),
                "price_per_unit": m.get("price_per_unit"),
            }
        )
        if m.get("credit_entitlement_id"):
            links.append(
                {
                    "credit_entitlement_id": m["credit_entitlement_id"],
                    "meter_id": meter["id"],
                    "meter_name": meter["name"],
                    "meter_units_per_credit": m["meter_units_per_credit"],
                    "product_id": product["product_id"],
                }
            )
    return meters, links


def subscription(emu: Emulator, s: Obj) -> Obj:
    out = public(s)
    out["customer"] = customer_limited(emu, s["customer_id"])
    del out["customer_id"]
    product = emu.state.products.get(s["product_id"])
    if product is not None:
        out["meters"], out["meter_credit_entitlement_cart"] = _product_meters(emu, product)
        out["credit_entitlement_cart"] = _product_credit_cart(emu, s, product)
    else:
        out["meters"], out["meter_credit_entitlement_cart"], out["credit_entitlement_cart"] = [], [], []
    return out


def subscription_list_item(emu: Emulator, s: Obj) -> Obj:
    out = subscription(emu, s)
    for key in ("addons", "credit_entitlement_cart", "meter_credit_entitlement_cart", "meters",
                "cancellation_comment", "cancellation_feedback", "custom_field_responses", "expires_at"):
        out.pop(key, None)
    out["discounts"] = []
    product = emu.state.products.get(s["product_id"])
    out["product_name"] = product.get("name") if product else None
    return out


def product(emu: Emulator, p: Obj) -> Obj:
    out = public(p)
    price = dict(p["price"])
    if price.get("meters"):
        meters = []
        for m in price["meters"]:
            meter = emu.state.meters.get(m["meter_id"]) or {}
            meters.append({**m, "name": meter.get("name"), "description": meter.get("description"),
                           "measurement_unit": meter.get("measurement_unit")})
        price["meters"] = meters
    out["price"] = price
    mappings = []
    for mapping in p["credit_entitlements"]:
        ce = emu.state.credit_entitlements.get(mapping["credit_entitlement_id"]) or {}
        mappings.append({**mapping, "credit_entitlement_name": ce.get("name", ""),
                         "credit_entitlement_unit": ce.get("unit", "")})
    out["credit_entitlements"] = mappings
    return out


def product_list_item(emu: Emulator, p: Obj) -> Obj:
    full = product(emu, p)
    price = full["price"]
    amount = price.get("price") if price["type"] != "usage_based_price" else price.get("fixed_price")
    return {
        "business_id": full["business_id"],
        "created_at": full["created_at"],
        "entitlements": [],
        "is_recurring": full["is_recurring"],
        "metadata": full["metadata"],
        "product_id": full["product_id"],
        "tax_category": full["tax_category"],
        "updated_at": full["updated_at"],
        "currency": price["currency"],
        "description": full.get("description"),
        "image": None,
        "name": full.get("name"),
        "price": amount,
        "price_detail": price,
        "pricing_mode": full.get("pricing_mode"),
        "tax_inclusive": price.get("tax_inclusive"),
    }


def credit_ledger_entry(entry: Obj) -> Obj:
    return public(entry)


def ledger_entry_response(entry: Obj) -> Obj:
    return {
        "id": entry["id"],
        "amount": entry["amount"],
        "balance_after": entry["balance_after"],
        "balance_before": entry["balance_before"],
        "created_at": entry["created_at"],
        "credit_entitlement_id": entry["credit_entitlement_id"],
        "customer_id": entry["customer_id"],
        "entry_type": "credit" if entry["is_credit"] else "debit",
        "is_credit": entry["is_credit"],
        "metadata": entry["metadata"],
        "overage_after": entry["overage_after"],
        "overage_before": entry["overage_before"],
        "grant_id": entry["grant_id"],
        "reason": entry.get("_reason"),
    }


def credit_entitlement(ce: Obj) -> Obj:
    return public(ce)


def render_ref(emu: Emulator, kind: str, ref_id: str) -> Obj:
    state = emu.state
    if kind == "payment":
        return payment(emu, state.payments[ref_id])
    if kind == "subscription":
        return subscription(emu, state.subscriptions[ref_id])
    if kind == "refund":
        return refund(emu, state.refunds[ref_id])
    if kind == "dispute":
        return dispute(state.disputes[ref_id])
    if kind == "credit_ledger_entry":
        return credit_ledger_entry(state.ledger[ref_id])
    raise KeyError(kind)


