"""OpenAI's rate-limit headers: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with Go
style reset durations ("120ms", "1s", "6m0s") and `Retry-After` in whole seconds."""

from __future__ import annotations

import math
import time
from typing import Any

import redis.asyncio as redis

from tollgate_gateway.errors import GatewayError, Header
from tollgate_hotstate import Admitted, RateLimited
from tollgate_hotstate.keys import CustomerKeys

WINDOW_MS = 60_000


def duration(ms: int) -> str:
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}" if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{text}{seconds}s"


def _trio(kind: str, limit: int, remaining: int, reset_ms: int) -> list[Header]:
    return [
        (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining)).encode()),
        (f"x-ratelimit-reset-{kind}".encode(), duration(reset_ms).encode()),
    ]


def admitted_headers(a: Admitted) -> list[Header]:
    headers: list[Header] = []
    if a.rpm_limit > 0 and a.rpm_left >= 0:
        # The request just admitted is the newest in the sliding window: full refill in 60 s.
        headers += _trio("requests", a.rpm_limit, a.rpm_left, WINDOW_MS)
    if a.tpm_limit > 0 and a.tpm_left >= 0:
        refill = math.ceil((a.tpm_limit - a.tpm_left) * WINDOW_MS / a.tpm_limit)
        headers += _trio("tokens", a.tpm_limit, a.tpm_left, refill)
    return headers


async def rate_limited(client: redis.Redis, customer_id: str, limited: RateLimited) -> GatewayError:
    """The 429, with both header trios: the script reports the dimension that refused; the other
    one is read here (only on this path, never on an admitted request)."""
    keys = CustomerKeys(customer_id)
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    pipe.hmget(keys.acct, "rpm", "tpm", "tb_tokens", "tb_ts")
    pipe.zcount(keys.rl, now - WINDOW_MS, "+inf")
    pipe.zrange(keys.rl, 0, 0, withscores=True)
    acct, used, oldest = await pipe.execute()
    rpm, tpm = _num(acct[0]), _num(acct[1])
    headers: list[Header] = []
    if limited.kind == "requests":
        headers += _trio("requests", limited.limit, limited.remaining, limited.reset_ms)
    elif rpm > 0:
        reset = int(oldest[0][1]) + WINDOW_MS - now if oldest else 0
        headers += _trio("requests", rpm, rpm - int(used), reset)
    if limited.kind == "tokens":
        headers += _trio("tokens", limited.limit, limited.remaining, limited.reset_ms)
    elif tpm > 0:
        bucket = min(tpm, _num(acct[2], tpm) + (now - _num(acct[3], now)) * tpm // WINDOW_MS)
        headers += _trio("tokens", tpm, bucket, math.ceil((tpm - bucket) * WINDOW_MS / tpm))
    retry_s = max(1, math.ceil(limited.retry_after_ms / 1000))
    headers += [
        (b"retry-after", str(retry_s).encode()),
        (b"retry-after-ms", str(max(1, limited.retry_after_ms)).encode()),
    ]
    if limited.kind == "requests":
        message = (
            f"Rate limit reached on requests per min (RPM): Limit {limited.limit}, Used {limited.limit}. "
            f"Please try again in {duration(limited.retry_after_ms)}."
        )
    else:
        message = (
            f"Rate limit reached on tokens per min (TPM): Limit {limited.limit}, Remaining {limited.remaining}. "
            f"Please try again in {duration(limited.retry_after_ms)}."
        )
    return GatewayError(429, message, limited.kind, "rate_limit_exceeded", headers=headers)


def _num(value: Any, default: int = 0) -> int:
    if value is None:
        return default
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default
