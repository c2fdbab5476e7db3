"""The Python ingestion blueprint: a wrapped OpenAI client (sync or async, streaming or not)
publishes each response's usage as the gateway would, in the background, and the metering
service delivers it to Dodo with the same event ids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from openai import AsyncOpenAI, OpenAI

from metering.emulator import BOOK
from metering.harness import Dodo, metering
from support.servers import Infra, eventually
from support.threaded_server import ThreadedServer
from tollgate_contracts.events import UsageRecorded
from tollgate_metering.blueprint import UsageTracker
from tollgate_money import TokenUsage
from tollgate_platform import bus
from tollgate_standins.mock_upstream import MockUpstreamSettings
from tollgate_standins.mock_upstream import create_app as create_mock_upstream

UPSTREAM_KEY = "sk-upstream-blueprint-0123456789"
MESSAGES = [{"role": "user", "content": "Say something about tollgates."}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    server = ThreadedServer(create_mock_upstream(MockUpstreamSettings(api_key=UPSTREAM_KEY, output_tokens=12))).start()
    try:
        yield server
    finally:
        server.stop()


async def recorded(js: JetStreamContext) -> dict[str, UsageRecorded]:
    sub = await js.pull_subscribe(
        "usage.recorded.>", stream="USAGE",
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=10.0),
    )
    events: dict[str, UsageRecorded] = {}
    try:
        while True:
            try:
                msgs = await sub.fetch(batch=100, timeout=0.5)
            except TimeoutError:
                break
            for msg in msgs:
                event = UsageRecorded.model_validate_json(msg.data)
                assert msg.headers and msg.headers["Nats-Msg-Id"] == event.event_id
                events[event.event_id] = event
    finally:
        await sub.unsubscribe()
    return events


async def test_sync_client_usage_is_published_for_plain_stream_and_embedding_calls(
    clean_bus: Infra, nats_js: JetStreamContext, upstream: ThreadedServer
) -> None:
    tracker = UsageTracker(clean_bus.nats_url, price_book=BOOK)
    client = tracker.wrap(OpenAI(base_url=f"{upstream.url}/v1", api_key=UPSTREAM_KEY, max_retries=0),
                          customer_id="bp_acme", dodo_customer_id="cus_bp")
    plain = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    embedding = client.embeddings.create(model="text-embedding-3-small", input="tollgate")
    assert tracker.flush()
    tracker.close()

    # The wrapper asked for the usage chunk on the caller's behalf, so the caller never sees it.
    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    events = await recorded(nats_js)
    assert len(events) == 3
    first = events[plain.id]
    assert plain.usage is not None
    assert (first.input_tokens, first.output_tokens) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert first.customer_id == "bp_acme" and first.dodo_customer_id == "cus_bp"
    assert first.cost_nanos == BOOK.models["gpt-4o"].cost(
        TokenUsage(plain.usage.prompt_tokens, plain.usage.completion_tokens)
    )
    streamed = events[chunks[0].id]
    assert (streamed.model, streamed.output_tokens, streamed.endpoint) == ("gpt-4o-mini", 12, "/v1/chat/completions")
    (embedded,) = [e for e in events.values() if e.endpoint == "/v1/embeddings"]
    assert embedding.usage is not None and embedded.input_tokens == embedding.usage.prompt_tokens
    assert embedded.event_id.startswith("bp_")


async def test_async_client_usage_reaches_dodo_through_metering(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo, upstream: ThreadedServer
) -> None:
    tracker = UsageTracker(clean_bus.nats_url, price_book=BOOK)
    client = tracker.wrap(AsyncOpenAI(base_url=f"{upstream.url}/v1", api_key=UPSTREAM_KEY, max_retries=0),
                          customer_id="bp_async", dodo_customer_id=dodo.customers[0])
    async with metering(clean_bus, dodo):
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        response = await client.responses.create(model="gpt-4o", input="hello")
        streamed_response = await client.responses.create(model="gpt-4o-mini", input="hello", stream=True)
        final = [event async for event in streamed_response][-1]
        await eventually(lambda: len(dodo.emulator.events()) == 6)
    tracker.close()

    assert chunks[-1].usage is not None and not chunks[-1].choices  # asked for by the caller: shown
    ids = {e["event_id"] for e in dodo.emulator.events()}
    for request_id in (chunks[0].id, response.id, final.response.id):
        assert {f"{request_id}:llm.input_tokens", f"{request_id}:llm.output_tokens"} <= ids


async def test_a_nats_outage_delays_publishing_not_the_call(
    clean_bus: Infra, nats_js: JetStreamContext, upstream: ThreadedServer
) -> None:
    tracker = UsageTracker(clean_bus.nats_url, price_book=BOOK, retry_delay_s=0.1)
    client = tracker.wrap(OpenAI(base_url=f"{upstream.url}/v1", api_key=UPSTREAM_KEY, max_retries=0),
                          customer_id="bp_outage")
    clean_bus.nats.kill()
    try:
        response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert response.choices[0].message.content
        assert not tracker.flush(timeout=0.5)  # still waiting for NATS
    finally:
        clean_bus.nats.start()
    assert tracker.flush(timeout=15)
    tracker.close()
    nc = await bus.connect(clean_bus.nats_url, "blueprint-test")  # a connection made after the restart
    try:
        assert response.id in await recorded(nc.jetstream())
    finally:
        await nc.close()
