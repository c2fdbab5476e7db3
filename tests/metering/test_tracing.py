"""One trace spans the gateway's request, the bus, metering and the HTTP call to Dodo."""

from __future__ import annotations

from nats.js import JetStreamContext
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from metering.emulator import usage
from metering.harness import Dodo, metering_settings, publish
from support.servers import AppServer, Infra, eventually
from tollgate_metering.app import create_app
from tollgate_platform.telemetry import inject_headers


async def test_the_dodo_call_continues_the_gateway_trace(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway = provider.get_tracer("gateway")
    app = create_app(metering_settings(clean_bus, dodo), tracer_provider=provider)
    async with AppServer(app):
        with gateway.start_as_current_span("POST /v1/chat/completions") as request_span:
            headers = dict(inject_headers({}))
            await publish(nats_js, usage("tr_1", "acme", dodo.customers[0]), headers=headers)
        trace_id = request_span.get_span_context().trace_id
        spans = await eventually(
            lambda: [s for s in exporter.get_finished_spans()
                     if s.context.trace_id == trace_id and s.kind == SpanKind.CLIENT] or None
        )
    http_span = spans[0]
    assert http_span.attributes is not None
    url = http_span.attributes.get("url.full", http_span.attributes.get("http.url", ""))
    assert str(url).endswith("/events/ingest")
    ingest_span = next(s for s in exporter.get_finished_spans() if s.name == "metering ingest")
    assert ingest_span.context.trace_id == trace_id
    assert http_span.parent is not None and http_span.parent.span_id == ingest_span.context.span_id
    assert ingest_span.parent is not None and ingest_span.parent.span_id == request_span.get_span_context().span_id
