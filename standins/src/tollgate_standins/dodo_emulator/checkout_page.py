"""The hosted checkout page: plain HTML forms (no JavaScript needed) with Pay and Decline."""

from __future__ import annotations

from html import escape
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .billing import checkout_quote, decline_checkout, pay_checkout, unit_price
from .deps import Emu
from .errors import ApiError
from .routes_checkouts import get_session
from .state import Obj

router = APIRouter(tags=["checkout page"], include_in_schema=False)

_ZERO_DECIMAL = {
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA",
    "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;color:#111}
table{width:100%;border-collapse:collapse;margin:1rem 0}
td,th{padding:.4rem;border-bottom:1px solid #ddd;text-align:left}
.amount{text-align:right}label{display:block;margin:.5rem 0 .2rem}input{width:100%;padding:.4rem}
.actions{display:flex;gap:1rem;margin-top:1rem}button{padding:.6rem 1.4rem;font-size:1rem;cursor:pointer}
.pay{background:#0a7d32;color:#fff;border:0}.decline{background:#fff;border:1px solid #b00;color:#b00}
"""


def format_money(amount: int, currency: str) -> str:
    if currency in _ZERO_DECIMAL:
        return f"{currency} {amount}"
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 100)
    return f"{sign}{currency} {whole}.{cents:02d}"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body><main>{body}</main></body></html>"
    )
    return HTMLResponse(html, status_code=status)


def _cart_rows(emu: Emu, session: Obj) -> str:
    rows = []
    for item in session["request"]["product_cart"]:
        product = emu.state.products[item["product_id"]]
        price = product["price"]
        label = escape(product.get("name") or product["product_id"])
        unit = unit_price(price, item.get("amount"))
        suffix = f" every {price['payment_frequency_count']} {price['payment_frequency_interval']}" if (
            product["is_recurring"]) else ""
        rows.append(f"<tr><td>{label} &times; {item['quantity']}{escape(suffix)}</td>"
                    f'<td class="amount">{format_money(unit * item["quantity"], price["currency"])}</td></tr>')
        for addon in item.get("addons") or []:
            a = emu.state.addons[addon["addon_id"]]
            rows.append(f"<tr><td>{escape(a['name'])} &times; {addon['quantity']}</td>"
                        f'<td class="amount">{format_money(a["price"] * addon["quantity"], a["currency"])}</td></tr>')
    return "".join(rows)


@router.get("/checkout/{session_id}", response_class=HTMLResponse)
async def checkout_page(session_id: str, emu: Emu) -> HTMLResponse:
    try:
        session = get_session(emu, session_id)
    except ApiError:
        return _page("Checkout not found", "<h1>Checkout not found</h1>", status=404)
    total, currency = checkout_quote(emu, session["request"])
    if session["status"] == "succeeded":
        return _page("Already paid", f"<h1>Already paid</h1><p>Payment {escape(session['payment_id'])}.</p>")
    customer = emu.state.customers.get(session["customer_id"] or "")
    buyer = (
        f"<p>Paying as <strong>{escape(customer['name'])}</strong> ({escape(customer['email'])})</p>"
        if customer else
        '<label for="email">Email</label><input id="email" name="email" type="email" '
        'value="buyer@example.com" autocomplete="email">'
        '<label for="name">Name</label><input id="name" name="name" value="Emulator Buyer" autocomplete="name">'
    )
    failed = '<p role="alert">The last payment attempt was declined.</p>' if session["status"] == "failed" else ""
    due = format_money(total, currency)
    body = (
        f"<h1>Checkout</h1>{failed}"
        f'<table aria-label="Order summary"><tbody>{_cart_rows(emu, session)}</tbody>'
        f'<tfoot><tr><th scope="row">Due today</th><td class="amount">{due}</td></tr></tfoot></table>'
        f'<form method="post" action="/checkout/{escape(session_id)}/pay" aria-label="Pay">{buyer}'
        f'<div class="actions"><button type="submit" class="pay" aria-label="Pay {due}">Pay</button></div></form>'
        f'<form method="post" action="/checkout/{escape(session_id)}/decline" aria-label="Decline">'
        '<div class="actions"><button type="submit" class="decline" aria-label="Decline the payment">'
        "Decline</button></div></form>"
    )
    return _page("Checkout", body)


async def _buyer_fields(request: Request) -> tuple[str | None, str | None]:
    # The page posts application/x-www-form-urlencoded; parsed by hand to avoid a multipart dependency.
    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    email = (fields.get("email") or [""])[0].strip() or None
    name = (fields.get("name") or [""])[0].strip() or None
    return email, name


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@router.post("/checkout/{session_id}/pay", response_model=None)
async def submit_pay(session_id: str, emu: Emu, request: Request) -> Response:
    session = get_session(emu, session_id)
    email, name = await _buyer_fields(request)
    try:
        payment = pay_checkout(emu, session, email, name)
    except ApiError as exc:
        return _page("Payment not possible", f"<h1>Payment not possible</h1><p>{escape(exc.message)}</p>",
                     status=exc.status)
    return_url = session["request"].get("return_url")
    params = {"payment_id": payment["payment_id"], "status": "succeeded"}
    if session["subscription_ids"]:
        params["subscription_id"] = session["subscription_ids"][0]
    if return_url:
        return RedirectResponse(_with_query(return_url, params), status_code=303)
    return _page("Payment successful", f"<h1>Payment successful</h1><p>Payment {escape(payment['payment_id'])}</p>")


@router.post("/checkout/{session_id}/decline", response_model=None)
async def submit_decline(session_id: str, emu: Emu, request: Request) -> Response:
    session = get_session(emu, session_id)
    email, name = await _buyer_fields(request)
    try:
        payment = decline_checkout(emu, session, email, name)
    except ApiError as exc:
        return _page("Payment not possible", f"<h1>Payment not possible</h1><p>{escape(exc.message)}</p>",
                     status=exc.status)
    checkout_request = session["request"]
    if checkout_request.get("cancel_url"):
        return RedirectResponse(checkout_request["cancel_url"], status_code=303)
    if checkout_request.get("return_url"):
        params = {"payment_id": payment["payment_id"], "status": "failed"}
        return RedirectResponse(_with_query(checkout_request["return_url"], params), status_code=303)
    return _page("Payment declined", f"<h1>Payment declined</h1><p>Payment {escape(payment['payment_id'])}</p>")
