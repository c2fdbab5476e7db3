"""Signing in and out: with an API key (customers), the admin token (operators), or a one-time
link an operator minted. Plus the stylesheet and the top-up URLs other services print."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from tollgate_ledger import ids
from tollgate_ledger.admin import get_ledger
from tollgate_ledger.console import links
from tollgate_ledger.console.pages import (
    PREFIX,
    ConsoleRoute,
    PageError,
    Redirect,
    safe_next,
    stylesheet,
    stylesheet_version,
)
from tollgate_ledger.console.runtime import Console, client_address
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

LINK_GONE = "This sign-in link was already used or has expired. Ask for a new one."
WRONG_KEY = "That key was not recognised. Use an active API key (it starts with sk-tg-)."


def auth_router(console: Console) -> APIRouter:
    router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

    @router.get("/sign-in")
    async def sign_in_page(request: Request, next: str | None = None) -> Response:
        return console.render(request, "sign_in.html", title="Sign in", next=safe_next(next), error=None)

    def refuse(request: Request, next_path: str, message: str, status: int = 401) -> Response:
        console.throttle.failed(client_address(request))
        return console.render(request, "sign_in.html", title="Sign in", next=next_path, error=message, status=status)

    def throttled(request: Request, next_path: str) -> Response | None:
        if console.throttle.blocked(client_address(request)):
            return console.render(
                request, "sign_in.html", title="Sign in", next=next_path, status=429,
                error="Too many failed attempts. Wait a few minutes and try again.",
            )
        return None

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        ledger = get_ledger(request)
        form = await console.form(request)
        next_path = safe_next(str(form.get("next") or ""))
        if (blocked := throttled(request, next_path)) is not None:
            return blocked
        key = str(form.get("api_key", "")).strip()
        if not key.startswith(ids.KEY_PREFIX):
            return refuse(request, next_path, WRONG_KEY)
        row = await ledger.pool.fetchrow(
            "SELECT key_id, customer_id FROM ledger.api_keys WHERE key_hash = $1 AND status = 'active'",
            ids.hash_key(key),
        )
        if row is None:
            return refuse(request, next_path, WRONG_KEY)
        console.codec.start(request, role="customer", customer_id=row["customer_id"], key_id=row["key_id"])
        return console.redirect(request, next_path if not next_path.startswith(f"{PREFIX}/ops") else PREFIX)

    @router.post("/sign-in/operator")
    async def operator_sign_in(request: Request) -> Response:
        form = await console.form(request)
        next_path = safe_next(str(form.get("next") or ""))
        if (blocked := throttled(request, next_path)) is not None:
            return blocked
        token = str(form.get("admin_token", ""))
        expected = console.ledger_settings.admin_token.get_secret_value()
        if not token or not hmac.compare_digest(token.encode(), expected.encode()):
            log.warning("console operator sign-in refused", client=client_address(request))
            return refuse(request, next_path, "That is not the operator credential.")
        log.info("console operator signed in", client=client_address(request))
        console.codec.start(request, role="operator", fingerprint=console.codec.fingerprint(expected))
        return console.redirect(request, next_path if next_path.startswith(f"{PREFIX}/ops") else f"{PREFIX}/ops")

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        await console.form(request)
        console.codec.end(request)
        return console.redirect(request, f"{PREFIX}/sign-in", ("info", "You are signed out."))

    @router.get("/link/{token}")
    async def link_page(request: Request, token: str) -> Response:
        found = await links.peek(get_ledger(request).pool, token)
        if found is None:
            raise PageError(410, "Link expired", LINK_GONE)
        return console.render(request, "link.html", title="Sign in", name=found["name"], token=token)

    @router.post("/link/{token}")
    async def use_link(request: Request, token: str) -> Response:
        await console.form(request)
        customer_id = await links.consume(get_ledger(request).pool, token)
        if customer_id is None:
            raise PageError(410, "Link expired", LINK_GONE)
        console.codec.start(request, role="customer", customer_id=customer_id)
        return console.redirect(request, PREFIX)

    @router.get("/static/console.css")
    async def css() -> Response:
        return Response(
            stylesheet(), media_type="text/css",
            headers={"Cache-Control": "public, max-age=31536000, immutable", "ETag": stylesheet_version()},
        )

    return router


def fallback_router() -> APIRouter:
    """Any other /console path: an HTML "not found" rather than the API's JSON one."""
    router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

    @router.get("/{rest:path}")
    async def unknown(rest: str) -> Response:
        if not rest:  # "/console/"
            raise Redirect(PREFIX)
        raise PageError(404, "Not found", "There is no such page in the console.")

    return router


def topup_router() -> APIRouter:
    """The gateway's 402 message and the notifier's alerts link to these; buying happens on the
    console's overview (after signing in)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/billing/topup")
    @router.get("/billing/top-up")
    async def topup() -> RedirectResponse:
        return RedirectResponse(PREFIX, status_code=303)

    return router
