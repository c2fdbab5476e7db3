"""What every console route shares: settings, the session codec, who is signed in, CSRF-checked
forms, and rendering with the navigation of the signed-in role."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from tollgate_ledger.console.pages import (
    PREFIX,
    SECURITY_HEADERS,
    PageError,
    Redirect,
    SignInRequired,
    environment,
    html_page,
)
from tollgate_ledger.console.sessions import Level, Session, SessionCodec
from tollgate_ledger.console.settings import ConsoleSettings
from tollgate_ledger.context import Ledger
from tollgate_ledger.settings import LedgerSettings

CUSTOMER_NAV = (("", "Overview"), ("/usage", "Usage"), ("/keys", "API keys"), ("/alerts", "Alerts"))
OPERATOR_NAV = (
    ("/ops", "Customers"), ("/ops/pipeline", "Metering & dead letters"), ("/ops/drift", "Drift"),
    ("/ops/webhooks", "Webhooks"),
)


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    name: str
    email: str


@dataclass
class SignInThrottle:
    """Failed sign-ins per client address (per process). API keys are far too long to guess; this
    is for the admin token, which an operator may have chosen short."""

    limit: int
    window_s: float = 300.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def blocked(self, client: str) -> bool:
        recent = self._failures.get(client)
        if not recent:
            return False
        cutoff = time.monotonic() - self.window_s
        while recent and recent[0] < cutoff:
            recent.popleft()
        return len(recent) >= self.limit

    def failed(self, client: str) -> None:
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(time.monotonic())


@dataclass
class Console:
    settings: ConsoleSettings
    ledger_settings: LedgerSettings
    codec: SessionCodec
    throttle: SignInThrottle

    # -- who is signed in --------------------------------------------------------------------

    def session(self, request: Request) -> Session:
        return self.codec.load(request)

    async def customer(self, request: Request, ledger: Ledger) -> Customer:
        session = self.session(request)
        if session.role == "operator":
            raise Redirect(f"{PREFIX}/ops")
        if session.role != "customer" or not session.customer_id:
            raise SignInRequired
        row = await ledger.pool.fetchrow(
            "SELECT c.customer_id, c.name, c.email, (SELECT k.status FROM ledger.api_keys k WHERE k.key_id = $2 "
            "AND k.customer_id = c.customer_id) AS key_status FROM ledger.customers c WHERE c.customer_id = $1",
            session.customer_id, session.key_id,
        )
        if row is None or (session.key_id is not None and row["key_status"] != "active"):
            # The key this session was opened with has been revoked: the session goes with it.
            raise SignInRequired(forget=True)
        return Customer(row["customer_id"], row["name"], row["email"])

    def operator(self, request: Request) -> Session:
        session = self.session(request)
        if session.role == "customer":
            raise PageError(403, "Operators only", "This page is for operators. You are signed in as a customer.")
        token = self.ledger_settings.admin_token.get_secret_value()
        if session.role != "operator" or session.fingerprint != self.codec.fingerprint(token):
            raise SignInRequired
        return session

    # -- forms ---------------------------------------------------------------------------------

    async def form(self, request: Request) -> FormData:
        """The posted form, after the CSRF token and (when the browser sends one) the Origin."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and not self._same_origin(request, origin):
            raise PageError(403, "Request refused", "This form was posted from another site.")
        form = await request.form(max_files=0, max_fields=50)
        if not self.session(request).csrf_ok(form.get("csrf")):
            raise PageError(403, "Form expired", "This form has expired. Go back, reload the page and try again.")
        if any("\x00" in str(value) for value in form.values()):
            raise PageError(400, "Bad request", "The form contained a character that cannot be stored.")
        return form

    def _same_origin(self, request: Request, origin: str) -> bool:
        seen = urlsplit(origin)
        ours = {urlsplit(self.ledger_settings.public_base_url).netloc, request.headers.get("host", "")}
        return seen.netloc in ours

    # -- answers ---------------------------------------------------------------------------------

    def render(self, request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        session = self.session(request)
        nav_items = CUSTOMER_NAV if session.role == "customer" else OPERATOR_NAV if session.role == "operator" else ()
        path = request.url.path
        nav = [
            {"href": PREFIX + suffix, "label": label,
             "current": path == PREFIX + suffix or (suffix not in ("", "/ops") and path.startswith(PREFIX + suffix))
             or (suffix == "/ops" and path.startswith(f"{PREFIX}/ops/customers"))}
            for suffix, label in nav_items
        ]
        html = environment().get_template(template).render(
            session=session, csrf=session.csrf, flash=session.take_flash(), nav=nav, **context
        )
        response = html_page(html, status)
        self.codec.save(response, session)
        return response

    def redirect(self, request: Request, location: str, flash: tuple[Level, str] | None = None) -> RedirectResponse:
        session = self.session(request)
        if flash is not None:
            session.add_flash(*flash)
        response = RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)
        self.codec.save(response, session)
        return response


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
