"""The gateway is a drop-in OpenAI endpoint that bills every call exactly tokens x price: chat
(streamed or not), legacy completions, embeddings, responses and the model list, driven only
through the official openai SDK."""

from __future__ import annotations

from typing import Any

from openai.types.chat import ChatCompletionMessageParam

from support.servers import eventually
from tollgate_hotstate import HotState

from .conftest import UPSTREAM_KEY, Customer, Gateway, Seeder, TapFactory, Upstream, expected_cost, tollgate_of, usd

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the gateway"}]


async def settled(tap: Any, count: int = 1) -> list[dict[str, Any]]:
    await eventually(lambda: len(tap.events) >= count)
    return list(tap.events)


def assert_billed(event: dict[str, Any], model: str) -> int:
    cost = expected_cost(model, event["input_tokens"], event["output_tokens"], event["cached_input_tokens"])
    assert event["cost_nanos"] == cost
    assert event["list_price_nanos"] == cost
    return cost


async def test_chat_completion_is_billed_tokens_times_price(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState, upstream: Upstream
) -> None:
    customer = await seed(balance=10**9)
    tap = await usage_tap(customer.id)
    client = gateway.client(customer.key)

    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    completion = raw.parse()

    assert completion.usage is not None and completion.choices[0].message.content
    cost = expected_cost("gpt-4o-mini", completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert raw.headers["x-tollgate-cost-usd"] == usd(cost)
    assert raw.headers["x-request-id"].startswith("req_") and len(raw.headers["x-request-id"]) == 36
    assert raw.headers["x-tollgate-balance-usd"] == usd(10**9 - cost)
    [event] = await settled(tap)
    assert await hot.available(customer.id) == 10**9 - cost
    assert event["event_id"] == raw.headers["x-request-id"]
    assert (event["input_tokens"], event["output_tokens"]) == (
        completion.usage.prompt_tokens, completion.usage.completion_tokens,
    )
    assert event["estimated"] is False and event["status"] == "ok" and event["billing_mode"] == "credits"
    assert event["key_id"] == customer.key_id and event["dodo_customer_id"] == customer.dodo_id
    assert assert_billed(event, "gpt-4o-mini") == cost
    # the upstream got the gateway's own key, never the customer's, and the body untouched
    seen = await upstream.last()
    assert seen["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert seen["body"]["messages"] == HELLO and "max_completion_tokens" not in seen["body"]


async def test_stream_with_usage_requested_gets_the_usage_chunk_and_its_cost(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    client = gateway.client(customer.key)

    stream = await client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.strip()
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    billing = tollgate_of(usage_chunk.usage)
    [event] = await settled(tap)
    cost = assert_billed(event, "gpt-4o")
    assert event["output_tokens"] == usage_chunk.usage.completion_tokens
    assert billing["cost_usd"] == usd(cost) and billing["estimated"] is False
    assert billing["request_id"] == event["event_id"]
    assert await hot.available(customer.id) == 10**9 - cost


async def test_stream_without_usage_requested_never_sees_a_usage_chunk_but_is_billed(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, upstream: Upstream, hot: HotState
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    client = gateway.client(customer.key)

    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]

    assert chunks and all(chunk.choices for chunk in chunks)  # `chunk.choices[0]` never breaks
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the gateway asked the upstream for usage anyway
    assert (await upstream.last())["body"]["stream_options"] == {"include_usage": True}
    [event] = await settled(tap)
    deltas = sum(1 for c in chunks if c.choices[0].delta.content)
    assert event["output_tokens"] == deltas and event["estimated"] is False
    assert await hot.available(customer.id) == 10**9 - assert_billed(event, "gpt-4o-mini")


async def test_legacy_completions_stream_and_not(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    client = gateway.client(customer.key)

    whole = await client.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=8)
    stream = await client.completions.create(model="gpt-4o-mini", prompt="Once upon a time", stream=True)
    pieces = [chunk async for chunk in stream]

    assert whole.usage is not None and whole.usage.completion_tokens == 8
    assert pieces and all(p.usage is None for p in pieces)
    events = await settled(tap, 2)
    total = sum(assert_billed(e, "gpt-4o-mini") for e in events)
    assert {e["output_tokens"] for e in events} == {8, 16}  # 16: the legacy default max_tokens
    assert await hot.available(customer.id) == 10**9 - total


async def test_embeddings_bill_input_tokens_only(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)

    result = await gateway.client(customer.key).embeddings.create(
        model="text-embedding-3-small", input=["first text to embed", "and a second one"]
    )

    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    [event] = await settled(tap)
    assert event["input_tokens"] == result.usage.prompt_tokens and event["output_tokens"] == 0
    assert await hot.available(customer.id) == 10**9 - assert_billed(event, "text-embedding-3-small")


async def test_responses_api_stream_and_not(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    client = gateway.client(customer.key)

    response = await client.responses.create(model="gpt-4o-mini", input="Tell me something", max_output_tokens=20)
    stream = await client.responses.create(model="gpt-4o-mini", input="Tell me something", stream=True)
    events = [event async for event in stream]

    assert response.output_text and response.usage is not None
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    streamed_usage = events[-1].response.usage
    assert streamed_usage is not None and tollgate_of(streamed_usage)["estimated"] is False
    usage_events = await settled(tap, 2)
    total = sum(assert_billed(e, "gpt-4o-mini") for e in usage_events)
    assert sorted(e["output_tokens"] for e in usage_events) == sorted(
        [response.usage.output_tokens, streamed_usage.output_tokens]
    )
    assert await hot.available(customer.id) == 10**9 - total


async def test_cached_and_reasoning_tokens_are_priced_per_the_book(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, upstream: Upstream
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    long_prompt: list[ChatCompletionMessageParam] = [{"role": "user", "content": "cache me " * 40}]

    completion = await gateway.client(customer.key).chat.completions.create(
        model="o1", messages=long_prompt, max_completion_tokens=40, extra_body={"mock": {"cached_tokens": 32}}
    )

    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 32
    [event] = await settled(tap)
    assert event["cached_input_tokens"] == 32 and event["reasoning_tokens"] > 0
    full_price = expected_cost("o1", event["input_tokens"], event["output_tokens"])
    assert assert_billed(event, "o1") == full_price - 32 * (15_000 - 7_500)  # cached input at half price


async def test_unknown_fields_pass_through_untouched(gateway: Gateway, seed: Seeder, upstream: Upstream) -> None:
    customer = await seed()
    await gateway.client(customer.key).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, temperature=0.25, user="end-user-7",
        extra_body={"vendor_extension": {"nested": [1, 2.5, None, "x"]}, "mock": {"output_tokens": 3}},
    )
    body = (await upstream.last())["body"]
    assert body["vendor_extension"] == {"nested": [1, 2.5, None, "x"]}
    assert body["temperature"] == 0.25 and body["user"] == "end-user-7" and body["mock"] == {"output_tokens": 3}


async def test_models_list_shows_only_priced_models_the_key_may_use(gateway: Gateway, seed: Seeder) -> None:
    everything = await seed()
    restricted = await seed(models="gpt-4o-mini,text-embedding-3-small,not-priced-model")

    all_ids = [m.id async for m in gateway.client(everything.key).models.list()]
    some_ids = [m.id async for m in gateway.client(restricted.key).models.list()]
    one = await gateway.client(restricted.key).models.retrieve("gpt-4o-mini")

    assert all_ids == ["gpt-4o", "gpt-4o-mini", "o1", "text-embedding-3-small"]
    assert some_ids == ["gpt-4o-mini", "text-embedding-3-small"]
    assert one.id == "gpt-4o-mini" and one.object == "model"


async def test_billing_endpoints_show_balance_and_tier(gateway: Gateway, seed: Seeder) -> None:
    customer: Customer = await seed(balance=5 * 10**9 + 1_500, rpm=3, tpm=40_000)
    client = gateway.client(customer.key)

    balance = await client.get("/billing/balance", cast_to=object)
    tier = await client.get("/billing/tier", cast_to=object)

    assert isinstance(balance, dict) and isinstance(tier, dict)
    assert balance["available"] == {"nanos": 5_000_001_500, "cents": 500, "usd": "5.0000015"}
    assert balance["reserved"]["cents"] == 0 and balance["posted"]["usd"] == "5.0000015"
    assert tier["tier"] == "tier-1" and (tier["rpm"], tier["tpm"]) == (3, 40_000)
    assert tier["next_tier"]["tier"] == "tier-2" and tier["next_tier"]["min_spend"]["usd"] == "50.00"


async def test_tier_progress_comes_from_the_tier_service_when_deployed(
    gateway: Gateway, seed: Seeder, pg: Any
) -> None:
    customer = await seed(rpm=10, tpm=200_000, tier="tier-2")
    await pg.execute(
        "CREATE SCHEMA IF NOT EXISTS tier; CREATE TABLE IF NOT EXISTS tier.hot_limits (customer_id text PRIMARY KEY, "
        "tier text, rpm int, tpm int, version bigint, lifetime_spend_nanos bigint, next_tier text, "
        "next_tier_min_spend_nanos bigint)"
    )
    await pg.execute(
        "INSERT INTO tier.hot_limits VALUES ($1, 'tier-2', 10, 200000, 3, $2, 'tier-3', $3)",
        customer.id, 60 * 10**9, 250 * 10**9,
    )
    tier = await gateway.client(customer.key).get("/billing/tier", cast_to=object)
    assert isinstance(tier, dict)
    assert (tier["tier"], tier["rpm"], tier["tpm"]) == ("tier-2", 10, 200_000)
    assert tier["lifetime_spend"]["usd"] == "60.00"
    assert tier["next_tier"]["tier"] == "tier-3" and tier["next_tier"]["spend_to_go"]["usd"] == "190.00"
