"""The three durable pull consumers (notifier-billing, notifier-tiers, notifier-deadletters),
shared by every replica. A message becomes alerts + deliveries in one transaction and is acked
after the commit; sending happens later in the worker, so a slow SMTP server never holds a
message past its ack wait."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import structlog
from faststream.exceptions import NackMessage
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import JsClient, NatsMessage
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from tollgate_contracts import streams, subjects
from tollgate_contracts.events import (
    BalanceChanged,
    DeadLetter,
    DriftDetected,
    PaymentFailed,
    PaymentSucceeded,
    SoftCapReached,
    TierChanged,
)
from tollgate_notifier import alerts, store
from tollgate_notifier.alerts import Outcome
from tollgate_notifier.settings import NotifierSettings
from tollgate_platform.bus import create_broker, publish_event
from tollgate_platform.db import UNAVAILABLE, retry_serializable
from tollgate_platform.telemetry import inject_headers

log = structlog.get_logger("tollgate_notifier.consumers")

EVENTS = Counter("notifier_events_total", "Bus events handled, by subject family and result", ["event", "result"])
ALERTS = Counter("notifier_alerts_total", "Alerts raised (each one is delivered once per channel)", ["kind"])

Decide = Callable[[asyncpg.Connection], Awaitable[Outcome]]


class InvalidEvent(ValueError):
    pass


def _matches(subject: str, base: str) -> bool:
    return subject == base or subject.startswith(base + ".")


E = TypeVar("E", bound=BaseModel)


def _parse(model: type[E], data: bytes) -> E:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidEvent(f"not a valid {model.__name__}: {where}: {first['msg']}") from exc


def _one(alert: alerts.NewAlert) -> Decide:
    async def decide(conn: asyncpg.Connection) -> Outcome:
        return Outcome([alert], "one-off alert")

    return decide


def interpret(subject: str, data: bytes, settings: NotifierSettings) -> tuple[str, Decide] | None:
    """Which events alert, and how. None: not an alert-worthy event (acked and ignored)."""
    if _matches(subject, subjects.BALANCE_LOW) or _matches(subject, subjects.BALANCE_DEPLETED):
        kind = alerts.LOW if _matches(subject, subjects.BALANCE_LOW) else alerts.DEPLETED
        balance = _parse(BalanceChanged, data)

        async def crossing(conn: asyncpg.Connection) -> Outcome:
            return await alerts.balance_crossing(conn, kind, balance)

        return kind, crossing
    if _matches(subject, subjects.BALANCE_RESTORED):
        restored = _parse(BalanceChanged, data)

        async def restore(conn: asyncpg.Connection) -> Outcome:
            return await alerts.balance_restored(conn, restored, settings.notify_on_restore)

        return alerts.RESTORED, restore
    if _matches(subject, subjects.SOFTCAP_REACHED):
        return alerts.SOFTCAP, _one(alerts.softcap(_parse(SoftCapReached, data)))
    if _matches(subject, subjects.PAYMENT_SUCCEEDED):
        return alerts.RECEIPT, _one(alerts.receipt(_parse(PaymentSucceeded, data)))
    if _matches(subject, subjects.PAYMENT_FAILED):
        return alerts.PAYMENT_FAILED, _one(alerts.payment_failed(_parse(PaymentFailed, data)))
    if _matches(subject, subjects.DRIFT_DETECTED):
        return alerts.DRIFT, _one(alerts.drift(_parse(DriftDetected, data)))
    if _matches(subject, subjects.TIER_CHANGED):
        return alerts.TIER, _one(alerts.tier_changed(_parse(TierChanged, data)))
    if _matches(subject, subjects.DEADLETTER):
        return alerts.DEADLETTER, _one(alerts.dead_letter(_parse(DeadLetter, data)))
    return None


@dataclass
class Handler:
    pool: asyncpg.Pool
    settings: NotifierSettings
    on_created: Callable[[], None]

    async def handle(self, msg: NatsMessage, js: JetStreamContext) -> None:
        raw = msg.raw_message
        subject = raw.subject
        delivered = raw.metadata.num_delivered if raw.metadata else 1
        try:
            decision = interpret(subject, raw.data, self.settings)
        except InvalidEvent as exc:
            EVENTS.labels("invalid", "dead_lettered").inc()
            await self._dead_letter(js, msg, str(exc), delivered)
            return
        if decision is None:
            EVENTS.labels("other", "ignored").inc()
            return
        kind, decide = decision
        try:
            outcome, created = await retry_serializable(lambda: self._apply(subject, decide))
        except UNAVAILABLE as exc:
            await self._retry_or_give_up(js, msg, delivered, f"database unavailable: {type(exc).__name__}")
            return
        except Exception as exc:
            log.exception("alert processing failed", subject=subject)
            await self._retry_or_give_up(js, msg, delivered, f"processing failed: {type(exc).__name__}: {exc}")
            return
        EVENTS.labels(kind, "alerted" if created else "no_alert").inc()
        for _ in created:
            ALERTS.labels(kind).inc()
        log.info("event handled", subject=subject, kind=kind, alerts_created=len(created), note=outcome.note,
                 delivered=delivered)
        if created:
            self.on_created()

    async def _apply(self, subject: str, decide: Decide) -> tuple[Outcome, list[int]]:
        trace = dict(inject_headers({}))
        async with self.pool.acquire() as conn, conn.transaction():
            outcome = await decide(conn)
            created = await store.record_alerts(conn, outcome.alerts, subject, trace, self.settings)
        return outcome, created

    async def _retry_or_give_up(self, js: JetStreamContext, msg: NatsMessage, delivered: int, reason: str) -> None:
        """Nak with a growing delay; on the last delivery the consumer allows, dead-letter instead
        of letting JetStream stop redelivering in silence."""
        max_deliver = _consumer_for(msg.raw_message.subject).max_deliver
        if delivered >= max_deliver:
            await self._dead_letter(js, msg, f"{reason} (after {delivered} deliveries)", delivered)
            return
        delay = min(300.0, self.settings.nak_delay_s * 2 ** (delivered - 1))
        log.warning("event nacked for retry", subject=msg.raw_message.subject, reason=reason, delay_s=delay)
        raise NackMessage(delay=delay)

    async def _dead_letter(self, js: JetStreamContext, msg: NatsMessage, reason: str, delivered: int) -> None:
        raw = msg.raw_message
        if _matches(raw.subject, subjects.DEADLETTER):
            # Never dead-letter a dead letter: that could loop. It stays in its stream.
            log.error("unreadable dead letter dropped from alerting", subject=raw.subject, reason=reason)
            return
        try:
            payload, encoding = raw.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw.data).decode(), "base64"
        original_id = (raw.headers or {}).get("Nats-Msg-Id") or (
            f"{raw.metadata.stream}:{raw.metadata.sequence.stream}" if raw.metadata else None
        )
        letter = DeadLetter(
            service="notifier", original_subject=raw.subject, original_msg_id=original_id, reason=reason,
            payload=payload, payload_encoding=encoding, deliveries=delivered,  # type: ignore[arg-type]
        )
        await publish_event(js, subjects.deadletter("notifier", raw.subject), letter)
        log.error("event dead-lettered", subject=raw.subject, reason=reason)


def _consumer_for(subject: str) -> streams.ConsumerSpec:
    if _matches(subject, subjects.TIER_CHANGED):
        return streams.NOTIFIER_TIERS
    if _matches(subject, subjects.DEADLETTER):
        return streams.NOTIFIER_DEADLETTERS
    return streams.NOTIFIER_BILLING


def build_broker(
    settings: NotifierSettings, tracer_provider: TracerProvider | None, handler: Handler
) -> NatsBroker:
    broker = create_broker(settings.nats_url, "notifier", tracer_provider)
    for spec in (streams.NOTIFIER_BILLING, streams.NOTIFIER_TIERS, streams.NOTIFIER_DEADLETTERS):
        broker.subscriber(
            spec.filter_subject,
            stream=JStream(spec.stream.name, declare=False),
            durable=spec.durable,
            pull_sub=PullSub(batch_size=settings.consumer_batch, timeout=1.0),
            title=spec.durable,
        )(_entry(handler))
    return broker


def _entry(handler: Handler) -> Callable[[NatsMessage, JsClient], Awaitable[None]]:
    """A fresh function per subscriber (FastStream binds one call per registration)."""

    async def on_message(msg: NatsMessage, js: JsClient) -> None:
        await handler.handle(msg, js)

    return on_message
