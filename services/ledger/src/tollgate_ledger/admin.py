"""The operator API under /admin/v1 (Authorization: Bearer <TOLLGATE_ADMIN_TOKEN>). Customer API
keys never work here: only the admin token is compared, in constant time."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from tollgate_ledger import hot, operations, reconcile, webhooks
from tollgate_ledger.context import Ledger
from tollgate_ledger.errors import ApiError, ErrorBody, not_found

_bearer = HTTPBearer(auto_error=False, description="The operator token (TOLLGATE_ADMIN_TOKEN)")


def get_ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "missing Authorization: Bearer <admin token>", "missing_credentials",
                       "authentication_error")
    expected = get_ledger(request).settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise ApiError(403, "this credential may not use the admin API", "forbidden", "permission_error")


LedgerDep = Annotated[Ledger, Depends(get_ledger)]
_errors: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422, 502, 503)
}
router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(require_admin)], responses=_errors)


# -- models ------------------------------------------------------------------------------------

class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class CustomerIn(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    name: str = Field(min_length=1, max_length=200)
    dodo_customer_id: str | None = Field(None, description="Link an existing Dodo customer instead of creating one")
    create_in_dodo: bool = Field(True, description="Create the Dodo customer now when Dodo is reachable")

    @field_validator("dodo_customer_id")
    @classmethod
    def _dodo_customer_id(cls, value: str | None) -> str | None:
        # An empty id would be stored as a "link" that matches no Dodo customer (and, being
        # unique, would block the next one): absent/null means "not linked", anything else is an id.
        if value is not None and not value.strip():
            raise PydanticCustomError(
                "blank_dodo_customer_id", "must not be empty or blank; omit it or send null to leave it unlinked"
            )
        return value


class Customer(_Out):
    customer_id: str
    dodo_customer_id: str | None
    email: str
    name: str
    created_at: datetime


class CustomerList(BaseModel):
    data: list[Customer]
    next_after: str | None


class KeyIn(BaseModel):
    name: str = Field("", max_length=200)
    models: list[str] | None = Field(None, description="Allowed models; empty or absent means all")


class Key(_Out):
    key_id: str
    customer_id: str
    member_id: str | None = Field(None, description="The team member the key was issued to, if any")
    prefix: str
    name: str
    status: str
    models: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class IssuedKey(Key):
    key: str = Field(description="The plaintext key. Shown once, never stored.")


class GrantIn(BaseModel):
    amount_cents: int = Field(gt=0, le=100_000_000, description="Credits to grant (1 credit = 1 cent)")
    reason: str = Field(min_length=3, max_length=500)
    idempotency_key: str = Field(min_length=1, max_length=200)


class AdjustmentIn(BaseModel):
    amount_nanos: int = Field(description="Signed amount in nano-dollars (10^-9 USD)")
    reason: str = Field(min_length=3, max_length=500)
    idempotency_key: str = Field(min_length=1, max_length=200)
    sync_to_dodo: bool = Field(
        False, description="Also move Dodo's credit balance (off: adjustments usually fix drift)"
    )


class Entry(_Out):
    seq: int
    kind: str
    amount_nanos: int
    balance_after: int
    idempotency_key: str
    reference: str | None
    model: str | None = None
    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    list_price_nanos: int | None = None
    estimated: bool | None = None
    key_id: str | None = None
    reason: str | None
    occurred_at: datetime
    created_at: datetime


class MovementOut(BaseModel):
    created: bool = Field(description="False when this idempotency key had already been applied")
    entry: Entry
    balance_nanos: int
    hot_state_updated: bool


class History(BaseModel):
    data: list[Entry]
    next_before_seq: int | None


class HotView(BaseModel):
    balance_nanos: int
    seq: int
    reserved_nanos: int
    unposted_nanos: int
    available_nanos: int
    status: str


class Balance(BaseModel):
    customer_id: str
    balance_nanos: int
    balance_cents: int
    seq: int
    lifetime_topup_nanos: int
    last_topup_nanos: int
    last_topup_at: datetime | None
    low_threshold_nanos: int
    low_threshold_explicit: bool
    alert_state: str
    status: str
    hot: HotView | None = Field(description="The gateway's hot copy in Redis, when loaded")


class ThresholdIn(BaseModel):
    threshold_nanos: int | None = Field(
        None, ge=0, description="Explicit low-balance threshold; null restores the default share of the last top-up"
    )


class CheckoutIn(BaseModel):
    pack: str = Field(description="Pack product id or pack name from the Dodo catalogue")
    quantity: int = Field(1, ge=1, le=100)


class Checkout(BaseModel):
    customer_id: str
    checkout_url: str | None
    session_id: str
    pack: dict[str, Any]
    quantity: int
    credits: int


class DriftCheck(BaseModel):
    check_id: str | None
    customer_id: str
    tollgate_nanos: int
    in_flight_nanos: int
    dodo_nanos: int | None
    drift_nanos: int | None
    status: str
    detail: str | None = None
    checked_at: datetime | None = None


class RebuildIn(BaseModel):
    customer_id: str | None = None


class InboxItem(_Out):
    webhook_id: str
    type: str
    outcome: str
    detail: str | None
    customer_id: str | None
    parked_payment_id: str | None
    received_at: datetime
    applied_at: datetime | None


# -- customers ---------------------------------------------------------------------------------

@router.post("/customers", status_code=201, response_model=Customer, summary="Create a customer")
async def create_customer(body: CustomerIn, ledger: LedgerDep) -> dict[str, Any]:
    return await operations.create_customer(
        ledger, email=body.email, name=body.name, dodo_customer_id=body.dodo_customer_id,
        create_in_dodo=body.create_in_dodo,
    )


@router.get("/customers", response_model=CustomerList, summary="List customers")
async def list_customers(
    ledger: LedgerDep, limit: Annotated[int, Query(ge=1, le=500)] = 100, after: str | None = None,
    email: str | None = None,
) -> dict[str, Any]:
    rows = await operations.list_customers(ledger, limit=limit, after=after, email=email)
    return {"data": rows, "next_after": rows[-1]["customer_id"] if len(rows) == limit else None}


@router.get("/customers/{customer_id}", response_model=Customer, summary="Show a customer")
async def get_customer(customer_id: str, ledger: LedgerDep) -> dict[str, Any]:
    return await operations.get_customer(ledger, customer_id)


@router.post("/customers/{customer_id}/dodo-link", response_model=Customer,
             summary="Create the customer's Dodo customer now (if it has none)")
async def link_dodo(customer_id: str, ledger: LedgerDep) -> dict[str, Any]:
    return await operations.link_dodo(ledger, customer_id)


# -- keys --------------------------------------------------------------------------------------

@router.post("/customers/{customer_id}/keys", status_code=201, response_model=IssuedKey,
             summary="Issue an API key (the plaintext is in this response only)")
async def issue_key(customer_id: str, body: KeyIn, ledger: LedgerDep) -> dict[str, Any]:
    issued = await operations.issue_key(ledger, customer_id, name=body.name, models=body.models)
    return {**issued.row, "key": issued.key}


@router.get("/customers/{customer_id}/keys", response_model=list[Key], summary="List a customer's keys")
async def list_keys(customer_id: str, ledger: LedgerDep) -> list[dict[str, Any]]:
    return await operations.list_keys(ledger, customer_id)


@router.post("/keys/{key_id}/revoke", response_model=Key, summary="Revoke a key (effective at once everywhere)")
async def revoke_key(key_id: str, ledger: LedgerDep) -> dict[str, Any]:
    return await operations.revoke_key(ledger, key_id)


# -- money -------------------------------------------------------------------------------------

@router.post("/customers/{customer_id}/checkout", response_model=Checkout,
             summary="Create a Dodo checkout link for a top-up pack")
async def checkout(customer_id: str, body: CheckoutIn, ledger: LedgerDep) -> dict[str, Any]:
    return await operations.checkout(ledger, customer_id, pack_ref=body.pack, quantity=body.quantity)


def _movement(result: operations.Movement) -> dict[str, Any]:
    return {"created": result.created, "entry": result.entry, "balance_nanos": result.balance_nanos,
            "hot_state_updated": result.mirrored}


@router.post("/customers/{customer_id}/grants", response_model=MovementOut,
             summary="Grant credits with a reason (idempotent; also credited on Dodo's entitlement)")
async def grant(customer_id: str, body: GrantIn, ledger: LedgerDep) -> dict[str, Any]:
    from tollgate_money import NANOS_PER_CENT

    return _movement(await operations.move_money(
        ledger, customer_id, kind="grant", amount=body.amount_cents * NANOS_PER_CENT,
        operator_key=body.idempotency_key, reason=body.reason, dodo_entry_type="credit",
    ))


@router.post("/customers/{customer_id}/adjustments", response_model=MovementOut,
             summary="Correct a balance with an explicit, reasoned entry (idempotent)")
async def adjust(customer_id: str, body: AdjustmentIn, ledger: LedgerDep) -> dict[str, Any]:
    if body.amount_nanos == 0:
        raise ApiError(422, "amount_nanos: an adjustment moves money", "invalid_request")
    entry_type = ("credit" if body.amount_nanos > 0 else "debit") if body.sync_to_dodo else None
    return _movement(await operations.move_money(
        ledger, customer_id, kind="adjustment", amount=body.amount_nanos, operator_key=body.idempotency_key,
        reason=body.reason, dodo_entry_type=entry_type,
    ))


@router.get("/customers/{customer_id}/balance", response_model=Balance, summary="Show balance, reservations, threshold")
async def balance(customer_id: str, ledger: LedgerDep) -> dict[str, Any]:
    return await operations.balance(ledger, customer_id)


@router.put("/customers/{customer_id}/low-threshold", response_model=Balance, summary="Set the low-balance threshold")
async def set_threshold(customer_id: str, body: ThresholdIn, ledger: LedgerDep) -> dict[str, Any]:
    return await operations.set_low_threshold(ledger, customer_id, body.threshold_nanos)


@router.get("/customers/{customer_id}/entries", response_model=History, summary="Ledger history, newest first")
async def entries(
    customer_id: str, ledger: LedgerDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before_seq: int | None = None,
) -> dict[str, Any]:
    rows = await operations.history(ledger, customer_id, limit=limit, before_seq=before_seq)
    return {"data": rows, "next_before_seq": rows[-1]["seq"] if len(rows) == limit else None}


# -- reconciliation and hot state ----------------------------------------------------------------

@router.get("/customers/{customer_id}/drift", response_model=list[DriftCheck], summary="Drift check history")
async def customer_drift(
    customer_id: str, ledger: LedgerDep, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> list[dict[str, Any]]:
    return await operations.drift_history(ledger, customer_id, limit)


@router.post("/customers/{customer_id}/reconcile", response_model=DriftCheck, summary="Reconcile one customer now")
async def reconcile_now(customer_id: str, ledger: LedgerDep) -> dict[str, Any]:
    await operations.get_customer(ledger, customer_id)
    return (await reconcile.check_customer(ledger, customer_id, fetch=True)).as_dict()


@router.get("/drift", response_model=list[DriftCheck], summary="Customers whose latest check disagrees with Dodo")
async def drift(ledger: LedgerDep) -> list[dict[str, Any]]:
    return await operations.drifting(ledger)


@router.post("/hotstate/rebuild", summary="Re-mirror balances, statuses and keys from Postgres into Redis")
async def rebuild(ledger: LedgerDep, body: RebuildIn | None = None) -> dict[str, int]:
    customer_id = body.customer_id if body else None
    if customer_id:
        await operations.get_customer(ledger, customer_id)
    return await hot.rebuild(ledger.pool, ledger.hot, ledger.nc, customer_id)


@router.post("/webhooks/{webhook_id}/reapply", summary="Apply a stored webhook that was not applied (e.g. unmatched)")
async def reapply_webhook(webhook_id: str, ledger: LedgerDep) -> dict[str, Any]:
    result = await webhooks.reapply(ledger, webhook_id)
    if result is None:
        raise not_found("webhook", webhook_id)
    return result


@router.get("/webhooks", response_model=list[InboxItem], summary="The Dodo webhook inbox, newest first")
async def webhook_inbox(
    ledger: LedgerDep, outcome: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    return await operations.inbox(ledger, outcome=outcome, limit=limit)
