"""Slack incoming-webhook stand-in, plus a generic signed-webhook receiver.

Answers like Slack's incoming webhooks: 200 `ok` (text/plain), 400 `invalid_payload` for a body
that is not a JSON object, 400 `no_text` when there is nothing to post.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

# Slack's error strings for the statuses tests are likely to simulate.
_SLACK_ERROR_BODIES = {400: "invalid_payload", 403: "invalid_token", 404: "no_service", 429: "rate_limited"}


class SlackSinkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLACK_SINK_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8092
    log_level: str = "warning"
    # Standard Webhooks secret ("whsec_..."); when set, each /hooks delivery is checked and stored
    # with signature_valid true/false (it is still accepted, so tests can look at bad deliveries).
    hook_secret: str | None = None
    max_messages: int = Field(default=1000, ge=1)


class _Store:
    def __init__(self, limit: int) -> None:
        self.items: list[dict[str, Any]] = []
        self.limit = limit
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    def add(self, item: dict[str, Any]) -> None:
        item["id"] = next(self._ids)
        self.items.append(item)
        if len(self.items) > self.limit:
            del self.items[0]
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.items) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()


class _FailMode:
    def __init__(self) -> None:
        self.until = 0.0
        self.remaining: int | None = None
        self.status = 500
        self.body: str | None = None
        self.retry_after: int | None = None

    def clear(self) -> None:
        self.until = 0.0
        self.remaining = None

    def active(self) -> bool:
        if self.remaining is not None:
            return self.remaining > 0
        return time.monotonic() < self.until

    def take(self) -> bool:
        """True when this request must fail; a count-based failure is used up by it."""
        if not self.active():
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "failing": self.active(),
            "seconds_left": round(max(0.0, self.until - time.monotonic()), 3) if self.remaining is None else None,
            "remaining": self.remaining,
            "status": self.status,
            "retry_after": self.retry_after,
        }


class _State:
    def __init__(self, settings: SlackSinkSettings) -> None:
        self.messages = _Store(settings.max_messages)
        self.hooks = _Store(settings.max_messages)
        self.fail = _FailMode()
        self.accepted = 0
        self.rejected = 0
        self.verifier = Webhook(settings.hook_secret) if settings.hook_secret else None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def _parse_slack_body(raw: bytes, content_type: str) -> Any:
    """Slack takes a JSON body or a form with a `payload` field holding JSON."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        form = parse_qs(raw.decode("utf-8", "replace"))
        raw = form.get("payload", [""])[0].encode()
    return orjson.loads(raw)


def create_app(settings: SlackSinkSettings | None = None) -> Starlette:
    cfg = settings or SlackSinkSettings()
    holder: dict[str, _State] = {}

    def state() -> _State:
        return holder["state"]

    def failure(st: _State) -> Response | None:
        if not st.fail.take():
            return None
        st.rejected += 1
        headers = {"retry-after": str(st.fail.retry_after)} if st.fail.retry_after is not None else None
        body = st.fail.body or _SLACK_ERROR_BODIES.get(st.fail.status, "internal_error")
        return PlainTextResponse(body, status_code=st.fail.status, headers=headers)

    async def slack_webhook(request: Request) -> Response:
        st = state()
        failed = failure(st)
        if failed is not None:
            return failed
        path = request.url.path
        parts = [p for p in path.split("/")[2:] if p]
        if not parts:
            st.rejected += 1
            return PlainTextResponse("no_service", status_code=404)
        raw = await request.body()
        try:
            payload = _parse_slack_body(raw, request.headers.get("content-type", ""))
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            st.rejected += 1
            return PlainTextResponse("invalid_payload", status_code=400)
        if not any(payload.get(k) for k in ("text", "blocks", "attachments")):
            st.rejected += 1
            return PlainTextResponse("no_text", status_code=400)
        st.accepted += 1
        st.messages.add(
            {
                "path": path,
                "text": payload.get("text"),
                "blocks": payload.get("blocks"),
                "attachments": payload.get("attachments"),
                "body": payload,
                "headers": _headers(request),
                "received_at": _now(),
            }
        )
        return PlainTextResponse("ok")

    async def generic_hook(request: Request) -> Response:
        st = state()
        failed = failure(st)
        if failed is not None:
            return failed
        raw = await request.body()
        headers = _headers(request)
        try:
            parsed: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        signature_valid: bool | None = None
        if st.verifier is not None:
            try:
                st.verifier.verify(raw, headers, json_parse=False)
                signature_valid = True
            except (WebhookVerificationError, ValueError, UnicodeDecodeError):
                signature_valid = False
        st.accepted += 1
        st.hooks.add(
            {
                "name": request.path_params["name"],
                "body": raw.decode("utf-8", "replace"),
                "json": parsed,
                "headers": headers,
                "signature_valid": signature_valid,
                "received_at": _now(),
            }
        )
        return JSONResponse({"ok": True})

    async def wait_and_list(request: Request, store: _Store) -> list[dict[str, Any]]:
        wait_ms = int(request.query_params.get("wait_ms", "0"))
        if wait_ms > 0:
            await store.wait_for(int(request.query_params.get("min_count", "1")), wait_ms / 1000)
        return store.items

    async def list_messages(request: Request) -> Response:
        return JSONResponse(await wait_and_list(request, state().messages))

    async def clear_messages(request: Request) -> Response:
        store = state().messages
        deleted = len(store.items)
        store.items.clear()
        return JSONResponse({"deleted": deleted})

    async def list_hooks(request: Request) -> Response:
        items = await wait_and_list(request, state().hooks)
        name = request.path_params.get("name")
        if name is not None:
            items = [h for h in items if h["name"] == name]
        return JSONResponse(items)

    async def clear_hooks(request: Request) -> Response:
        store = state().hooks
        deleted = len(store.items)
        store.items.clear()
        return JSONResponse({"deleted": deleted})

    async def fail_control(request: Request) -> Response:
        fail = state().fail
        if request.method == "DELETE":
            fail.clear()
        elif request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                body = None
            error = _apply_fail(fail, body)
            if error is not None:
                return JSONResponse({"error": error}, status_code=400)
        return JSONResponse(fail.describe())

    async def stats(request: Request) -> Response:
        st = state()
        return JSONResponse(
            {
                "accepted": st.accepted,
                "rejected": st.rejected,
                "messages": len(st.messages.items),
                "hooks": len(st.hooks.items),
            }
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # State is made inside the serving loop: its asyncio.Events must belong to that loop.
        holder["state"] = _State(cfg)
        app.state.sink = holder["state"]
        yield

    return Starlette(
        routes=[
            Route("/services/{rest:path}", slack_webhook, methods=["POST"]),
            Route("/hooks/{name}", generic_hook, methods=["POST"]),
            Route("/hooks/{name}", list_hooks, methods=["GET"]),
            Route("/hooks", list_hooks, methods=["GET"]),
            Route("/hooks", clear_hooks, methods=["DELETE"]),
            Route("/messages", list_messages, methods=["GET"]),
            Route("/messages", clear_messages, methods=["DELETE"]),
            Route("/_sink/fail", fail_control, methods=["GET", "POST", "DELETE"]),
            Route("/_sink/stats", stats, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _apply_fail(fail: _FailMode, body: Any) -> str | None:
    if not isinstance(body, dict):
        return 'body must be a JSON object like {"seconds": 30, "status": 500}'
    seconds = body.get("seconds")
    count = body.get("count")
    status = body.get("status", 500)
    retry_after = body.get("retry_after")
    text = body.get("body")
    if seconds is None and count is None:
        seconds = 60
    if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0):
        return "seconds must be a non-negative number"
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        return "count must be a non-negative integer"
    if not isinstance(status, int) or not 400 <= status <= 599:
        return "status must be an HTTP error status (400-599)"
    if retry_after is not None and (not isinstance(retry_after, int) or retry_after < 0):
        return "retry_after must be a non-negative integer (seconds)"
    if text is not None and not isinstance(text, str):
        return "body must be a string"
    fail.status = status
    fail.retry_after = retry_after
    fail.body = text
    if count is not None:
        fail.remaining = count
        fail.until = 0.0
    else:
        fail.remaining = None
        fail.until = time.monotonic() + float(seconds or 0)
    return None
