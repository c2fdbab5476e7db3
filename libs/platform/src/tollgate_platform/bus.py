"""NATS/JetStream helpers: the broker every consumer service uses, stream provisioning from the
one definition in tollgate_contracts, and the JetStream publish that always waits for a PubAck."""

from __future__ import annotations

from typing import Any

import nats
import nats.errors
from faststream.middlewares import AckPolicy
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from tollgate_contracts.events import Event
from tollgate_contracts.streams import ALL_CONSUMERS, ALL_STREAMS, ConsumerSpec, StreamSpec
from tollgate_platform.telemetry import inject_headers

_prometheus_middleware: NatsPrometheusMiddleware | None = None


def create_broker(nats_url: str, service: str, tracer_provider: TracerProvider | None) -> NatsBroker:
    """A broker that nacks on error (never drops: FastStream's default terminates the message)."""
    global _prometheus_middleware
    if _prometheus_middleware is None:  # one per process: it registers collectors globally
        _prometheus_middleware = NatsPrometheusMiddleware(registry=REGISTRY, app_name=service)
    return NatsBroker(
        nats_url.split(","),
        name=f"tollgate-{service}",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        middlewares=(NatsTelemetryMiddleware(tracer_provider=tracer_provider), _prometheus_middleware),
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        graceful_timeout=20.0,
    )


async def connect(nats_url: str, name: str, **kwargs: Any) -> Client:
    return await nats.connect(
        nats_url.split(","), name=name, max_reconnect_attempts=-1, reconnect_time_wait=1, **kwargs
    )


async def provision(
    js: JetStreamContext,
    streams: tuple[StreamSpec, ...] = ALL_STREAMS,
    consumers: tuple[ConsumerSpec, ...] = ALL_CONSUMERS,
    replicas: int = 1,
) -> list[str]:
    """Create or update every stream and durable consumer. Idempotent; returns what changed."""
    changed: list[str] = []
    for spec in streams:
        config = spec.config(replicas)
        try:
            await js.stream_info(spec.name)
            await js.update_stream(config)
            changed.append(f"stream {spec.name} updated")
        except NotFoundError:
            await js.add_stream(config)
            changed.append(f"stream {spec.name} created")
    for consumer in consumers:
        await js.add_consumer(consumer.stream.name, consumer.config())
        changed.append(f"consumer {consumer.stream.name}/{consumer.durable} ensured")
    return changed


async def publish_event(
    js: JetStreamContext, subject: str, event: Event, *, timeout: float = 2.0, headers: dict[str, str] | None = None
) -> PubAck:
    """JetStream publish with Nats-Msg-Id = the event's business id, and the trace context."""
    hdrs: dict[str, str] = dict(headers or {})
    inject_headers(hdrs)
    hdrs["Nats-Msg-Id"] = event.msg_id
    hdrs["Content-Type"] = "application/json"
    return await js.publish(subject, event.model_dump_json().encode(), timeout=timeout, headers=hdrs)


async def publish_raw(
    js: JetStreamContext, subject: str, payload: bytes, msg_id: str, *, timeout: float = 2.0,
    headers: dict[str, str] | None = None,
) -> PubAck:
    hdrs = dict(headers or {})
    hdrs["Nats-Msg-Id"] = msg_id
    return await js.publish(subject, payload, timeout=timeout, headers=hdrs)


def harden_pull_subscribers(broker: NatsBroker) -> None:
    """Call once after `broker.start()`. nats-py's fetch can end a short pull with a plain
    asyncio.TimeoutError, while FastStream's pull loop only expects nats.errors.TimeoutError: the
    loop task then dies with the messages it had fetched, and they wait out ack_wait before
    redelivery. Re-raise it as the error FastStream handles."""
    for subscriber in broker.subscribers:
        pull = getattr(subscriber, "subscription", None)
        if pull is None or getattr(pull, "_tollgate_hardened", False):
            continue
        original = pull.fetch

        async def fetch(
            batch: int = 1, timeout: float | None = 5, heartbeat: float | None = None, *, _original: Any = original
        ) -> list[Any]:
            try:
                return list(await _original(batch=batch, timeout=timeout, heartbeat=heartbeat))
            except nats.errors.TimeoutError:
                raise
            except TimeoutError as exc:
                raise nats.errors.TimeoutError from exc

        pull.fetch = fetch
        pull._tollgate_hardened = True
