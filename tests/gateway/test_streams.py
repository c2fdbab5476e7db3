"""Streams end well whatever happens: the client hangs up (the upstream call stops, only what was
generated is billed), the upstream dies mid-stream (nothing is charged), the upstream sends no
usage (the gateway counts), or the output reaches what was reserved (a clean cut-off, never a
cut socket, never credit)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from support.servers import eventually
from tollgate_hotstate import HotState

from .conftest import (
    Gateway,
    GatewayFactory,
    Seeder,
    TapFactory,
    ThreadServer,
    Upstream,
    expected_cost,
    tollgate_of,
)

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a long story"}]


async def test_client_disconnect_stops_the_upstream_and_bills_what_was_generated(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState, upstream: Upstream
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    await upstream.configure(chunk_delay_ms=40, output_tokens=500)
    stream = await gateway.client(customer.key).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    )
    received = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received == 3:
            break
    await stream.close()

    entry = await eventually(lambda: _disconnected(upstream))
    [event] = await eventually(lambda: tap.events)
    assert event["status"] == "client_disconnected" and event["estimated"] is True
    assert received <= event["output_tokens"] <= entry["tokens_generated"] < 500
    cost = expected_cost("gpt-4o-mini", event["input_tokens"], event["output_tokens"])
    assert event["cost_nanos"] == cost and cost > 0
    assert await hot.available(customer.id) == 10**9 - cost
    assert (await hot.snapshot(customer.id))["reserved"] == "0"


async def _disconnected(upstream: Upstream) -> dict[str, Any] | None:
    entries = await upstream.requests("/v1/chat/completions")
    return entries[-1] if entries and entries[-1]["disconnected"] else None


@pytest.mark.parametrize("fail", ["mid_stream", "mid_stream_error"])
async def test_upstream_failure_mid_stream_ends_with_an_error_and_costs_nothing(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState, fail: str
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    stream = await gateway.client(customer.key).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True,
        extra_body={"mock": {"fail": fail, "fail_after_chunks": 3}},
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk)
    assert not isinstance(caught.value, openai.APIStatusError)  # in-band, after the 200
    assert sum(1 for c in received if c.choices and c.choices[0].delta.content) == 3

    [event] = await eventually(lambda: tap.events)
    assert event["status"] == "upstream_error" and event["cost_nanos"] == 0
    assert event["output_tokens"] == 3 and event["estimated"] is True
    assert await hot.available(customer.id) == 10**9
    assert (await hot.snapshot(customer.id))["reserved"] == "0"


async def test_upstream_without_usage_is_billed_from_the_local_count(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    client = gateway.client(customer.key)
    counted = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=12)
    silent = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=12, extra_body={"mock": {"no_usage": True}}
    )
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=12, stream=True, stream_options={"include_usage": True},
        extra_body={"mock": {"no_usage": True}},
    )
    chunks = [c async for c in stream]
    answer = await client.responses.create(
        model="gpt-4o-mini", input="Tell me a long story", max_output_tokens=12,
        extra_body={"mock": {"no_usage": True}},
    )

    assert counted.usage is not None and silent.parse().usage is None and answer.usage is None
    assert silent.headers["x-tollgate-usage-estimated"] == "true"
    synthesized = chunks[-1].usage  # the client asked for usage: it gets the gateway's count
    assert synthesized is not None and tollgate_of(synthesized)["estimated"] is True
    events = await eventually(lambda: tap.events if len(tap.events) == 4 else None)
    exact, *estimated = sorted(events, key=lambda e: e["estimated"])
    assert exact["estimated"] is False
    for event in estimated:
        # the local count (offline cl100k) equals what the upstream itself reports
        assert event["estimated"] is True
        assert (event["input_tokens"], event["output_tokens"]) == (exact["input_tokens"], exact["output_tokens"])
        assert event["cost_nanos"] == expected_cost("gpt-4o-mini", event["input_tokens"], event["output_tokens"])
    assert synthesized.completion_tokens == exact["output_tokens"]
    assert await hot.available(customer.id) == 10**9 - sum(e["cost_nanos"] for e in events)


async def test_low_balance_lowers_max_tokens_instead_of_refusing(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState, upstream: Upstream
) -> None:
    customer = await seed(balance=100_000)  # $0.0001: about 140 output tokens of gpt-4o-mini
    tap = await usage_tap(customer.id)
    raw = await gateway.client(customer.key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=1000, extra_body={"mock": {"output_tokens": 1000}}
    )
    lowered = int(raw.headers["x-tollgate-max-tokens-lowered"])
    completion = raw.parse()

    assert 100 < lowered < 1000
    assert (await upstream.last())["body"]["max_tokens"] == lowered
    assert completion.usage is not None and completion.usage.completion_tokens == lowered
    assert completion.choices[0].finish_reason == "length"
    [event] = await eventually(lambda: tap.events)
    assert event["cost_nanos"] == expected_cost("gpt-4o-mini", event["input_tokens"], lowered)
    assert await hot.available(customer.id) == 100_000 - event["cost_nanos"] >= 0


async def test_past_the_soft_cap_a_subscriber_is_served_the_fallback_model(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState, upstream: Upstream
) -> None:
    plan = {"plan": "plus", "plan_models": ",gpt-4o,gpt-4o-mini,o1,", "fallback": ",gpt-4o=gpt-4o-mini,o1=gpt-4o-mini,",
            "cap": 20 * 10**9}
    under = await seed(balance=0, **plan)
    over = await seed(balance=0, pused=20 * 10**9, **plan)
    tap = await usage_tap(over.id)

    fresh = await gateway.client(under.key).chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    capped = await gateway.client(over.key).chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)

    assert "x-tollgate-downgraded-from" not in fresh.headers and fresh.parse().model == "gpt-4o"
    assert capped.headers["x-tollgate-downgraded-from"] == "gpt-4o"
    assert capped.headers["x-tollgate-billing-mode"] == "subscription" and capped.parse().model == "gpt-4o-mini"
    assert (await upstream.last())["body"]["model"] == "gpt-4o-mini"
    [event] = await eventually(lambda: tap.events)
    assert (event["model"], event["requested_model"], event["plan"]) == ("gpt-4o-mini", "gpt-4o", "plus")
    assert event["cost_nanos"] == 0  # a subscriber's credits are untouched
    assert event["list_price_nanos"] == expected_cost("gpt-4o-mini", event["input_tokens"], event["output_tokens"])
    snap = await hot.snapshot(over.id)
    assert int(snap["pused"]) == 20 * 10**9 + event["list_price_nanos"] and snap["unposted"] == "0"


# ---------------------------------------------------------------------------- cut-off


class RunawayUpstream:
    """An OpenAI-compatible upstream that ignores max_tokens and sends no usage: 400 one-token
    words, then [DONE]. The mock upstream always obeys max_tokens, so this one stands in."""

    def __init__(self) -> None:
        self.disconnected = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        base = {"id": "chatcmpl-runaway", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
        for i in range(400):
            delta = {"content": " dog" if i % 2 else " cat"}
            frame = orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            await send({"type": "http.response.body", "body": b"data: " + frame + b"\n\n", "more_body": True})
            await asyncio.sleep(0.001)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


@pytest.fixture(scope="module")
def runaway() -> Iterator[ThreadServer]:
    with ThreadServer(RunawayUpstream()) as server:
        yield server


async def test_a_stream_past_its_reservation_is_cut_off_cleanly(
    gateway_factory: GatewayFactory, runaway: ThreadServer, seed: Seeder, usage_tap: TapFactory, hot: HotState,
    clean_bus: object,
) -> None:
    customer = await seed(balance=60_000)  # the prompt's bound plus a few dozen output tokens
    tap = await usage_tap(customer.id)
    async with gateway_factory(upstream_base_url=runaway.url + "/v1") as gw:
        raw = await gw.client(customer.key).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=1000, stream=True,
            stream_options={"include_usage": True},
        )
        allowed = int(raw.headers["x-tollgate-max-tokens-lowered"])
        chunks = [c async for c in raw.parse()]

    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert 0 < len(content) <= allowed < 400
    assert chunks[-2].choices[0].finish_reason == "length"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(content)
    assert tollgate_of(usage)["estimated"] is True
    [event] = await eventually(lambda: tap.events)
    assert event["status"] == "cut_off" and event["output_tokens"] == len(content)
    assert event["cost_nanos"] == expected_cost("gpt-4o-mini", event["input_tokens"], event["output_tokens"])
    assert await hot.available(customer.id) == 60_000 - event["cost_nanos"] >= 0


async def test_a_stream_that_would_outlive_its_hold_is_cut_off_before_it_expires(
    gateway_factory: GatewayFactory, seed: Seeder, usage_tap: TapFactory, upstream: Upstream, clean_bus: object,
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    await upstream.configure(chunk_delay_ms=100, output_tokens=100)
    async with gateway_factory(hold_ttl_ms=2_500, upstream_timeout_s=1.0) as gw:
        stream = await gw.client(customer.key).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        )
        chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason == "length"
    [event] = await eventually(lambda: tap.events)
    assert event["status"] == "cut_off" and 0 < event["output_tokens"] < 100
    assert (await _disconnected(upstream)) is not None
