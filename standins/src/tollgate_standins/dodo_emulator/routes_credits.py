"""`/credit-entitlements`: CRUD, per-customer balances, grants, ledger, manual ledger entries."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from . import render
from .credits import (
    balance_key,
    check_amount_precision,
    debit_credits,
    ensure_balance,
    get_customer,
    get_entitlement,
    grant_credits,
    grant_status,
    render_balance,
    render_grant,
)
from .decimals import parse_decimal
from .deps import Emu, Page, newest_first, require_auth
from .errors import ApiError, bad_request, unprocessable
from .ids import new_id
from .schemas import CreditEntitlementCreate, CreditEntitlementUpdate, LedgerEntryIn, Metadata
from .state import Obj
from .timeutil import now_iso, parse_dt

router = APIRouter(dependencies=[Depends(require_auth)], tags=["credit entitlements"])

MAX_AMOUNT = Decimal(10) ** 10
MAX_LEDGER_METADATA_KEYS = 50
MAX_LEDGER_KEY_LENGTH = 40
MAX_LEDGER_VALUE_LENGTH = 500


def _check_consistency(ce: Obj) -> None:
    if ce["overage_enabled"] and ce.get("price_per_unit") is None:
        raise unprocessable("price_per_unit is required when overage is enabled")
    if ce.get("price_per_unit") is not None:
        if parse_decimal(ce["price_per_unit"], "price_per_unit") <= 0:
            raise unprocessable("price_per_unit must be greater than zero")
        if ce.get("currency") is None:
            raise unprocessable("currency is required when price_per_unit is set")
    if (ce.get("rollover_timeframe_count") is None) != (ce.get("rollover_timeframe_interval") is None):
        raise unprocessable("rollover_timeframe_count and rollover_timeframe_interval go together")


@router.post("/credit-entitlements", status_code=201)
async def create_entitlement(body: CreditEntitlementCreate, emu: Emu) -> Obj:
    now = now_iso()
    ce: Obj = body.model_dump()
    ce.update(
        id=new_id("cde"),
        business_id=emu.settings.business_id,
        overage_behavior=body.overage_behavior or "forgive_at_reset",
        created_at=now,
        updated_at=now,
        _deleted=False,
    )
    _check_consistency(ce)
    emu.state.credit_entitlements[ce["id"]] = ce
    return render.credit_entitlement(ce)


@router.get("/credit-entitlements/{ce_id}")
async def retrieve_entitlement(ce_id: str, emu: Emu) -> Obj:
    return render.credit_entitlement(get_entitlement(emu, ce_id))


@router.patch("/credit-entitlements/{ce_id}")
async def update_entitlement(ce_id: str, body: CreditEntitlementUpdate, emu: Emu) -> Response:
    ce = get_entitlement(emu, ce_id)
    updated = dict(ce)
    for field in body.model_fields_set:
        value = getattr(body, field)
        if value is None and field in ("name", "unit", "overage_enabled", "rollover_enabled", "overage_behavior"):
            continue  # required on the model, so an explicit null cannot clear them
        updated[field] = value
    _check_consistency(updated)
    ce.update(updated, updated_at=now_iso())
    return Response(status_code=200)


@router.get("/credit-entitlements")
async def list_entitlements(emu: Emu, page: Page, deleted: bool = False) -> Obj:
    items = [c for c in newest_first(list(emu.state.credit_entitlements.values())) if bool(c["_deleted"]) == deleted]
    return {"items": [render.credit_entitlement(c) for c in page.slice(items)]}


@router.delete("/credit-entitlements/{ce_id}")
async def delete_entitlement(ce_id: str, emu: Emu) -> Response:
    ce = get_entitlement(emu, ce_id)
    ce.update(_deleted=True, updated_at=now_iso())
    return Response(status_code=200)


@router.post("/credit-entitlements/{ce_id}/undelete")
async def undelete_entitlement(ce_id: str, emu: Emu) -> Response:
    ce = emu.state.credit_entitlements.get(ce_id)
    if ce is None or not ce["_deleted"]:
        # Dodo's own docstring says this case answers 500; reproduce it faithfully.
        return JSONResponse({"code": "INTERNAL_SERVER_ERROR", "message": "credit entitlement not found or not deleted"},
                            status_code=500)
    ce.update(_deleted=False, updated_at=now_iso())
    return Response(status_code=200)


@router.get("/credit-entitlements/{ce_id}/balances")
async def list_balances(ce_id: str, emu: Emu, page: Page, customer_id: str | None = None) -> Obj:
    get_entitlement(emu, ce_id)
    items = [
        b for b in newest_first(list(emu.state.balances.values()))
        if b["credit_entitlement_id"] == ce_id and (customer_id is None or b["customer_id"] == customer_id)
    ]
    return {"items": [render_balance(emu, b) for b in page.slice(items)]}


@router.get("/credit-entitlements/{ce_id}/balances/{customer_id}")
async def retrieve_balance(ce_id: str, customer_id: str, emu: Emu) -> Obj:
    get_entitlement(emu, ce_id)
    get_customer(emu, customer_id)
    return render_balance(emu, ensure_balance(emu, ce_id, customer_id))


def _check_ledger_metadata(metadata: Metadata | None) -> None:
    metadata = metadata or {}
    if len(metadata) > MAX_LEDGER_METADATA_KEYS:
        raise ApiError(400, "MAXIMUM_KEYS_REACHED", f"metadata has more than {MAX_LEDGER_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if len(key) > MAX_LEDGER_KEY_LENGTH:
            raise bad_request(f"metadata key longer than {MAX_LEDGER_KEY_LENGTH} characters")
        if isinstance(value, str) and len(value) > MAX_LEDGER_VALUE_LENGTH:
            raise bad_request(f"metadata value of {key!r} longer than {MAX_LEDGER_VALUE_LENGTH} characters")


@router.post("/credit-entitlements/{ce_id}/balances/{customer_id}/ledger-entries", status_code=201)
async def create_ledger_entry(ce_id: str, customer_id: str, body: LedgerEntryIn, emu: Emu) -> Obj:
    ce = get_entitlement(emu, ce_id)
    get_customer(emu, customer_id)
    amount = parse_decimal(body.amount, "amount")
    if amount <= 0:
        raise bad_request("amount must be greater than zero")
    if abs(amount) >= MAX_AMOUNT:
        raise bad_request("amount must be below 10^10")
    check_amount_precision(ce, amount, "amount")
    _check_ledger_metadata(body.metadata)
    idempotency = f"{balance_key(ce_id, customer_id)}:{body.idempotency_key}" if body.idempotency_key else None
    if idempotency is not None and idempotency in emu.state.ledger_idempotency:
        raise ApiError(409, "IDEMPOTENCY_KEY_ALREADY_EXISTS",
                       f"a ledger entry with idempotency_key {body.idempotency_key!r} already exists")
    metadata = dict(body.metadata or {})
    if body.entry_type == "credit":
        entry, _ = grant_credits(
            emu, ce_id, customer_id, amount, source_type="api", source_id=body.idempotency_key,
            transaction_type="manual_adjustment", webhook="credit.manual_adjustment", reference_type="api",
            reference_id=body.idempotency_key, expires_at=parse_dt(body.expires_at) if body.expires_at else None,
            metadata=metadata, description=body.reason, reason=body.reason,
        )
    else:
        entry = debit_credits(
            emu, ce_id, customer_id, amount, record_shortfall=False, transaction_type="manual_adjustment",
            webhook="credit.manual_adjustment", reference_type="api", reference_id=body.idempotency_key,
            metadata=metadata, description=body.reason, reason=body.reason,
        )
    if idempotency is not None:
        emu.state.ledger_idempotency[idempotency] = entry["id"]
    return render.ledger_entry_response(entry)


@router.get("/credit-entitlements/{ce_id}/balances/{customer_id}/grants")
async def list_grants(
    ce_id: str,
    customer_id: str,
    emu: Emu,
    page: Page,
    status: Literal["active", "expired", "depleted"] | None = None,
) -> Obj:
    get_entitlement(emu, ce_id)
    get_customer(emu, customer_id)
    items = [
        g for g in newest_first(list(emu.state.grants.values()))
        if g["credit_entitlement_id"] == ce_id and g["customer_id"] == customer_id
        and (status is None or grant_status(g) == status)
    ]
    return {"items": [render_grant(emu, g) for g in page.slice(items)]}


@router.get("/credit-entitlements/{ce_id}/balances/{customer_id}/ledger")
async def list_ledger(
    ce_id: str,
    customer_id: str,
    emu: Emu,
    page: Page,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    transaction_type: str | None = None,
) -> Obj:
    get_entitlement(emu, ce_id)
    get_customer(emu, customer_id)
    items = []
    for entry in newest_first(list(emu.state.ledger.values())):
        if entry["credit_entitlement_id"] != ce_id or entry["customer_id"] != customer_id:
            continue
        if transaction_type is not None and entry["transaction_type"] != transaction_type:
            continue
        created = parse_dt(entry["created_at"])
        if start_date is not None and created < parse_dt(start_date):
            continue
        if end_date is not None and created > parse_dt(end_date):
            continue
        items.append(entry)
    return {"items": [render.credit_ledger_entry(e) for e in page.slice(items)]}


