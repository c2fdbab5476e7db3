"""The few raw-ASGI helpers the hot path uses instead of a framework (no routing tables, no
request models, no middleware on the per-request path)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Receive, Scope, Send

from tollgate_gateway.errors import GatewayError, Header, too_large

JSON: Header = (b"content-type", b"application/json")


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to exceed the limit."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large(limit)
        except ValueError:
            raise GatewayError(400, "Invalid Content-Length header.") from None
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


class ClientGone(Exception):
    """The client hung up before its request was read."""


async def send_bytes(send: Send, status: int, body: bytes, headers: Sequence[Header]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: GatewayError, request_id: bytes, extra: Sequence[Header] = ()) -> None:
    await send_bytes(send, error.status, error.body(), [JSON, (b"x-request-id", request_id), *error.headers, *extra])
