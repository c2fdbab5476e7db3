"""Operator API for subscriptions and team members, under /admin/v1 (same admin token)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from tollgate_ledger import operations, plan_ops, team
from tollgate_ledger.admin import IssuedKey, KeyIn, LedgerDep, require_admin
from tollgate_ledger.errors import ErrorBody

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422, 502, 503)}
router = APIRouter(prefix="/admin/v1", tags=["subscriptions"], dependencies=[Depends(require_admin)],
                   responses=_ERRORS)


class PlanCheckoutIn(BaseModel):
    plan: Literal["plus", "team"]
    seats: int = Field(1, ge=1, le=1000, description="Team only: seats to buy (the first is in the base price)")


class PlanCheckout(BaseModel):
    customer_id: str
    plan: str
    seats: int
    checkout_url: str | None
    session_id: str
    product_id: str
    monthly_cents: int


class SeatsIn(BaseModel):
    seats: int = Field(ge=1, le=1000)


class SeatChange(BaseModel):
    subscription_id: str
    seats: int = Field(description="Seats paid for now (changes when Dodo's plan_changed webhook arrives)")
    requested_seats: int
    status: Literal["requested", "unchanged"]
    payment_id: str | None


class CancelIn(BaseModel):
    at_period_end: bool = Field(True, description="Keep the plan until the period ends (else end it now)")


class Cancellation(BaseModel):
    subscription_id: str
    status: Literal["requested"]
    at_period_end: bool
    plan_ends_at: datetime | None


class PlanOverrideIn(BaseModel):
    plan: str | None = Field(description="A plan of the price book, 'free', '' (credits only), or null to "
                                         "follow the Dodo subscriptions again")
    seats: int | None = Field(None, ge=1, le=100_000)


class Subscription(BaseModel):
    subscription_id: str
    product_id: str
    plan: str
    status: str
    seats: int
    dodo_period_start: datetime | None
    period_start: datetime
    period_end: datetime | None
    cancel_at_period_end: bool
    cancelled_at: datetime | None
    ended_at: datetime | None
    event_at: datetime
    last_event_type: str


class HotPlan(BaseModel):
    plan: str
    plan_v: int
    cap_nanos: int
    used_nanos: int
    daily_used_nanos: int


class CustomerPlan(BaseModel):
    customer_id: str
    plan: str = Field(description="'' credits only, 'free', or a paid plan")
    plan_v: int
    source: Literal["dodo", "operator", "none"]
    status: str
    seats: int
    members: int
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool
    models: list[str]
    fallback: dict[str, str]
    cap_nanos: int | None
    used_nanos: int = Field(description="List-price usage this period, as posted to the ledger")
    softcap_reached: bool
    daily_cap_nanos: int | None
    daily_used_nanos: int | None
    subscription: Subscription | None
    hot: HotPlan | None = Field(description="The gateway's hot copy, when loaded (counts unposted usage too)")


class MemberIn(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    name: str = Field("", max_length=200)


class Member(BaseModel):
    member_id: str
    customer_id: str
    email: str
    name: str
    status: str
    created_at: datetime
    removed_at: datetime | None
    active_keys: int | None = None
    revoked_key_ids: list[str] | None = None


@router.post("/customers/{customer_id}/subscriptions/checkout", response_model=PlanCheckout,
             summary="Create a Dodo checkout link for Plus or Team (with seats)")
async def subscription_checkout(customer_id: str, body: PlanCheckoutIn, ledger: LedgerDep) -> dict[str, Any]:
    return await plan_ops.checkout(ledger, customer_id, plan=body.plan, seats=body.seats)


@router.get("/customers/{customer_id}/subscription", response_model=CustomerPlan,
            summary="The customer's plan, subscription, caps and usage this period")
async def subscription(customer_id: str, ledger: LedgerDep) -> dict[str, Any]:
    return await plan_ops.show(ledger, customer_id)


@router.post("/customers/{customer_id}/subscription/seats", response_model=SeatChange, status_code=202,
             summary="Change a Team's paid seats (Dodo plan change of the seat add-on quantity)")
async def subscription_seats(customer_id: str, body: SeatsIn, ledger: LedgerDep) -> dict[str, Any]:
    return await plan_ops.change_seats(ledger, customer_id, body.seats)


@router.post("/customers/{customer_id}/subscription/cancel", response_model=Cancellation, status_code=202,
             summary="Cancel the subscription at the period end (default) or now")
async def subscription_cancel(customer_id: str, ledger: LedgerDep, body: CancelIn | None = None) -> dict[str, Any]:
    return await plan_ops.cancel(ledger, customer_id, at_period_end=body.at_period_end if body else True)


@router.put("/customers/{customer_id}/plan", response_model=CustomerPlan,
            summary="Set (or clear) an operator's plan override, e.g. Enterprise or Free")
async def plan_override(customer_id: str, body: PlanOverrideIn, ledger: LedgerDep) -> dict[str, Any]:
    return await plan_ops.set_override(ledger, customer_id, plan=body.plan, seats=body.seats)


@router.post("/customers/{customer_id}/members", response_model=Member, status_code=201,
             summary="Add a team member (409 when every paid seat is taken)")
async def add_member(customer_id: str, body: MemberIn, ledger: LedgerDep) -> dict[str, Any]:
    return await team.add_member(ledger, customer_id, email=body.email, name=body.name)


@router.get("/customers/{customer_id}/members", response_model=list[Member], summary="List team members")
async def list_members(customer_id: str, ledger: LedgerDep, include_removed: bool = False) -> list[dict[str, Any]]:
    return await team.list_members(ledger, customer_id, include_removed=include_removed)


@router.delete("/customers/{customer_id}/members/{member_id}", response_model=Member,
               summary="Remove a member (frees the seat, revokes their keys everywhere at once)")
async def remove_member(customer_id: str, member_id: str, ledger: LedgerDep) -> dict[str, Any]:
    return await team.remove_member(ledger, customer_id, member_id)


@router.post("/customers/{customer_id}/members/{member_id}/keys", response_model=IssuedKey, status_code=201,
             summary="Issue a key to a member (the plaintext is in this response only)")
async def issue_member_key(customer_id: str, member_id: str, body: KeyIn, ledger: LedgerDep) -> dict[str, Any]:
    issued = await operations.issue_key(ledger, customer_id, name=body.name, models=body.models, member_id=member_id)
    return {**issued.row, "key": issued.key}
