"""Test-control API under `/_emulator`: drive payments and lifecycles, inject faults, inspect state.

These routes do not exist on Dodo; they need no API key and are never subject to injected faults.
"""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from pydantic import BaseModel

from . import render
from .billing import (
    decline_checkout,
    dispute_payment,
    expire,
    fail_renewal,
    get_payment,
    get_subscription,
    pay_checkout,
    renew,
)
from .deps import Emu
from .faults import FaultConfig
from .routes_checkouts import get_session
from .schemas import CheckoutPayIn, DisputeControlIn
from .state import Obj

router = APIRouter(prefix="/_emulator", tags=["emulator control"])


class CardControlIn(BaseModel):
    decline: bool


@router.post("/reset")
async def reset(emu: Emu) -> Obj:
    emu.reset()
    return {"ok": True}


@router.get("/faults")
async def get_faults(emu: Emu) -> Obj:
    return emu.faults.config.model_dump(mode="json") | {"injected": emu.faults.injected}


@router.put("/faults")
async def put_faults(config: FaultConfig, emu: Emu) -> Obj:
    emu.faults.set(config)
    return config.model_dump(mode="json") | {"injected": 0}


@router.delete("/faults")
async def clear_faults(emu: Emu) -> Obj:
    emu.faults.set(FaultConfig())
    return {"ok": True}


@router.post("/checkouts/{session_id}/pay")
async def pay(session_id: str, emu: Emu, body: CheckoutPayIn | None = None) -> Obj:
    session = get_session(emu, session_id)
    payment = pay_checkout(emu, session, body.email if body else None, body.name if body else None)
    return {
        "session_id": session_id,
        "payment_id": payment["payment_id"],
        "status": payment["status"],
        "customer_id": payment["_customer_id"],
        "subscription_id": session["subscription_ids"][0] if session["subscription_ids"] else None,
        "subscription_ids": session["subscription_ids"],
    }


@router.post("/checkouts/{session_id}/decline")
async def decline(session_id: str, emu: Emu, body: CheckoutPayIn | None = None) -> Obj:
    session = get_session(emu, session_id)
    payment = decline_checkout(emu, session, body.email if body else None, body.name if body else None)
    return {
        "session_id": session_id,
        "payment_id": payment["payment_id"],
        "status": payment["status"],
        "customer_id": payment["_customer_id"],
        "subscription_id": None,
        "subscription_ids": [],
    }


@router.post("/payments/{payment_id}/dispute")
async def dispute(payment_id: str, body: DisputeControlIn, emu: Emu) -> Obj:
    payment = get_payment(emu, payment_id)
    return render.dispute(dispute_payment(emu, payment, body.outcome, body.amount, body.remarks))


def _subscription_result(sub: Obj, payment: Obj | None) -> Obj:
    return {
        "subscription_id": sub["subscription_id"],
        "status": sub["status"],
        "payment_id": payment["payment_id"] if payment else None,
        "payment_status": payment["status"] if payment else None,
        "previous_billing_date": sub["previous_billing_date"],
        "next_billing_date": sub["next_billing_date"],
    }


@router.post("/subscriptions/{subscription_id}/renew")
async def renew_subscription(subscription_id: str, emu: Emu) -> Obj:
    sub = get_subscription(emu, subscription_id)
    return _subscription_result(sub, renew(emu, sub))


@router.post("/subscriptions/{subscription_id}/fail-renewal")
async def fail_subscription_renewal(subscription_id: str, emu: Emu) -> Obj:
    sub = get_subscription(emu, subscription_id)
    return _subscription_result(sub, fail_renewal(emu, sub))


@router.post("/subscriptions/{subscription_id}/expire")
async def expire_subscription(subscription_id: str, emu: Emu) -> Obj:
    sub = get_subscription(emu, subscription_id)
    event = expire(emu, sub)
    return _subscription_result(sub, None) | {"event": event}


@router.put("/subscriptions/{subscription_id}/card")
async def set_card(subscription_id: str, body: CardControlIn, emu: Emu) -> Obj:
    sub = get_subscription(emu, subscription_id)
    sub["_card_declines"] = body.decline
    return {"subscription_id": subscription_id, "decline": body.decline}


@router.post("/deduct")
async def deduct_now(emu: Emu) -> Obj:
    return {"debits": emu.background_pass()}


@router.get("/webhook-deliveries")
async def webhook_deliveries(
    emu: Emu, type: str | None = None, status: str | None = None, endpoint_id: str | None = None
) -> Obj:
    items = [
        {k: v for k, v in d.items() if k != "body"}
        for d in emu.state.deliveries.values()
        if (type is None or d["type"] == type)
        and (status is None or d["status"] == status)
        and (endpoint_id is None or d["endpoint_id"] == endpoint_id)
    ]
    return {"items": items}


@router.post("/webhooks/redeliver")
async def redeliver(emu: Emu, type: str | None = None) -> Obj:
    return {"redelivered": emu.webhooks.redeliver(type)}


@router.get("/stats")
async def stats(emu: Emu) -> Obj:
    state = emu.state
    return {
        "customers": len(state.customers),
        "products": len(state.products),
        "addons": len(state.addons),
        "meters": len(state.meters),
        "credit_entitlements": len(state.credit_entitlements),
        "credit_grants": len(state.grants),
        "credit_ledger_entries": len(state.ledger),
        "checkouts": len(state.checkouts),
        "payments": len(state.payments),
        "payments_by_status": dict(Counter(p["status"] for p in state.payments.values())),
        "refunds": len(state.refunds),
        "disputes": len(state.disputes),
        "subscriptions": len(state.subscriptions),
        "subscriptions_by_status": dict(Counter(s["status"] for s in state.subscriptions.values())),
        "events": len(state.events),
        "webhook_endpoints": len(state.webhook_endpoints),
        "webhook_messages": len(state.messages),
        "webhook_deliveries": len(state.deliveries),
        "webhook_deliveries_by_status": dict(Counter(d["status"] for d in state.deliveries.values())),
        "faults_injected": emu.faults.injected,
        "counters": dict(state.counters),
    }


