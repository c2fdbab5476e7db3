"""Errors in one JSON shape, `{"error": {"message", "type", "code"}}`, with no stack traces."""

from __future__ import annotations

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from tollgate_platform.logging import get_logger

log = get_logger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"{what} {ident} not found", f"{what.replace(' ', '_')}_not_found", "not_found_error")


def body(message: str, type_: str, code: str) -> dict[str, dict[str, str]]:
    return {"error": {"message": message, "type": type_, "code": code}}


_STATUS_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 409: "conflict_error"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(body(exc.message, exc.type, exc.code), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "api_error")
        return JSONResponse(body(str(exc.detail), type_, f"http_{exc.status_code}"), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid"))
        return JSONResponse(body(message, "invalid_request_error", "invalid_request"), status_code=422)

    # Postgres text cannot hold U+0000 (or bytes invalid in the encoding): the statement failed
    # and rolled back, so nothing changed; it is the caller's input, not our crash.
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    async def untranslatable(_: Request, exc: asyncpg.PostgresError) -> JSONResponse:
        return JSONResponse(
            body("text fields may not contain NUL or invalid characters", "invalid_request_error", "invalid_text"),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", error=type(exc).__name__)
        return JSONResponse(body("internal error", "api_error", "internal_error"), status_code=500)
