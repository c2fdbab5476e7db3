"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with OpenAI's
status codes, so every OpenAI SDK raises the exception class its users already handle."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from redis.exceptions import RedisError

from tollgate_platform.db import UNAVAILABLE

Header = tuple[bytes, bytes]


class GatewayError(Exception):
    """Raised anywhere before the response starts; the router turns it into the error reply."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Sequence[Header] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = list(headers)

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


NO_RETRY: Header = (b"x-should-retry", b"false")


def invalid_api_key(detail: str = "Incorrect API key provided.") -> GatewayError:
    return GatewayError(401, detail, "invalid_request_error", "invalid_api_key")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404, f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error", "model_not_found", "model",
    )


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body too large: the limit is {limit} bytes.", "invalid_request_error",
        "request_too_large", headers=[NO_RETRY],
    )


def overloaded() -> GatewayError:
    return GatewayError(
        503, "The gateway is overloaded, please retry shortly.", "server_error", "server_is_overloaded",
        headers=[(b"retry-after", b"1")],
    )


def upstream_failed(message: str = "The upstream model provider failed to answer.") -> GatewayError:
    return GatewayError(502, message, "server_error", "upstream_error")


def upstream_timeout() -> GatewayError:
    return GatewayError(504, "The upstream model provider did not answer in time.", "server_error", "upstream_timeout")


def billing_unavailable() -> GatewayError:
    # Fail closed: without the hot state no reservation can be made, and nothing runs on credit.
    return GatewayError(
        503, "Billing is temporarily unavailable, please retry shortly.", "server_error", "billing_unavailable",
        headers=[(b"retry-after", b"1")],
    )


def state_unreachable(exc: BaseException) -> bool:
    """Redis or Postgres could not be reached. Besides their connection errors and OSError, this is
    uvloop's RuntimeError for a write on a transport that closed under redis-py - the same fault,
    seen when Redis restarts or a connection is cut, and not a bug of ours."""
    if isinstance(exc, (RedisError, *UNAVAILABLE)):
        return True
    return isinstance(exc, RuntimeError) and str(exc).startswith("unable to perform operation on <")
