"""Helpers shared by the stand-in tests: threaded uvicorn servers, polling, client wrappers."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx
from openai import AsyncOpenAI

from support.threaded_server import ThreadedServer

UPSTREAM_KEY = "sk-upstream-test-0123456789"
SMTP_USER = "notifier"
SMTP_PASSWORD = "sink-password"
HOOK_SECRET = "whsec_" + "dG9sbGdhdGUtdGVzdC1ob29rLXNlY3JldA=="  # base64("tollgate-test-hook-secret")


# The names this package's conftest and tests use: `with serve(app) as server:` runs `app` under
# uvicorn in a daemon thread (own loop, a free port bound by uvicorn itself).
ThreadServer = ThreadedServer
serve = ThreadedServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    """Poll an async predicate until truthy (returns its value); never a timing assertion."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


# ---------------------------------------------------------------------------- mock upstream


@dataclass
class Upstream:
    url: str
    http: httpx.AsyncClient
    app: Any

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, api_key: str = UPSTREAM_KEY, **kwargs: Any) -> AsyncOpenAI:
        # No SDK retries: a test about a 500 must see one request, not three.
        return AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **kwargs)

    async def configure(self, **knobs: Any) -> dict[str, Any]:
        response = await self.http.put("/_mock/config", json=knobs)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        params = {"path": path} if path else None
        response = await self.http.get("/_mock/requests", params=params)
        entries: list[dict[str, Any]] = response.json()["requests"]
        return entries

    async def last(self, path: str | None = None) -> dict[str, Any]:
        entries = await self.requests(path)
        assert entries, "the mock upstream recorded no request"
        return entries[-1]
