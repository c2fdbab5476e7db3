"""Issue 2's wiring, proven end to end: one chat completion through the gateway becomes a usage
event on JetStream that metering forwards to Dodo's `POST /events/ingest`, and all of it is ONE
trace: the gateway's HTTP span, the NATS publish, metering's consume and its Dodo call."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from metering.emulator import RunningEmulator, dodo_customers, run_bootstrap, running_emulator
from metering.harness import Dodo, metering_settings
from support.servers import AppServer, Infra, eventually
from tollgate_gateway.app import create_app as create_gateway
from tollgate_gateway.auth import key_hash
from tollgate_gateway.settings import GatewaySettings
from tollgate_hotstate import HotState, create_redis
from tollgate_metering.app import create_app as create_metering
from tollgate_standins.mock_upstream import MockUpstreamSettings
from tollgate_standins.mock_upstream import create_app as create_mock_upstream


def _url(span: object) -> str:
    attributes = dict(getattr(span, "attributes", None) or {})
    return str(attributes.get("url.full", attributes.get("http.url", "")))


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as running:
        yield running


async def test_one_trace_spans_gateway_nats_metering_and_dodo(
    clean_bus: Infra, clean_redis: Infra, emulator: RunningEmulator, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    emulator.reset()
    catalogue = tmp_path / "dodo-catalogue.json"
    await run_bootstrap(emulator, catalogue)
    dodo = Dodo(emulator, catalogue, await dodo_customers(emulator, 1))

    key = "sk-tg-" + secrets.token_urlsafe(30)
    redis = create_redis(clean_redis.redis_url)
    await redis.hset(f"apikey:{key_hash(key)}", mapping={
        "customer_id": "cus_trace", "key_id": "key_trace", "status": "active", "models": "",
        "dodo_customer_id": dodo.customers[0],
    })
    await HotState(redis).load(
        "cus_trace", {"bal": 10**9, "seq": 1, "rpm": 0, "tpm": 0, "plan": "", "status": "active"}
    )

    async with (
        AppServer(create_mock_upstream(MockUpstreamSettings())) as upstream,
        AppServer(create_metering(metering_settings(clean_bus, dodo), tracer_provider=provider)),
        AppServer(create_gateway(GatewaySettings(
            nats_url=clean_bus.nats_url, redis_url=clean_bus.redis_url, database_url=clean_bus.database_url,
            upstream_base_url=upstream.url + "/v1", spool_dir=tmp_path / "spool", log_level="WARNING",
        ), tracer_provider=provider)) as gateway,
    ):
        client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "trace me"}], max_tokens=8
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 8

        def server_span() -> object:
            return next((s for s in exporter.get_finished_spans()
                         if s.kind == SpanKind.SERVER and s.name == "POST /v1/chat/completions"), None)

        request = await eventually(server_span)
        trace_id = request.context.trace_id  # type: ignore[attr-defined]

        def dodo_call() -> object:
            return next((s for s in exporter.get_finished_spans()
                         if s.context.trace_id == trace_id and s.kind == SpanKind.CLIENT
                         and _url(s).endswith("/events/ingest")), None)

        await eventually(dodo_call, timeout=20)
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    kinds = {s.kind for s in spans}
    assert {SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CLIENT} <= kinds, [(s.name, s.kind) for s in spans]
    assert any(s.kind == SpanKind.PRODUCER and "usage.recorded" in s.name for s in spans)
    assert any(s.name == "metering ingest" for s in spans)
    # and the usage really reached Dodo, once per meter, for the gateway's request
    ingested = [e for e in emulator.events() if e["customer_id"] == dodo.customers[0]]
    assert ingested and all(e["event_id"].startswith("req_") for e in ingested)
    await redis.aclose()
