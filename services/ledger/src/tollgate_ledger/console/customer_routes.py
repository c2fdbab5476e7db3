"""The customer's pages: overview (balance, buy credits, plan, tier, billing history), usage
(charts and recent requests), API keys and alerts. Money and keys go through the ledger's own
operations, so a console action is exactly the admin API's action (idempotency, Redis, events)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tollgate_ledger import operations
from tollgate_ledger.admin import get_ledger
from tollgate_ledger.console import customer_data as data
from tollgate_ledger.console.charts import stacked_bars
from tollgate_ledger.console.formatting import compact_tokens, compact_usd, usd
from tollgate_ledger.console.notifier import NotifierClient
from tollgate_ledger.console.pages import PREFIX, ConsoleRoute, PageError, not_found
from tollgate_ledger.console.runtime import Console
from tollgate_ledger.console.settings import notifier_token
from tollgate_ledger.context import Ledger
from tollgate_ledger.errors import ApiError
from tollgate_money import NANOS_PER_CENT

CHANNELS = ("email", "slack", "webhook")
CHECKOUT_POLLS = 30  # the return page re-checks about once a second for this long


def plan_view(account: dict[str, Any]) -> dict[str, Any] | None:
    """The subscription columns of ledger.hot_account; None while the customer has no plan."""
    plan = account.get("plan") or ""
    if not plan:
        return None
    raw_cap = account.get("cap")
    cap = int(raw_cap) if raw_cap is not None else -1
    used = int(account.get("pused") or 0)
    daily_cap = int(account.get("daily_cap") or 0)
    view: dict[str, Any] = {"name": plan, "used": used, "cap": cap if cap >= 0 else None, "percent": None,
                            "daily_cap": daily_cap or None, "daily_used": int(account.get("dused") or 0)}
    if cap > 0:
        view["percent"] = min(100, used * 100 // cap)
    if daily_cap > 0:
        view["daily_percent"] = min(100, view["daily_used"] * 100 // daily_cap)
    return view


def parse_usd(text: str) -> int | None:
    """A dollar amount typed by a person ("5", "5.50", "$5.50") as nanos; None when blank."""
    cleaned = text.strip().replace("$", "").replace(",", "")
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation as exc:
        raise ValueError("Enter an amount in dollars, like 5.00") from exc
    if not value.is_finite() or value < 0 or value > 1_000_000 or value != value.quantize(Decimal("0.01")):
        raise ValueError("Enter an amount in dollars and cents between 0 and 1,000,000")
    return int(value * 100) * NANOS_PER_CENT


async def start_checkout(ledger: Ledger, customer_id: str, pack_id: str) -> dict[str, Any]:
    # operations.checkout sends the buyer back to <public_base_url>/checkout/return. Handing it a
    # view of the ledger whose public base is the console's own path brings the buyer back here
    # (/console/checkout/return), with everything else about the checkout exactly as the API's.
    base = ledger.settings.public_base_url.rstrip("/") + PREFIX
    view = dataclasses.replace(ledger, settings=ledger.settings.model_copy(update={"public_base_url": base}))
    return await operations.checkout(view, customer_id, pack_ref=pack_id, quantity=1)


def customer_router(console: Console) -> APIRouter:
    router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
    notifier = NotifierClient(
        console.settings.notifier_url, notifier_token(console.settings, console.ledger_settings),
        console.settings.notifier_timeout_s,
    )

    @router.get("")
    async def overview(request: Request) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        account, history, tier = await asyncio.gather(
            data.account(ledger.pool, who.customer_id),
            data.billing_history(ledger.pool, who.customer_id),
            data.tier(ledger.pool, who.customer_id),
        )
        catalogue = ledger.catalogue.get()
        packs = [
            {"product_id": p.product_id, "price": p.price_cents * NANOS_PER_CENT, "credits": p.credits * NANOS_PER_CENT}
            for p in sorted(catalogue.packs if catalogue else [], key=lambda p: p.price_cents)
        ]
        return console.render(
            request, "overview.html", title="Overview", who=who, account=account, history=history, tier=tier,
            plan=plan_view(account), packs=packs,
        )

    @router.post("/buy")
    async def buy(request: Request) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        form = await console.form(request)
        pack = str(form.get("pack", ""))
        if ledger.catalogue.pack(pack) is None:
            return console.redirect(request, PREFIX, ("error", "That credit pack is not on sale."))
        try:
            checkout = await start_checkout(ledger, who.customer_id, pack)
        except ApiError as exc:
            return console.redirect(request, PREFIX, ("error", f"The payment page could not be opened: {exc.message}"))
        url = checkout.get("checkout_url")
        if not url:
            return console.redirect(request, PREFIX, ("error", "The payment provider returned no payment page."))
        return console.redirect(request, str(url))

    @router.get("/checkout/return")
    async def checkout_return(
        request: Request, payment_id: str | None = None, status: str | None = None, poll: int = 0
    ) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        if status == "failed":
            return console.redirect(request, PREFIX, ("error", "The payment was declined; nothing was charged."))
        if not payment_id:
            return console.redirect(request, PREFIX)
        applied = await data.payment_applied(ledger.pool, who.customer_id, payment_id)
        if applied is not None:
            return console.redirect(
                request, PREFIX, ("ok", f"Payment received: {usd(applied['credited_nanos'])} of credits added.")
            )
        waiting = poll < CHECKOUT_POLLS
        return console.render(
            request, "checkout_return.html", title="Confirming your payment", who=who, payment_id=payment_id,
            waiting=waiting, next_poll=poll + 1,
        )

    @router.get("/usage")
    async def usage(request: Request, before: str | None = None) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        cursor = _cursor(before)
        summary, requests = await asyncio.gather(
            data.usage_summary(ledger.pool, who.customer_id),
            data.recent_requests(ledger.pool, who.customer_id, limit=console.settings.page_size, before=cursor),
        )
        spend_chart = stacked_bars(
            "spend-chart", "Spend per day (UTC), last 30 days, by model", summary.days, summary.spend, compact_usd,
            unit_label="spend",
        )
        tokens_chart = stacked_bars(
            "tokens-chart", "Tokens per day (UTC), last 30 days, by model", summary.days, summary.tokens,
            compact_tokens, unit_label="tokens",
        )
        last = requests[-1] if len(requests) == console.settings.page_size else None
        older = f"{last['occurred_at'].isoformat()}|{last['request_id']}" if last else None
        return console.render(
            request, "usage.html", title="Usage", who=who, summary=summary, spend_chart=spend_chart,
            tokens_chart=tokens_chart, requests=requests, older=older, paged=cursor is not None,
        )

    @router.get("/keys")
    async def keys(request: Request) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        return console.render(
            request, "keys.html", title="API keys", who=who, keys=await data.keys(ledger.pool, who.customer_id),
            new_key=None, signed_in_key=console.session(request).key_id,
        )

    @router.post("/keys")
    async def create_key(request: Request) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        form = await console.form(request)
        name = str(form.get("name", "")).strip()[:200]
        issued = await operations.issue_key(ledger, who.customer_id, name=name, models=None)
        # Rendered, not redirected: the plaintext exists only in this answer (no-store), never in
        # a cookie, a URL or a log.
        return console.render(
            request, "keys.html", title="API keys", who=who, keys=await data.keys(ledger.pool, who.customer_id),
            new_key={"key": issued.key, "name": name, "prefix": issued.row["prefix"]},
            signed_in_key=console.session(request).key_id,
        )

    @router.post("/keys/{key_id}/revoke")
    async def revoke_key(request: Request, key_id: str) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        await console.form(request)
        if await data.key_owner(ledger.pool, key_id) != who.customer_id:
            raise not_found("key")  # someone else's key looks exactly like a missing one
        revoked = await operations.revoke_key(ledger, key_id)
        label = revoked["name"] or revoked["prefix"] + "…"
        if key_id == console.session(request).key_id:
            console.codec.end(request)
            return console.redirect(request, f"{PREFIX}/sign-in", (
                "info", f"Key {label} is revoked. It was the key you signed in with, so you are signed out."
            ))
        return console.redirect(request, f"{PREFIX}/keys", ("ok", f"Key {label} is revoked; it stops working at once."))

    @router.get("/alerts")
    async def alerts(request: Request) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        balance, prefs = await asyncio.gather(
            operations.balance(ledger, who.customer_id), notifier.preferences(who.customer_id)
        )
        return console.render(
            request, "alerts.html", title="Alerts", who=who, balance=balance, prefs=prefs,
            threshold_usd=_dollars(balance["low_threshold_nanos"]) if balance["low_threshold_explicit"] else "",
        )

    @router.post("/alerts/threshold")
    async def set_threshold(request: Request) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        form = await console.form(request)
        try:
            threshold = parse_usd(str(form.get("threshold_usd", "")))
        except ValueError as exc:
            return console.redirect(request, f"{PREFIX}/alerts", ("error", str(exc)))
        await operations.set_low_threshold(ledger, who.customer_id, threshold)
        text = (f"Low-balance alerts now fire below {usd(threshold)}." if threshold is not None
                else "Low-balance alerts now use the default threshold.")
        return console.redirect(request, f"{PREFIX}/alerts", ("ok", text))

    @router.post("/alerts/channels")
    async def set_channels(request: Request) -> Response:
        ledger = get_ledger(request)
        who = await console.customer(request, ledger)
        form = await console.form(request)
        change: dict[str, Any] = {
            "channels": [c for c in CHANNELS if c in form.getlist("channels")],
            "email": str(form.get("email", "")).strip() or None,
        }
        slack = str(form.get("slack_webhook_url", "")).strip()
        if form.get("remove_slack"):
            change["slack_webhook_url"] = None
        elif slack:  # blank keeps the stored URL: it is a credential and never shown back
            change["slack_webhook_url"] = slack
        _, error = await notifier.update(who.customer_id, change)
        if error:
            return console.redirect(request, f"{PREFIX}/alerts", ("error", error))
        return console.redirect(request, f"{PREFIX}/alerts", ("ok", "Alert channels saved."))

    return router


def _dollars(nanos: int) -> str:
    return f"{Decimal(nanos // NANOS_PER_CENT) / 100:.2f}"


def _cursor(before: str | None) -> tuple[datetime, str] | None:
    if not before:
        return None
    at, _, ref = before.partition("|")
    try:
        parsed = datetime.fromisoformat(at)
    except ValueError as exc:
        raise PageError(400, "Bad request", "That page of requests does not exist.") from exc
    return parsed, ref
