"""Tier limits hold across gateway replicas: with two real gateway processes sharing one Redis,
a Tier 1 key (3 RPM) sending 20 requests within a minute, alternating between them, gets
exactly 3 through; every 429 carries OpenAI's rate-limit headers and `Retry-After`, readable by
the official `openai` SDK."""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import string
import sys
from collections.abc import AsyncIterator

import openai

from support.servers import Infra, ManagedProcess, free_port, service_process, wait_http
from tier.helpers import new_customer, provisioned
from tollgate_hotstate import HotState, api_key, create_redis

BASE62 = string.ascii_letters + string.digits
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_s(text: str) -> float:
    """OpenAI's reset headers are Go durations: `1s`, `120ms`, `6m0s`, `9.816s`."""
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * _SECONDS[u] for n, u in parts)


@contextlib.asynccontextmanager
async def mock_upstream(infra: Infra) -> AsyncIterator[str]:
    port = free_port()
    proc = ManagedProcess([sys.executable, "-m", "tollgate_standins.mock_upstream", "--port", str(port)], port,
                          log=infra.workdir / f"mock-upstream-{port}.log")
    proc.start(wait=False)
    try:
        await wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop()


async def seed_tier_1_key(infra: Infra) -> str:
    """A key and a loaded hot state at Tier 1 (3 RPM), as the ledger and the tier service leave
    them; plenty of credits, so only the rate limit can refuse."""
    customer = new_customer()
    key = "sk-tg-" + "".join(secrets.choice(BASE62) for _ in range(40))
    redis = create_redis(infra.redis_url, max_connections=4)
    try:
        await redis.hset(api_key(hashlib.sha256(key.encode()).hexdigest()), mapping={
            "customer_id": customer, "key_id": f"key_{customer}", "status": "active", "models": "",
            "dodo_customer_id": "",
        })
        await HotState(redis).load(customer, {
            "bal": 100 * 10**9, "seq": 1, "rpm": 3, "tpm": 40_000, "tier": "tier-1", "limits_v": 1, "plan": "",
            "status": "active",
        })
    finally:
        await redis.aclose()
    return key


def _print_logs(infra: Infra) -> None:
    for log in sorted(infra.workdir.glob("tollgate_gateway-*.log")):
        print(f"--- {log.name} (last 40 lines)")
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


async def test_a_tier_1_key_gets_exactly_3_requests_per_minute_across_two_gateways(infra: Infra) -> None:
    await provisioned(infra)  # the gateway publishes usage to the USAGE stream
    key = await seed_tier_1_key(infra)
    async with mock_upstream(infra) as upstream, contextlib.AsyncExitStack() as stack:
        gateways = []
        for i in range(2):
            env = {"UPSTREAM_BASE_URL": upstream, "GATEWAY_WORKERS": "1",
                   "GATEWAY_SPOOL_DIR": str(infra.workdir / f"spool-rl-{i}-{free_port()}")}
            proc = await stack.enter_async_context(service_process("tollgate_gateway", infra, env=env))
            gateways.append(f"http://127.0.0.1:{proc.port}/v1")
        clients = [openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=30) for url in gateways]
        stack.callback(_print_logs, infra)  # shown by pytest only when the test fails

        passed_remaining: list[str | None] = []
        limited: list[openai.RateLimitError] = []
        for i in range(20):
            client = clients[i % 2]
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=16)
                assert raw.parse().choices[0].message.content
                passed_remaining.append(raw.headers.get("x-ratelimit-remaining-requests"))
            except openai.RateLimitError as exc:
                limited.append(exc)
        for client in clients:
            await client.close()

    assert len(passed_remaining) == 3 and len(limited) == 17
    assert passed_remaining == ["2", "1", "0"]
    for error in limited:
        headers = error.response.headers
        assert error.status_code == 429 and error.code == "rate_limit_exceeded"
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        reset_s = go_duration_s(headers["x-ratelimit-reset-requests"])
        assert 0 < reset_s <= 60
        retry_after = int(headers["retry-after"])  # whole seconds: what both SDK lines honour
        assert 1 <= retry_after <= 60 and retry_after >= reset_s - 1
