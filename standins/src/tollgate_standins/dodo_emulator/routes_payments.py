"""`/payments`, `/refunds` and `/disputes` (read side; disputes are raised via the control API)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends

from . import render
from .billing import create_refund, get_payment
from .deps import Emu, Page, newest_first, require_auth
from .errors import not_found
from .schemas import RefundCreate
from .state import Obj
from .timeutil import parse_dt

router = APIRouter(dependencies=[Depends(require_auth)], tags=["payments"])


def _in_range(created_at: str, gte: datetime | None, lte: datetime | None) -> bool:
    created = parse_dt(created_at)
    return (gte is None or created >= parse_dt(gte)) and (lte is None or created <= parse_dt(lte))


@router.get("/payments/{payment_id}")
async def retrieve_payment(payment_id: str, emu: Emu) -> Obj:
    return render.payment(emu, get_payment(emu, payment_id))


@router.get("/payments")
async def list_payments(
    emu: Emu,
    page: Page,
    customer_id: str | None = None,
    subscription_id: str | None = None,
    product_id: str | None = None,
    status: str | None = None,
    currency: str | None = None,
    brand_id: str | None = None,
    created_at_gte: datetime | None = None,
    created_at_lte: datetime | None = None,
) -> Obj:
    items = []
    for p in newest_first(list(emu.state.payments.values())):
        if customer_id is not None and p["_customer_id"] != customer_id:
            continue
        if subscription_id is not None and subscription_id not in p["subscription_ids"]:
            continue
        if product_id is not None and product_id not in {line["item_id"] for line in p["_lines"]}:
            continue
        if status is not None and p["status"] != status:
            continue
        if currency is not None and p["currency"] != currency:
            continue
        if brand_id is not None and p["brand_id"] != brand_id:
            continue
        if not _in_range(p["created_at"], created_at_gte, created_at_lte):
            continue
        items.append(p)
    return {"items": [render.payment_list_item(emu, p) for p in page.slice(items)]}


@router.post("/refunds")
async def create(body: RefundCreate, emu: Emu) -> Obj:
    return render.refund(emu, create_refund(emu, body))


@router.get("/refunds/{refund_id}")
async def retrieve_refund(refund_id: str, emu: Emu) -> Obj:
    refund = emu.state.refunds.get(refund_id)
    if refund is None:
        raise not_found("refund", refund_id)
    return render.refund(emu, refund)


@router.get("/refunds")
async def list_refunds(
    emu: Emu,
    page: Page,
    customer_id: str | None = None,
    subscription_id: str | None = None,
    status: str | None = None,
    created_at_gte: datetime | None = None,
    created_at_lte: datetime | None = None,
) -> Obj:
    items = []
    for r in newest_first(list(emu.state.refunds.values())):
        payment = emu.state.payments[r["payment_id"]]
        if customer_id is not None and r["_customer_id"] != customer_id:
            continue
        if subscription_id is not None and subscription_id not in payment["subscription_ids"]:
            continue
        if status is not None and r["status"] != status:
            continue
        if not _in_range(r["created_at"], created_at_gte, created_at_lte):
            continue
        items.append(r)
    return {"items": [render.refund_list_item(r) for r in page.slice(items)]}


@router.get("/disputes/{dispute_id}")
async def retrieve_dispute(dispute_id: str, emu: Emu) -> Obj:
    dispute = emu.state.disputes.get(dispute_id)
    if dispute is None:
        raise not_found("dispute", dispute_id)
    return render.dispute_full(emu, dispute)


@router.get("/disputes")
async def list_disputes(
    emu: Emu, page: Page, customer_id: str | None = None, dispute_status: str | None = None
) -> Obj:
    items = [
        d for d in newest_first(list(emu.state.disputes.values()))
        if (customer_id is None or d["_customer_id"] == customer_id)
        and (dispute_status is None or d["dispute_status"] == dispute_status)
    ]
    return {"items": [render.dispute_list_item(d) for d in page.slice(items)]}
