"""Admin API additions for the console (`/admin/v1`, the admin token like every admin route):
minting a one-time sign-in link, and importing the demo's synthetic usage history."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from tollgate_ledger import operations
from tollgate_ledger.admin import LedgerDep, require_admin
from tollgate_ledger.console import links, synthetic
from tollgate_ledger.console.pages import PREFIX
from tollgate_ledger.console.runtime import Console
from tollgate_ledger.errors import ErrorBody
from tollgate_money import PriceBook


class LinkIn(BaseModel):
    ttl_s: int | None = Field(None, ge=60, le=7 * 24 * 3600, description="Lifetime; default LEDGER_CONSOLE_LINK_TTL_S")


class LinkOut(BaseModel):
    customer_id: str
    url: str = Field(description="Single use. Opening it shows a button; pressing the button signs in.")
    expires_at: datetime


class SyntheticIn(BaseModel):
    days: int = Field(30, ge=1, le=60)
    requests_per_day: int = Field(40, ge=1, le=500)


class SyntheticOut(BaseModel):
    customer_id: str
    generated: int
    inserted: int = Field(description="0 on a repeat: the history is deterministic per customer and day")
    cost_nanos: int


def admin_router(console: Console) -> APIRouter:
    router = APIRouter(
        prefix="/admin/v1", tags=["console"], dependencies=[Depends(require_admin)],
        responses={code: {"model": ErrorBody} for code in (401, 403, 404, 422)},
    )

    @router.post("/customers/{customer_id}/console-link", response_model=LinkOut,
                 summary="Mint a one-time console sign-in link for a customer")
    async def console_link(customer_id: str, ledger: LedgerDep, body: LinkIn | None = None) -> LinkOut:
        await operations.get_customer(ledger, customer_id)
        ttl = body.ttl_s if body and body.ttl_s else console.settings.link_ttl_s
        token, expires_at = await links.mint(ledger.pool, customer_id, ttl)
        base = console.ledger_settings.public_base_url.rstrip("/")
        return LinkOut(customer_id=customer_id, url=f"{base}{PREFIX}/link/{token}", expires_at=expires_at)

    @router.post("/customers/{customer_id}/synthetic-usage", response_model=SyntheticOut,
                 summary="Import demo usage history for the console's charts (not money: no ledger entries)")
    async def synthetic_usage(
        customer_id: str, ledger: LedgerDep, body: SyntheticIn | None = None
    ) -> SyntheticOut:
        await operations.get_customer(ledger, customer_id)
        spec = body or SyntheticIn()
        book = PriceBook.load(ledger.settings.pricing_file)
        requests = synthetic.generate(customer_id, book, days=spec.days, requests_per_day=spec.requests_per_day)
        inserted = await synthetic.store(ledger.pool, customer_id, requests)
        return SyntheticOut(
            customer_id=customer_id, generated=len(requests), inserted=inserted,
            cost_nanos=sum(r.cost_nanos for r in requests),
        )

    return router
