"""The hot path, `/v1/*`: auth -> parse -> admit (one Redis script) -> forward -> settle (one
Redis script) -> usage event queued. Raw ASGI, no framework on the per-request path."""

from __future__ import annotations

import uuid
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from starlette.types import Receive, Scope, Send

from tollgate_gateway import account, forward, metrics
from tollgate_gateway.admission import admit
from tollgate_gateway.asgi import JSON, ClientGone, header, read_body, send_bytes, send_error
from tollgate_gateway.billing import Usage
from tollgate_gateway.errors import GatewayError, billing_unavailable, overloaded, state_unreachable
from tollgate_gateway.parsing import ENDPOINTS, parse
from tollgate_gateway.runtime import Runtime
from tollgate_gateway.settlement import bill, record
from tollgate_platform.logging import get_logger

log = get_logger("tollgate.gateway.hotpath")


class HotPath:
    def __init__(self) -> None:
        self.rt: Runtime | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.rt
        request_id = "req_" + uuid.uuid4().hex
        if rt is None:
            await send_error(send, overloaded(), request_id.encode())
            return
        method: str = scope["method"]
        path: str = scope["path"]
        parent = None
        if header(scope, b"traceparent") is not None:
            parent = propagate.extract({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        # Not start_as_current_span: nothing on the hot path reads the current span, and attaching
        # it to the context costs as much as the span itself; its context is passed on explicitly.
        span = rt.tracer.start_span(
            f"{method} {path if path in ENDPOINTS else '/v1'}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path, "tollgate.request_id": request_id},
        )
        status = 500
        try:
            status = await self._dispatch(rt, scope, receive, send, request_id, span.get_span_context())
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        metrics.REQUESTS.labels(path if path in ENDPOINTS else "other", str(status)).inc()

    async def _dispatch(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str, span: SpanContext
    ) -> int:
        started = False

        async def tracked_send(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            if rt.closing or rt.inflight >= rt.settings.max_inflight:
                metrics.SHED.inc()
                raise overloaded()
            rt.enter()
            metrics.INFLIGHT.inc()
            try:
                return await self._route(rt, scope, receive, tracked_send, request_id, span)
            finally:
                rt.leave()
                metrics.INFLIGHT.dec()
        except GatewayError as exc:
            if not started:
                await send_error(send, exc, request_id.encode())
            return exc.status
        except ClientGone:
            return 499
        except Exception as exc:
            if state_unreachable(exc):
                # Fail closed: without the hot state nothing can be reserved, nothing runs on credit.
                log.warning("billing state unavailable", error=type(exc).__name__, request_id=request_id)
                if not started:
                    await send_error(send, billing_unavailable(), request_id.encode())
                return 503
            log.exception("unexpected gateway error", request_id=request_id)
            if not started:
                error = GatewayError(500, "The gateway had an internal error.", "server_error")
                await send_error(send, error, request_id.encode())
            return 500

    async def _route(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str, span: SpanContext
    ) -> int:
        method: str = scope["method"]
        path: str = scope["path"]
        kind = ENDPOINTS.get(path)
        readable = path == "/v1/models" or path.startswith(("/v1/models/", "/v1/billing/"))
        if kind is None and not (method == "GET" and readable):
            raise GatewayError(404, f"Invalid URL ({method} {path})", "invalid_request_error")
        if kind is not None and method != "POST":
            raise GatewayError(405, f"Invalid method for URL ({method} {path})", "invalid_request_error")
        client = scope.get("client")
        key = await rt.auth.authenticate(header(scope, b"authorization"), client[0] if client else "")
        if kind is None:
            status, body = await account.get(rt, key, path)
            await send_bytes(send, status, body, [JSON, (b"x-request-id", request_id.encode())])
            return status
        raw = await read_body(scope, receive, rt.settings.max_body_bytes)
        parsed = parse(kind, raw)
        call, body = await admit(rt, request_id, key, path, raw, parsed, span, header(scope, b"x-client-request-id"))
        try:
            if parsed.stream:
                return await forward.stream(rt, call, receive, send, body)
            return await forward.whole(rt, call, receive, send, body)
        finally:
            if call.bill is None:
                # Whatever went wrong, the hold is released and the attempt recorded (cost 0).
                bill(rt, call, Usage(0, 0, estimated=True), "upstream_error")
            if not call.recorded:
                await record(rt, call)
