"""Rendering console pages: the Jinja2 environment, the security headers every page carries, and
the route class that turns "sign in first" / "not allowed" / "not found" into HTML answers
(the ledger's app-wide error handlers answer JSON, which is right for its APIs, not for pages)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tollgate_ledger.console.formatting import FILTERS
from tollgate_ledger.console.sessions import COOKIE, COOKIE_PATH

PREFIX = "/console"

# No script at all; styles only from our own stylesheet (chart colours are classes); forms may
# post only here, and the browser then follows our redirect to the payment page.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("tollgate_ledger.console", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals["css_url"] = f"{PREFIX}/static/console.css?v={stylesheet_version()}"
    return env


@functools.cache
def stylesheet() -> bytes:
    return resources.files("tollgate_ledger.console").joinpath("static", "console.css").read_bytes()


@functools.cache
def stylesheet_version() -> str:
    return hashlib.sha256(stylesheet()).hexdigest()[:12]


def html_page(html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def error_page(status: int, title: str, message: str, *, signed_in: bool = False) -> HTMLResponse:
    html = environment().get_template("error.html").render(
        title=title, message=message, status=status, signed_in=signed_in
    )
    return html_page(html, status)


def safe_next(target: str | None) -> str:
    """Only a console path may be a post-sign-in destination (no open redirect)."""
    if not target or not target.startswith(PREFIX) or target.startswith("//") or "\\" in target:
        return PREFIX
    return target


class SignInRequired(Exception):
    """Control flow: the page needs a signed-in visitor."""

    def __init__(self, *, forget: bool = False) -> None:
        super().__init__("sign in required")
        self.forget = forget  # the session cookie is no longer any good: drop it


class Redirect(Exception):
    """Control flow: this page lives elsewhere for the signed-in role."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class PageError(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def not_found(what: str = "page") -> PageError:
    return PageError(404, "Not found", f"There is no such {what}.")


class ConsoleRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            if "\x00" in request.url.path or any("\x00" in v for v in request.query_params.values()):
                # Postgres text cannot hold U+0000: refuse it here rather than fail in a query.
                return error_page(400, "Bad request", "The request was not understood.")
            try:
                return await original(request)
            except SignInRequired as exc:
                response: Response
                if request.method in ("GET", "HEAD"):
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    response = RedirectResponse(
                        f"{PREFIX}/sign-in?next={quote(safe_next(target), safe='')}", status_code=303,
                        headers=SECURITY_HEADERS,
                    )
                else:
                    response = error_page(401, "Please sign in", "Your session has ended. Sign in again to continue.")
                if exc.forget:
                    response.delete_cookie(COOKIE, path=COOKIE_PATH)
                return response
            except Redirect as exc:
                return RedirectResponse(exc.location, status_code=303, headers=SECURITY_HEADERS)
            except PageError as exc:
                return error_page(exc.status, exc.title, exc.message)
            except RequestValidationError:
                return error_page(400, "Bad request", "The request was not understood.")

        return handler
