"""Load the gateway cannot serve is shed at once (503 + Retry-After, never a queue that grows),
and usage that was settled but never published - a crash between the two - is published later
from what Redis still holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from support.servers import Infra, eventually
from tollgate_contracts.events import UsageRecorded
from tollgate_hotstate import HotState
from tollgate_hotstate.keys import CustomerKeys

from .conftest import GatewayFactory, Seeder, TapFactory, Upstream

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


async def test_requests_beyond_max_inflight_are_shed_with_503(
    gateway_factory: GatewayFactory, seed: Seeder, hot: HotState, upstream: Upstream, clean_bus: Infra,
) -> None:
    customer = await seed()
    await upstream.configure(latency_ms=600)
    async with gateway_factory(max_inflight=3) as gw:
        client = gw.client(customer.key)

        async def one() -> Any:
            try:
                return await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            except openai.APIStatusError as exc:
                return exc

        results = await asyncio.gather(*(one() for _ in range(10)))
    shed = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(shed) == 7 and all(r.status_code == 503 and r.code == "server_is_overloaded" for r in shed)
    assert all(r.response.headers["retry-after"] == "1" for r in shed)
    # the three served were billed; the shed ones never reserved anything
    await eventually(lambda: _unposted(hot, customer.id, 3))
    assert (await hot.snapshot(customer.id))["reserved"] == "0"


async def _unposted(hot: HotState, customer_id: str, count: int) -> bool:
    return len(await hot.redis.hkeys(CustomerKeys(customer_id).unposted)) == count


async def test_settled_usage_that_was_never_published_is_published_later(
    gateway_factory: GatewayFactory, seed: Seeder, hot: HotState, usage_tap: TapFactory, clean_bus: Infra,
    upstream: Upstream,
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    # What a gateway leaves behind when it dies right after settling: the event only in Redis.
    lost = UsageRecorded(
        event_id="req_" + "d" * 32, customer_id=customer.id, key_id=customer.key_id, endpoint="/v1/chat/completions",
        model="gpt-4o-mini", requested_model="gpt-4o-mini", input_tokens=10, output_tokens=5, cost_nanos=4_500,
        list_price_nanos=4_500, price_book_version="test", started_at=datetime.now(UTC) - timedelta(seconds=5),
        occurred_at=datetime.now(UTC) - timedelta(seconds=5),
    )
    keys = CustomerKeys(customer.id)
    await hot.redis.hset(keys.unposted_ev, lost.event_id, lost.model_dump_json())
    async with gateway_factory(republish_after_s=1, republish_interval_s=0.3):
        [event] = await eventually(lambda: tap.events, timeout=10)
    assert event["event_id"] == lost.event_id and event["cost_nanos"] == 4_500


class _BrokenPool:
    """A pool whose connection lost its backend mid-operation, as asyncpg reports it."""

    async def fetchrow(self, *_: object) -> None:
        raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")


@pytest.mark.parametrize("fault", ["redis transport closed", "postgres backend terminated"])
async def test_a_dependency_connection_dying_under_the_client_is_a_503_not_a_500(
    gateway_factory: GatewayFactory, seed: Seeder, upstream: Upstream, clean_bus: Infra, fault: str,
) -> None:
    """Found by the chaos run, where these surfaced as 500s: under uvloop, redis-py writing on a
    connection Redis just closed raises RuntimeError (not a RedisError), and asyncpg raises
    InternalClientError on a pooled connection whose backend was terminated."""
    customer = await seed()
    async with gateway_factory() as gw:
        rt = gw.app.hot.rt

        async def closed_transport(*_: object) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True reading=False 0x1>")

        async def not_cached(*_: object) -> dict[bytes, bytes]:
            return {}

        async def broken_pool() -> _BrokenPool:
            return _BrokenPool()

        if fault == "redis transport closed":
            rt.auth.redis.hgetall = closed_transport  # the key lookup, first thing on every request
        else:
            rt.auth.redis.hgetall = not_cached  # so the key is looked up in Postgres
            rt.pg.pool = broken_pool
        try:
            await gw.client(customer.key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        except openai.APIStatusError as exc:
            error = exc
    assert error.status_code == 503 and error.code == "billing_unavailable"
    assert error.response.headers["retry-after"] == "1"
    assert await upstream.requests() == []
