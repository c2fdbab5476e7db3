"""Operator API: the delivery log and per-customer preferences. Bearer admin token only."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tollgate_notifier import prefs, store
from tollgate_notifier.alerts import ALL_KINDS
from tollgate_notifier.settings import NotifierSettings

Status = Literal["pending", "sent", "failed", "skipped"]
ChannelName = Literal["email", "slack", "webhook"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_


def _error(status: int, message: str, type_: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.message, exc.type)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}".strip(": "), "invalid_request_error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)


def install(app: FastAPI, settings: NotifierSettings, pool: Callable[[], asyncpg.Pool]) -> None:
    install_error_handlers(app)
    expected = settings.admin_token.get_secret_value().encode()

    @app.middleware("http")
    async def require_admin(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # A middleware, not a dependency: the credential is checked before anything else about
        # the request (a malformed body from a stranger gets 401, not a validation hint).
        if request.url.path.startswith("/admin/"):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token or not hmac.compare_digest(token.encode(), expected):
                return _error(401, "admin credential required (Authorization: Bearer <admin token>)",
                              "authentication_error", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    app.include_router(router(settings, pool))


def router(settings: NotifierSettings, pool: Callable[[], asyncpg.Pool]) -> APIRouter:
    api = APIRouter(prefix="/admin/v1")

    @api.get("/deliveries")
    async def deliveries(
        customer_id: str | None = None,
        status: Status | None = None,
        channel: ChannelName | None = None,
        kind: Annotated[str | None, Query(description="alert kind, e.g. balance.low")] = None,
        before_id: int | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        if kind is not None and kind not in ALL_KINDS:
            raise ApiError(422, f"kind: one of {', '.join(ALL_KINDS)}", "invalid_request_error")
        rows = await store.list_deliveries(
            pool(), customer_id=customer_id, status=status, channel=channel, kind=kind,
            before_id=before_id, limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return {"data": rows, "has_more": more, "next_before_id": rows[-1]["id"] if more else None}

    @api.get("/preferences/{customer_id}")
    async def get_preferences(customer_id: str) -> dict[str, Any]:
        async with pool().acquire() as conn:
            stored = await prefs.load(conn, customer_id)
            current = stored or prefs.defaults(customer_id, settings)
            email = await prefs.effective_email(conn, stored, customer_id, settings)
        return current.public(stored is not None, email)

    @api.put("/preferences/{customer_id}")
    async def put_preferences(customer_id: str, change: prefs.PreferencesUpdate) -> dict[str, Any]:
        try:
            saved = await prefs.update(pool(), customer_id, change, settings)
        except prefs.InvalidPreferences as exc:
            raise ApiError(422, str(exc), "invalid_request_error") from exc
        async with pool().acquire() as conn:
            email = await prefs.effective_email(conn, saved, customer_id, settings)
        return saved.public(True, email)

    @api.get("/alert-states/{customer_id}")
    async def alert_states(customer_id: str) -> dict[str, Any]:
        return {"customer_id": customer_id, "data": await store.alert_states(pool(), customer_id)}

    return api
