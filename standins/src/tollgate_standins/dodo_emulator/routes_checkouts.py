"""`/checkouts`: create a checkout session, read its status."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from .billing import CHECKOUT_LIFETIME, MINIMUM_CHARGE, check_cart_addons, checkout_quote
from .credits import check_amount_precision, get_customer
from .decimals import parse_decimal
from .deps import Emu, require_auth
from .errors import ApiError, bad_request, not_found, unprocessable
from .ids import new_id
from .routes_customers import create_customer
from .routes_products import get_product
from .schemas import CheckoutCreate
from .state import Obj
from .timeutil import iso, utcnow

router = APIRouter(dependencies=[Depends(require_auth)], tags=["checkouts"])


def get_session(emu: Emu, session_id: str) -> Obj:
    session = emu.state.checkouts.get(session_id)
    if session is None:
        raise not_found("checkout session", session_id)
    return session


def _validate_cart(emu: Emu, body: CheckoutCreate) -> None:
    if not body.product_cart:
        raise unprocessable("product_cart must contain at least one product")
    for item in body.product_cart:
        product = get_product(emu, item.product_id)
        if product["_archived"]:
            raise bad_request(f"product {product['product_id']} is archived", "PRODUCT_IS_DELETED")
        check_cart_addons(emu, product, [a.model_dump() for a in item.addons or []])
        attached = {m["credit_entitlement_id"]: m for m in product["credit_entitlements"]}
        for credit in item.credit_entitlements or []:
            if credit.credit_entitlement_id not in attached:
                raise bad_request(f"credit entitlement {credit.credit_entitlement_id} is not attached "
                                  f"to product {product['product_id']}")
            amount = parse_decimal(credit.credits_amount, "credits_amount")
            check_amount_precision(emu.state.credit_entitlements[credit.credit_entitlement_id], amount,
                                   "credits_amount")


@router.post("/checkouts")
async def create_checkout(body: CheckoutCreate, emu: Emu) -> Obj:
    _validate_cart(emu, body)
    customer_id: str | None = None
    if body.customer is not None:
        if body.customer.customer_id:
            customer_id = get_customer(emu, body.customer.customer_id)["customer_id"]
        elif body.customer.email:
            name = body.customer.name or body.customer.email.split("@")[0]
            customer_id = create_customer(emu, body.customer.email, name,
                                          phone_number=body.customer.phone_number)["customer_id"]
        else:
            raise unprocessable("customer needs either customer_id or email")
    request = body.model_dump(mode="json", exclude_none=True)
    total, _ = checkout_quote(emu, request)
    if 0 < total < MINIMUM_CHARGE:
        raise ApiError(400, "TOTAL_PAYMENT_AMOUNT_BELOW_MINIMUM_AMOUNT",
                       f"the total of {total} is below the minimum charge of {MINIMUM_CHARGE}")
    now = utcnow()
    session_id = new_id("cks")
    session: Obj = {
        "session_id": session_id,
        "created_at": iso(now),
        "expires_at": iso(now + CHECKOUT_LIFETIME),
        "request": request,
        "customer_id": customer_id,
        "status": "open",
        "payment_id": None,
        "payment_status": None,
        "subscription_ids": [],
        "checkout_url": f"{emu.settings.base_url}/checkout/{session_id}",
    }
    emu.state.checkouts[session_id] = session
    return {
        "session_id": session_id,
        "checkout_url": session["checkout_url"],
        "client_secret": None,
        "payment_id": None,
        "publishable_key": None,
    }


@router.get("/checkouts/{session_id}")
async def retrieve_checkout(session_id: str, emu: Emu) -> Obj:
    session = get_session(emu, session_id)
    customer = emu.state.customers.get(session["customer_id"] or "")
    return {
        "id": session["session_id"],
        "created_at": session["created_at"],
        "customer_email": customer["email"] if customer else None,
        "customer_name": customer["name"] if customer else None,
        "payment_id": session["payment_id"],
        "payment_status": session["payment_status"],
    }
