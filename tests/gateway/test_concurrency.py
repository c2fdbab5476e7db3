"""Concurrent requests can never spend more than the balance: every admission reserves its worst
case atomically, so 500 requests racing for a balance that covers about 10 of them are either
served and billed exactly once, or refused with 402 - and the total charged fits the balance."""

from __future__ import annotations

import asyncio
from typing import Any

import openai

from support.servers import eventually
from tollgate_hotstate import HotState

from .conftest import Gateway, Seeder, TapFactory, Upstream, expected_cost

BALANCE = 800_000  # ~10 worst cases of the request below (prompt bound + 100 output tokens)


async def test_500_concurrent_requests_never_spend_more_than_the_balance(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState, upstream: Upstream
) -> None:
    customer = await seed(balance=BALANCE)
    tap = await usage_tap(customer.id)
    # Every answer takes a while, so the whole burst competes for the holds at the same time.
    await upstream.configure(latency_ms=400, output_tokens=100)
    client = gateway.client(customer.key)

    async def one(i: int) -> Any:
        try:
            return await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"request {i}"}], max_tokens=100
            )
        except openai.APIStatusError as exc:
            return exc

    results = await asyncio.gather(*(one(i) for i in range(500)))

    served = [r for r in results if not isinstance(r, openai.APIStatusError)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert all(r.status_code == 402 and r.code == "insufficient_quota" for r in refused)
    assert 10 <= len(served) < 500
    served_ids = {r.headers["x-request-id"] for r in served}
    events = await eventually(lambda: tap.events if len(tap.events) >= len(served) else None)
    # each admitted request billed exactly once, no refused one billed at all
    assert len(events) == len(served) and {e["event_id"] for e in events} == served_ids
    charged = 0
    for event in events:
        assert event["status"] == "ok"
        assert event["cost_nanos"] == expected_cost("gpt-4o-mini", event["input_tokens"], event["output_tokens"])
        charged += event["cost_nanos"]
    assert charged <= BALANCE  # the documented overspend bound is zero
    assert await hot.available(customer.id) == BALANCE - charged
    snap = await hot.snapshot(customer.id)
    assert snap["reserved"] == "0" and int(snap["unposted"]) == charged
