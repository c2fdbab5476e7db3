"""A revoked key stops working within a second on every gateway replica, and one trace follows a
request from the gateway's HTTP span to the publish of its usage event."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from support.servers import Infra, eventually
from tollgate_contracts import subjects
from tollgate_hotstate import HotState
from tollgate_platform import bus

from .conftest import Gateway, GatewayFactory, Seeder, TapFactory, Upstream

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


async def _rejected(client: openai.AsyncOpenAI) -> bool:
    try:
        await client.models.list()
    except openai.AuthenticationError:
        return True
    return False


async def test_revoked_key_stops_working_within_a_second_on_every_replica(
    gateway_factory: GatewayFactory, seed: Seeder, hot: HotState, clean_bus: Infra, clean_redis: Infra,
    upstream: Upstream,
) -> None:
    customer = await seed()
    # A long cache TTL: only the invalidation hint can make this fast.
    async with gateway_factory(key_cache_ttl_s=60) as one, gateway_factory(key_cache_ttl_s=60) as two:
        clients = [one.client(customer.key), two.client(customer.key)]
        for client in clients:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        # what the ledger does on revocation
        await hot.redis.delete(f"apikey:{customer.key_hash}")
        nc = await bus.connect(clean_bus.nats_url, "revoker")
        await nc.publish(subjects.CACHE_INVALIDATE_KEY, customer.key_hash.encode())
        await nc.flush()
        await nc.close()
        for client in clients:
            await eventually(lambda c=client: _rejected(c), timeout=1.0)


async def test_without_the_hint_the_cache_still_forgets_a_revoked_key_within_its_ttl(
    gateway: Gateway, seed: Seeder, hot: HotState
) -> None:
    customer = await seed()
    client = gateway.client(customer.key)
    await client.models.list()
    await hot.redis.hset(f"apikey:{customer.key_hash}", "status", "revoked")
    await eventually(lambda: _rejected(client), timeout=gateway.settings.key_cache_ttl_s + 0.5)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)


async def test_one_trace_spans_the_gateway_request_and_the_usage_publish(
    gateway_factory: GatewayFactory, seed: Seeder, usage_tap: TapFactory, clean_bus: Infra, clean_redis: Infra,
    upstream: Upstream,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    customer = await seed()
    tap = await usage_tap(customer.id)
    async with gateway_factory(tracer_provider=provider) as gw:
        await gw.client(customer.key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        await eventually(lambda: tap.events)

        def pair() -> tuple[object, object] | None:
            spans = exporter.get_finished_spans()
            server = [s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /v1/chat/completions"]
            publish = [s for s in spans if s.kind == SpanKind.PRODUCER and "usage.recorded" in s.name]
            return (server[0], publish[0]) if server and publish else None

        server, publish = await eventually(pair)
    trace_id = server.context.trace_id  # type: ignore[attr-defined]
    assert publish.context.trace_id == trace_id  # type: ignore[attr-defined]
    assert publish.parent.span_id == server.context.span_id  # type: ignore[attr-defined]
    # consumers continue the same trace from the message headers
    assert f"{trace_id:032x}" in tap.headers[0]["traceparent"]
