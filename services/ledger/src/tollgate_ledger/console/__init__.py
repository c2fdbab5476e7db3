"""The web console, served by the ledger at /console: customers see their balance, buy credits,
watch usage, manage keys and alerts; operators see customers, ledgers, metering lag, dead letters,
drift and webhooks. Server-rendered HTML (Jinja2) and inline SVG charts; no JavaScript."""

from __future__ import annotations

from fastapi import APIRouter

from tollgate_ledger.console.admin_routes import admin_router
from tollgate_ledger.console.auth_routes import auth_router, fallback_router, topup_router
from tollgate_ledger.console.customer_routes import customer_router
from tollgate_ledger.console.ops_routes import ops_router
from tollgate_ledger.console.pages import PREFIX
from tollgate_ledger.console.runtime import Console, SignInThrottle
from tollgate_ledger.console.sessions import SessionCodec
from tollgate_ledger.console.settings import ConsoleSettings, secure_cookies, signing_secret
from tollgate_ledger.settings import LedgerSettings


def create_router(settings: LedgerSettings, console_settings: ConsoleSettings | None = None) -> APIRouter:
    """Everything the console adds to the ledger app: pages under /console, two admin routes,
    and the /billing/topup redirects. Console settings come from LEDGER_CONSOLE_* unless given."""
    console_settings = console_settings or ConsoleSettings()
    console = Console(
        settings=console_settings,
        ledger_settings=settings,
        codec=SessionCodec(
            signing_secret(console_settings, settings), console_settings.session_ttl_s,
            secure_cookies(console_settings, settings),
        ),
        throttle=SignInThrottle(console_settings.sign_in_failures),
    )
    router = APIRouter()
    router.include_router(auth_router(console), prefix=PREFIX)
    router.include_router(ops_router(console), prefix=f"{PREFIX}/ops")
    router.include_router(customer_router(console), prefix=PREFIX)
    router.include_router(fallback_router(), prefix=PREFIX)  # last: it matches every other path
    router.include_router(admin_router(console))
    router.include_router(topup_router())
    return router


__all__ = ["ConsoleSettings", "create_router"]
