"""Forwarding an admitted call to the upstream and the answer back: whole answers with the
billing headers, streams chunk by chunk. Every way a call can end settles it exactly once:
answered, refused or broken by the upstream (cost 0), client gone (what was generated), cut off
at the reservation (what was delivered)."""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.types import Receive, Send

from tollgate_gateway import metrics
from tollgate_gateway.asgi import send_bytes
from tollgate_gateway.billing import Usage, from_openai, to_openai, usd_exact
from tollgate_gateway.errors import GatewayError, Header, upstream_failed, upstream_timeout
from tollgate_gateway.parsing import RESPONSES
from tollgate_gateway.relay import StreamRelay, UsageMark, render_usage
from tollgate_gateway.runtime import Runtime
from tollgate_gateway.settlement import Call, bill, local_usage, output_tokens, record, settle
from tollgate_gateway.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout
from tollgate_gateway.watcher import Watcher, uncancel

_UPSTREAM_KEEP = (b"openai-processing-ms", b"openai-version")


async def _call_upstream(rt: Runtime, call: Call, forward: bytes) -> UpstreamResponse:
    try:
        return await rt.upstream.request(
            b"POST", call.path, forward, [(b"x-client-request-id", call.request_id.encode())],
            rt.settings.upstream_timeout_s,
        )
    except UpstreamTimeout:
        metrics.UPSTREAM_FAILURES.labels("timeout").inc()
        raise upstream_timeout() from None
    except UpstreamError as exc:
        metrics.UPSTREAM_FAILURES.labels("connect").inc()
        raise upstream_failed(f"The upstream model provider could not be reached: {exc}") from None


async def _refusal(rt: Runtime, call: Call, resp: UpstreamResponse, data: bytes) -> GatewayError:
    """An upstream refusal. 4xx pass through (the client's request was at fault), except the
    upstream refusing the gateway's own credentials; 5xx become 502. Either costs nothing."""
    await settle(rt, call, Usage(0, 0), "upstream_error")
    status = resp.status
    if 400 <= status < 500 and status not in (401, 403, 407):
        try:
            error = orjson.loads(data).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        if isinstance(error, dict):
            return GatewayError(
                status, str(error.get("message", "")), str(error.get("type") or "invalid_request_error"),
                error.get("code") if isinstance(error.get("code"), str) else None,
                error.get("param") if isinstance(error.get("param"), str) else None,
                headers=[h for h in resp.headers if h[0] == b"retry-after"],
            )
        return GatewayError(status, f"The upstream refused the request (HTTP {status}).")
    metrics.UPSTREAM_FAILURES.labels(str(status)).inc()
    if status in (401, 403, 407):
        return upstream_failed("The upstream refused the gateway's credentials.")
    return upstream_failed(f"The upstream model provider failed (HTTP {status}).")


def _passthrough(resp: UpstreamResponse) -> list[Header]:
    kept: list[Header] = []
    for name, value in resp.headers:
        if name == b"x-request-id":
            kept.append((b"x-upstream-request-id", value))
        elif name in _UPSTREAM_KEEP:
            kept.append((name, value))
    return kept


async def whole(rt: Runtime, call: Call, receive: Receive, send: Send, forward: bytes) -> int:
    watcher = Watcher(receive)
    timeout = rt.settings.upstream_timeout_s
    try:
        resp = await _call_upstream(rt, call, forward)
        try:
            data = await resp.read(timeout)
        except UpstreamTimeout:
            metrics.UPSTREAM_FAILURES.labels("timeout").inc()
            raise upstream_timeout() from None
        except UpstreamError:
            metrics.UPSTREAM_FAILURES.labels("broken").inc()
            raise upstream_failed("The upstream model provider broke off its answer.") from None
    except asyncio.CancelledError:
        if not watcher.gone:
            raise
        uncancel()
        # The upstream saw its connection close having read the prompt; nothing was delivered.
        metrics.ESTIMATED.labels("client_disconnected").inc()
        await settle(rt, call, local_usage(call, output=0), "client_disconnected")
        return 499
    finally:
        watcher.stop()
    if resp.status >= 400:
        raise await _refusal(rt, call, resp, data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    usage = from_openai(obj.get("usage")) if isinstance(obj, dict) else None
    if usage is None:
        metrics.ESTIMATED.labels("no_usage").inc()
        usage = local_usage(call, output=output_tokens(call.parsed.kind, obj))
    billed = bill(rt, call, usage, "ok")
    headers = [
        (b"content-type", resp.header(b"content-type") or b"application/json"),
        *call.headers,
        *_passthrough(resp),
        (b"x-tollgate-cost-usd", usd_exact(billed.cost).encode()),
        (b"x-tollgate-balance-usd", usd_exact(billed.balance).encode()),
    ]
    if usage.estimated:
        headers.append((b"x-tollgate-usage-estimated", b"true"))
    await send_bytes(send, resp.status, data, headers)
    # Recorded right after the answer went out: the client does not wait for this round trip.
    await record(rt, call)
    return resp.status


async def stream(rt: Runtime, call: Call, receive: Receive, send: Send, forward: bytes) -> int:
    watcher = Watcher(receive)
    timeout = rt.settings.upstream_timeout_s
    relay = StreamRelay(
        call.parsed.kind, call.admitted.max_out * call.parsed.choices, time.monotonic() + rt.settings.max_request_s
    )
    resp: UpstreamResponse | None = None
    started = False
    try:
        resp = await _call_upstream(rt, call, forward)
        if resp.status != 200:
            try:
                data = await resp.read(timeout)
            except UpstreamError:
                data = b""
            watcher.stop()
            raise await _refusal(rt, call, resp, data)
        headers = [
            (b"content-type", resp.header(b"content-type") or b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            *call.headers,
            *_passthrough(resp),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        started = True
        try:
            while not relay.cut:
                # Never wait past the point where the hold would expire: the stream ends there.
                remaining = relay.deadline - time.monotonic()
                try:
                    piece = await resp.next(min(timeout, max(remaining, 0.001)))
                except UpstreamTimeout:
                    if remaining > timeout:
                        raise
                    relay.cut = True
                    break
                if piece is None:
                    break
                items = relay.feed(piece)
                if items:
                    await _emit(rt, call, relay, items, send)
        except UpstreamError as exc:
            resp.abort()
            call.status = "upstream_error"
            metrics.UPSTREAM_FAILURES.labels("timeout" if isinstance(exc, UpstreamTimeout) else "broken").inc()
            frames = b"".join(relay.failure_frames("The upstream model provider broke off the stream."))
            await send({"type": "http.response.body", "body": frames, "more_body": True})
        else:
            if relay.cut:
                resp.abort()
                call.status = "cut_off"
                metrics.CUTOFFS.inc()
                await _emit(rt, call, relay, relay.cutoff_frames(), send)
            elif relay.failed:
                call.status = "upstream_error"
        if call.bill is None:
            bill(rt, call, _stream_usage(call, relay, None), call.status)
        watcher.stop()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        # The cost is already in the stream; the charge is recorded once the client has it all.
        await record(rt, call)
        return 200
    except asyncio.CancelledError:
        if not watcher.gone:
            raise
        uncancel()
        if resp is not None:
            resp.abort()  # the upstream sees its connection close and stops generating
        call.status = "client_disconnected"
        if call.bill is None:
            metrics.ESTIMATED.labels("client_disconnected").inc()
            bill(rt, call, relay.usage or local_usage(call, relay.output_tokens()), call.status)
        await record(rt, call)
        return 200 if started else 499
    finally:
        watcher.stop()


async def _emit(rt: Runtime, call: Call, relay: StreamRelay, items: list[bytes | UsageMark], send: Send) -> None:
    parts: list[bytes] = []
    for item in items:
        if isinstance(item, bytes):
            parts.append(item)
            continue
        if relay.failed:
            call.status = "upstream_error"
        billed = bill(rt, call, _stream_usage(call, relay, item), call.status)
        usage_obj = None
        if item.usage is not None:
            holder = item.obj.get("response", {}) if call.parsed.kind == RESPONSES else item.obj
            usage_obj = holder.get("usage")
        if not isinstance(usage_obj, dict):
            usage_obj = to_openai(billed.usage, call.parsed.kind == RESPONSES)
        extra = {
            "request_id": call.request_id,
            "cost_usd": usd_exact(billed.cost),
            "balance_usd": usd_exact(billed.balance),
            "billing_mode": call.admitted.mode,
            "estimated": billed.usage.estimated,
        }
        parts.append(render_usage(item, call.parsed.kind, call.parsed.client_wants_usage, usage_obj, extra))
    if parts:
        await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})


def _stream_usage(call: Call, relay: StreamRelay, mark: UsageMark | None) -> Usage:
    usage = mark.usage if mark is not None and mark.usage is not None else relay.usage
    if usage is None:
        metrics.ESTIMATED.labels("cut_off" if relay.cut else "no_usage").inc()
        usage = local_usage(call, relay.output_tokens())
    return usage
