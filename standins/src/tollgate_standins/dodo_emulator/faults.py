"""Runtime fault injection: failing API calls (before or after applying them) and unreliable webhooks.

Every random decision comes from generators seeded by the configured seed, so a given sequence of
requests sees the same faults on every run.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .runtime import Emulator

CONTROL_PREFIX = "/_emulator"


class EndpointFault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = "*"
    path_prefix: str = "/"
    error_rate: float = Field(default=0.0, ge=0, le=1)
    # 0 or "timeout": never answer in time (hold the connection until the client gives up).
    status: int | Literal["timeout"] = 500
    retry_after_s: float | None = None
    delay_ms: int = Field(default=0, ge=0)
    apply_then_fail: bool = False
    hang_max_s: float = Field(default=120.0, gt=0)

    @property
    def is_timeout(self) -> bool:
        return self.status in (0, "timeout")

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method.upper() == method.upper()) and path.startswith(self.path_prefix)


class WebhookFaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drop_rate: float = Field(default=0.0, ge=0, le=1)
    duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    reorder: bool = False
    reorder_window_ms: int = Field(default=100, ge=1)


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    endpoints: list[EndpointFault] = Field(default_factory=list)
    webhooks: WebhookFaults = Field(default_factory=WebhookFaults)


class FaultState:
    def __init__(self) -> None:
        self.set(FaultConfig())

    def set(self, config: FaultConfig) -> None:
        self.config = config
        self.api_rng = random.Random(f"{config.seed}:api")
        self.webhook_rng = random.Random(f"{config.seed}:webhooks")
        self.injected = 0

    def match(self, method: str, path: str) -> EndpointFault | None:
        for rule in self.config.endpoints:
            if rule.matches(method, path):
                return rule
        return None

    def should_fail(self, rule: EndpointFault) -> bool:
        # Always draw, even at rate 0 or 1, so that changing one rate does not shift later draws.
        return self.api_rng.random() < rule.error_rate

    def drop_webhook(self) -> bool:
        return self.webhook_rng.random() < self.config.webhooks.drop_rate

    def duplicate_webhook(self) -> bool:
        return self.webhook_rng.random() < self.config.webhooks.duplicate_rate


def _error_code(status: int) -> str:
    if status == 429:
        return "TOO_MANY_REQUESTS"
    if status >= 500:
        return "INTERNAL_SERVER_ERROR"
    return "INJECTED_FAULT"


class FaultMiddleware:
    def __init__(self, app: ASGIApp, emu: Emulator) -> None:
        self.app = app
        self.emu = emu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        faults = self.emu.faults
        rule = faults.match(scope["method"], scope["path"])
        if rule is None:
            await self.app(scope, receive, send)
            return
        if rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        if not faults.should_fail(rule):
            await self.app(scope, receive, send)
            return
        faults.injected += 1
        self.emu.state.bump("faults_injected")
        if rule.apply_then_fail:
            try:
                await self.app(scope, receive, _discard)
            except Exception:  # noqa: S110 - the injected failure below is the answer either way
                pass
        if rule.is_timeout:
            await _hang_until_disconnect(receive, rule.hang_max_s)
            await _send_json(send, 504, {"code": "GATEWAY_TIMEOUT", "message": "injected timeout"}, {})
            return
        status = int(rule.status)
        headers: dict[str, str] = {}
        if rule.retry_after_s is not None:
            headers["retry-after"] = _format_seconds(rule.retry_after_s)
        body = {"code": _error_code(status), "message": f"injected fault on {scope['method']} {scope['path']}"}
        await _send_json(send, status, body, headers)


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


async def _discard(_: Message) -> None:
    return None


async def _hang_until_disconnect(receive: Receive, max_s: float) -> None:
    async def wait_disconnect() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    try:
        await asyncio.wait_for(wait_disconnect(), timeout=max_s)
    except TimeoutError:
        return


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    raw = orjson.dumps(body)
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": raw})
