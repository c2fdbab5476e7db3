"""`/products` (one-time, recurring and usage-based prices, attached credits) and `/addons`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, Response

from . import render
from .credits import check_amount_precision, get_entitlement
from .decimals import fmt, parse_decimal
from .deps import Emu, Page, newest_first, require_auth
from .errors import not_found, unprocessable
from .ids import new_id
from .metering import register_links
from .schemas import (
    AddonCreate,
    AddonUpdate,
    AttachCreditIn,
    OneTimePriceIn,
    ProductCreate,
    ProductUpdate,
    RecurringPriceIn,
    UsageBasedPriceIn,
)
from .state import Obj, public
from .timeutil import now_iso

router = APIRouter(dependencies=[Depends(require_auth)], tags=["products"])

_MAPPING_OPTIONAL = (
    "currency", "expires_after_days", "low_balance_threshold_percent", "max_rollover_count", "overage_limit",
    "price_per_unit", "rollover_percentage", "rollover_timeframe_count", "rollover_timeframe_interval",
    "trial_credits",
)


def get_product(emu: Emu, product_id: str) -> Obj:
    product = emu.state.products.get(product_id)
    if product is None:
        raise not_found("product", product_id)
    return product


def get_addon(emu: Emu, addon_id: str) -> Obj:
    addon = emu.state.addons.get(addon_id)
    if addon is None:
        raise not_found("addon", addon_id)
    return addon


def _positive_decimal(value: str, field: str) -> Decimal:
    dec = parse_decimal(value, field)
    if dec <= 0:
        raise unprocessable(f"{field} must be greater than zero")
    return dec


def build_price(emu: Emu, price: OneTimePriceIn | RecurringPriceIn | UsageBasedPriceIn) -> Obj:
    out: Obj = price.model_dump(exclude_none=True, exclude={"meters"})
    if isinstance(price, UsageBasedPriceIn):
        meters = []
        for m in price.meters or []:
            if m.meter_id not in emu.state.meters:
                raise not_found("meter", m.meter_id)
            if m.price_per_unit is not None:
                _positive_decimal(m.price_per_unit, "price_per_unit")
            entry = m.model_dump(exclude_none=True)
            if m.credit_entitlement_id is not None:
                get_entitlement(emu, m.credit_entitlement_id)
                if m.meter_units_per_credit is None:
                    raise unprocessable("meter_units_per_credit is required when credit_entitlement_id is set")
                entry["meter_units_per_credit"] = str(
                    _positive_decimal(m.meter_units_per_credit, "meter_units_per_credit")
                )
            meters.append(entry)
        out["meters"] = meters
    return out


def build_mappings(emu: Emu, attached: list[AttachCreditIn]) -> list[Obj]:
    mappings: list[Obj] = []
    seen: set[str] = set()
    for item in attached:
        ce = get_entitlement(emu, item.credit_entitlement_id)
        if ce["id"] in seen:
            raise unprocessable(f"credit entitlement {ce['id']} is attached twice")
        seen.add(ce["id"])
        credits = parse_decimal(item.credits_amount, "credits_amount")
        if credits < 0:
            raise unprocessable("credits_amount must not be negative")
        check_amount_precision(ce, credits, "credits_amount")
        mapping: Obj = {
            "id": new_id("cem"),
            "credit_entitlement_id": ce["id"],
            "credits_amount": fmt(credits, ce["precision"]),
            "overage_behavior": item.overage_behavior or ce["overage_behavior"],
            "overage_enabled": ce["overage_enabled"] if item.overage_enabled is None else item.overage_enabled,
            "proration_behavior": item.proration_behavior or "prorate",
            "rollover_enabled": ce["rollover_enabled"] if item.rollover_enabled is None else item.rollover_enabled,
            "trial_credits_expire_after_trial": bool(item.trial_credits_expire_after_trial),
        }
        for field in _MAPPING_OPTIONAL:
            mapping[field] = getattr(item, field)
        mappings.append(mapping)
    return mappings


def _check_addons(emu: Emu, addon_ids: list[str] | None) -> list[str] | None:
    for addon_id in addon_ids or []:
        get_addon(emu, addon_id)
    return addon_ids


@router.post("/products")
async def create_product(body: ProductCreate, emu: Emu) -> Obj:
    now = now_iso()
    product: Obj = {
        "product_id": new_id("pdt"),
        "business_id": emu.settings.business_id,
        "brand_id": body.brand_id or emu.settings.brand_id,
        "created_at": now,
        "updated_at": now,
        "name": body.name,
        "description": body.description,
        "price": build_price(emu, body.price),
        "is_recurring": body.price.type != "one_time_price",
        "tax_category": body.tax_category,
        "metadata": body.metadata or {},
        "credit_entitlements": build_mappings(emu, body.credit_entitlements or []),
        "entitlements": [],
        "license_key_enabled": bool(body.license_key_enabled),
        "addons": _check_addons(emu, body.addons),
        "image": None,
        "pricing_mode": body.pricing_mode,
        "product_collection_id": None,
        "digital_product_delivery": None,
        "license_key_activation_message": None,
        "license_key_activations_limit": None,
        "license_key_duration": None,
        "_archived": False,
    }
    emu.state.products[product["product_id"]] = product
    register_links(emu)
    return render.product(emu, product)


@router.get("/products/{product_id}")
async def retrieve_product(product_id: str, emu: Emu) -> Obj:
    return render.product(emu, get_product(emu, product_id))


@router.patch("/products/{product_id}")
async def update_product(product_id: str, body: ProductUpdate, emu: Emu) -> Response:
    product = get_product(emu, product_id)
    changes: dict[str, Any] = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if field == "price":
            if value is not None:
                changes["price"] = build_price(emu, value)
                changes["is_recurring"] = value.type != "one_time_price"
        elif field == "credit_entitlements":
            changes["credit_entitlements"] = build_mappings(emu, value or [])
        elif field == "addons":
            changes["addons"] = _check_addons(emu, value)
        elif field == "metadata":
            changes["metadata"] = value or {}
        elif field in ("name", "tax_category") and value is None:
            continue
        else:
            changes[field] = value
    product.update(changes, updated_at=now_iso())
    register_links(emu)
    return Response(status_code=200)


@router.get("/products")
async def list_products(
    emu: Emu, page: Page, archived: bool = False, recurring: bool | None = None, brand_id: str | None = None
) -> Obj:
    items = [
        p for p in newest_first(list(emu.state.products.values()))
        if bool(p["_archived"]) == archived
        and (recurring is None or p["is_recurring"] == recurring)
        and (brand_id is None or p["brand_id"] == brand_id)
    ]
    return {"items": [render.product_list_item(emu, p) for p in page.slice(items)]}


@router.delete("/products/{product_id}")
async def archive_product(product_id: str, emu: Emu) -> Response:
    get_product(emu, product_id)["_archived"] = True
    return Response(status_code=200)


@router.post("/products/{product_id}/unarchive")
async def unarchive_product(product_id: str, emu: Emu) -> Response:
    get_product(emu, product_id)["_archived"] = False
    register_links(emu)
    return Response(status_code=200)


# -- add-ons ----------------------------------------------------------------------------------

@router.post("/addons")
async def create_addon(body: AddonCreate, emu: Emu) -> Obj:
    now = now_iso()
    addon: Obj = {
        "id": new_id("adn"),
        "business_id": emu.settings.business_id,
        "name": body.name,
        "price": body.price,
        "currency": body.currency,
        "tax_category": body.tax_category,
        "description": body.description,
        "image": None,
        "created_at": now,
        "updated_at": now,
        "_archived": False,
    }
    emu.state.addons[addon["id"]] = addon
    return public(addon)


@router.get("/addons/{addon_id}")
async def retrieve_addon(addon_id: str, emu: Emu) -> Obj:
    return public(get_addon(emu, addon_id))


@router.patch("/addons/{addon_id}")
async def update_addon(addon_id: str, body: AddonUpdate, emu: Emu) -> Obj:
    addon = get_addon(emu, addon_id)
    for field in body.model_fields_set:
        value = getattr(body, field)
        if value is None and field != "description":
            continue
        addon[field] = value
    addon["updated_at"] = now_iso()
    return public(addon)


@router.get("/addons")
async def list_addons(emu: Emu, page: Page, archived: bool = False) -> Obj:
    items = [a for a in newest_first(list(emu.state.addons.values())) if bool(a["_archived"]) == archived]
    return {"items": [public(a) for a in page.slice(items)]}


@router.delete("/addons/{addon_id}")
async def archive_addon(addon_id: str, emu: Emu) -> Response:
    get_addon(emu, addon_id)["_archived"] = True
    return Response(status_code=200)


@router.post("/addons/{addon_id}/unarchive")
async def unarchive_addon(addon_id: str, emu: Emu) -> Response:
    get_addon(emu, addon_id)["_archived"] = False
    return Response(status_code=200)
