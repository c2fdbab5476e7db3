"""Operator API: a customer's tier and how far the next one is, pinning, and the table in
force. Every route needs the admin credential; errors use the `{"error": {...}}` shape."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr

from tollgate_contracts import subjects
from tollgate_money import Tier, TierTable, format_usd
from tollgate_tier.engine import TierEngine
from tollgate_tier.rules import account_age_days, earned_tier, next_tier
from tollgate_tier.store import CustomerTier


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def _error_body(code: str, message: str, param: str | None, kind: str) -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        kind = "authentication_error" if exc.status == 401 else "invalid_request_error"
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(_error_body(exc.code, exc.message, exc.param, kind), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
        body = _error_body("invalid_request", message, ".".join(loc) or None, "invalid_request_error")
        return JSONResponse(body, 422)


class Limits(BaseModel):
    rpm: int
    tpm: int


class TierRow(BaseModel):
    name: str
    min_spend_nanos: int
    min_spend_usd: str
    min_account_age_days: int
    rpm: int
    tpm: int


class TierTableOut(BaseModel):
    preset: str
    tiers: list[TierRow]


class NextTierOut(BaseModel):
    tier: str
    min_spend_nanos: int
    min_account_age_days: int
    spend_to_go_nanos: int
    spend_to_go_usd: str
    days_to_go: int


class CustomerTierOut(BaseModel):
    customer_id: str
    tier: str
    limits: Limits
    pinned: bool
    pinned_tier: str | None
    earned_tier: str  # what spend and account age earn, pin or not
    lifetime_spend_nanos: int
    lifetime_spend_usd: str
    first_payment_at: datetime | None
    account_age_days: int
    next_tier: NextTierOut | None  # None at the top, or while pinned
    version: int
    recorded: bool  # False: no payment or pin seen yet; the lowest tier applies


class PinIn(BaseModel):
    tier: str | None  # null unpins


def _tier_row(t: Tier) -> TierRow:
    return TierRow(name=t.name, min_spend_nanos=t.min_spend, min_spend_usd=format_usd(t.min_spend),
                   min_account_age_days=t.min_account_age_days, rpm=t.rpm, tpm=t.tpm)


def table_out(table: TierTable) -> TierTableOut:
    return TierTableOut(preset=table.preset, tiers=[_tier_row(t) for t in table.tiers])


def customer_out(table: TierTable, c: CustomerTier) -> CustomerTierOut:
    now = datetime.now(UTC)
    earned = earned_tier(table, c.lifetime_spend_nanos, c.first_payment_at, now)
    current = table.by_name(c.tier.name)
    following = None
    if c.pinned_tier is None and current is not None:
        following = next_tier(table, current, c.lifetime_spend_nanos, c.first_payment_at, now)
    return CustomerTierOut(
        customer_id=c.customer_id, tier=c.tier.name, limits=Limits(rpm=c.tier.rpm, tpm=c.tier.tpm),
        pinned=c.pinned_tier is not None, pinned_tier=c.pinned_tier, earned_tier=earned.name,
        lifetime_spend_nanos=c.lifetime_spend_nanos, lifetime_spend_usd=format_usd(c.lifetime_spend_nanos),
        first_payment_at=c.first_payment_at, account_age_days=account_age_days(c.first_payment_at, now),
        next_tier=None if following is None else NextTierOut(
            tier=following.tier.name, min_spend_nanos=following.tier.min_spend,
            min_account_age_days=following.tier.min_account_age_days,
            spend_to_go_nanos=following.spend_to_go_nanos, spend_to_go_usd=format_usd(following.spend_to_go_nanos),
            days_to_go=following.days_to_go,
        ),
        version=c.version, recorded=c.recorded,
    )


def _customer_id(customer_id: str) -> str:
    try:
        subjects.for_customer(subjects.TIER_CHANGED, customer_id)
    except ValueError:
        raise ApiError(422, "invalid_customer_id", "customer id cannot contain '.', '*', '>' or spaces",
                       "customer_id") from None
    if len(customer_id) > 200:
        raise ApiError(422, "invalid_customer_id", "customer id is too long", "customer_id")
    return customer_id


def admin_router(engine: Callable[[], TierEngine], admin_token: SecretStr) -> APIRouter:
    async def require_admin(authorization: str | None = Header(default=None)) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        expected = admin_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise ApiError(401, "invalid_admin_credential", "this endpoint needs the operator's admin token")

    router = APIRouter(prefix="/admin/v1/tiers", tags=["tiers"], dependencies=[Depends(require_admin)])

    @router.get("", response_model=TierTableOut)
    async def get_table() -> TierTableOut:
        return table_out(engine().table)

    @router.get("/{customer_id}", response_model=CustomerTierOut)
    async def get_customer(customer_id: str) -> CustomerTierOut:
        eng = engine()
        return customer_out(eng.table, await eng.get(_customer_id(customer_id)))

    @router.put("/{customer_id}/pin", response_model=CustomerTierOut)
    async def pin(customer_id: str, body: PinIn) -> CustomerTierOut:
        eng = engine()
        cid = _customer_id(customer_id)
        if body.tier is not None and eng.table.by_name(body.tier) is None:
            names = ", ".join(t.name for t in eng.table.tiers)
            raise ApiError(422, "unknown_tier", f"unknown tier {body.tier!r}; the table in force has {names}", "tier")
        await eng.pin(cid, body.tier)
        return customer_out(eng.table, await eng.get(cid))

    return router
