"""`/customers`: create (matched by email), read, update, list, credit-entitlement balances."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from . import render
from .credits import balance_of, get_customer
from .decimals import fmt
from .deps import Emu, Page, newest_first, require_auth
from .ids import new_id
from .schemas import CustomerCreate, CustomerUpdate
from .state import Obj
from .timeutil import now_iso, parse_dt

router = APIRouter(dependencies=[Depends(require_auth)], tags=["customers"])


def find_customer_by_email(emu: Emu, email: str) -> Obj | None:
    wanted = email.strip().lower()
    return next((c for c in emu.state.customers.values() if c["email"].lower() == wanted), None)


def create_customer(emu: Emu, email: str, name: str, **extra: object) -> Obj:
    # Dodo keeps one customer per email within a business; a repeat returns the existing one.
    existing = find_customer_by_email(emu, email)
    if existing is not None:
        return existing
    customer: Obj = {
        "customer_id": new_id("cus"),
        "business_id": emu.settings.business_id,
        "email": email,
        "name": name,
        "created_at": now_iso(),
        "metadata": extra.get("metadata") or {},
        "phone_number": extra.get("phone_number"),
        "preferred_locale": extra.get("preferred_locale"),
        "blocked_at": None,
        "blocklist_entry_id": None,
    }
    emu.state.customers[customer["customer_id"]] = customer
    return customer


@router.post("/customers")
async def create(body: CustomerCreate, emu: Emu) -> Obj:
    customer = create_customer(
        emu, body.email, body.name, metadata=body.metadata, phone_number=body.phone_number,
        preferred_locale=body.preferred_locale,
    )
    return render.customer(customer)


@router.get("/customers/{customer_id}")
async def retrieve(customer_id: str, emu: Emu) -> Obj:
    return render.customer(get_customer(emu, customer_id))


@router.patch("/customers/{customer_id}")
async def update(customer_id: str, body: CustomerUpdate, emu: Emu) -> Obj:
    customer = get_customer(emu, customer_id)
    for field in body.model_fields_set:
        value = getattr(body, field)
        if value is None and field in ("email", "name"):
            continue  # required on the Customer model, so null cannot clear them
        customer[field] = {} if value is None and field == "metadata" else value
    return render.customer(customer)


@router.get("/customers")
async def list_customers(
    emu: Emu,
    page: Page,
    email: str | None = None,
    name: str | None = None,
    created_at_gte: Annotated[datetime | None, Query()] = None,
    created_at_lte: Annotated[datetime | None, Query()] = None,
) -> Obj:
    items = []
    for c in newest_first(list(emu.state.customers.values())):
        created = parse_dt(c["created_at"])
        if email is not None and c["email"].lower() != email.lower():
            continue
        if name is not None and name.lower() not in c["name"].lower():
            continue
        if created_at_gte is not None and created < parse_dt(created_at_gte):
            continue
        if created_at_lte is not None and created > parse_dt(created_at_lte):
            continue
        items.append(c)
    return {"items": [render.customer(c) for c in page.slice(items)]}


@router.get("/customers/{customer_id}/credit-entitlements")
async def list_credit_entitlements(customer_id: str, emu: Emu) -> Obj:
    get_customer(emu, customer_id)
    items = []
    for balance in emu.state.balances.values():
        if balance["customer_id"] != customer_id:
            continue
        ce = emu.state.credit_entitlements[balance["credit_entitlement_id"]]
        if ce.get("_deleted"):
            continue
        items.append(
            {
                "credit_entitlement_id": ce["id"],
                "name": ce["name"],
                "unit": ce["unit"],
                "description": ce.get("description"),
                "balance": fmt(balance_of(emu, ce["id"], customer_id), ce["precision"]),
                "overage": fmt(balance["overage"], ce["precision"]),
            }
        )
    return {"items": items}
