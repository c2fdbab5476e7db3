"""The `tier-billing` durable consumer: payments add to lifetime net spend, refunds and lost
disputes take it away; every other billing subject is acknowledged and ignored."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from faststream.exceptions import NackMessage
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js import JetStreamContext
from prometheus_client import Counter
from pydantic import ValidationError

from tollgate_contracts import subjects
from tollgate_contracts.events import DeadLetter, DisputeLost, PaymentSucceeded, RefundSucceeded
from tollgate_contracts.streams import TIER_BILLING
from tollgate_money import cents_to_nanos
from tollgate_platform.bus import publish_event
from tollgate_platform.logging import get_logger
from tollgate_tier.store import SpendEvent

log = get_logger(__name__)

EVENTS = Counter("tier_billing_events_total", "Billing events seen by the tier consumer", ["kind", "result"])

SERVICE = "tier"


class InvalidEvent(ValueError):
    """A message that no retry can fix: it goes to the dead-letter stream."""


def parse(subject: str, body: bytes) -> SpendEvent | None:
    """The spend movement a billing message carries, or None for subjects that do not count."""
    try:
        if subject.startswith(subjects.PAYMENT_SUCCEEDED + "."):
            pay = PaymentSucceeded.model_validate_json(body)
            ev = SpendEvent(pay.msg_id, pay.customer_id, "payment", cents_to_nanos(pay.amount_cents),
                            pay.occurred_at, pay.payment_id)
            amount = pay.amount_cents
        elif subject.startswith(subjects.REFUND_SUCCEEDED + "."):
            ref = RefundSucceeded.model_validate_json(body)
            ev = SpendEvent(ref.msg_id, ref.customer_id, "refund", -cents_to_nanos(ref.amount_cents),
                            ref.occurred_at, ref.refund_id)
            amount = ref.amount_cents
        elif subject.startswith(subjects.DISPUTE_LOST + "."):
            dis = DisputeLost.model_validate_json(body)
            ev = SpendEvent(dis.msg_id, dis.customer_id, "dispute_lost", -cents_to_nanos(dis.amount_cents),
                            dis.occurred_at, dis.dispute_id)
            amount = dis.amount_cents
        else:
            return None
    except ValidationError as exc:
        raise InvalidEvent(f"schema: {exc.error_count()} error(s): {exc.errors()[0]['msg']}") from exc
    if amount < 0:
        raise InvalidEvent("amount_cents is negative")
    try:
        subjects.for_customer(subjects.TIER_CHANGED, ev.customer_id)
    except ValueError as exc:
        raise InvalidEvent(str(exc)) from exc
    if ev.occurred_at.tzinfo is None:
        ev = SpendEvent(ev.source_id, ev.customer_id, ev.kind, ev.delta_nanos,
                        ev.occurred_at.replace(tzinfo=UTC), ev.cause)
    return ev


@dataclass
class ConsumerDeps:
    """Filled in by the lifespan once pools and connections exist."""

    apply: Callable[[SpendEvent, datetime], Awaitable[bool]] | None = None
    js: JetStreamContext | None = None


def _retry_delay(delivered: int) -> float:
    return float(min(2 ** max(delivered - 1, 0), 30))


def register(broker: NatsBroker, deps: ConsumerDeps, batch: int) -> None:
    @broker.subscriber(
        TIER_BILLING.filter_subject,
        stream=JStream(TIER_BILLING.stream.name, declare=False),
        durable=TIER_BILLING.durable,
        pull_sub=PullSub(batch_size=batch, timeout=1.0),
        title="tier-billing",
        description="Lifetime net spend from payments, refunds and lost disputes.",
    )
    async def on_billing(msg: NatsMessage) -> None:
        assert deps.apply is not None and deps.js is not None
        raw = msg.raw_message
        subject = raw.subject
        body = msg.body
        try:
            ev = parse(subject, body)
        except InvalidEvent as exc:
            await _dead_letter(deps.js, subject, raw.headers, body, str(exc), _delivered(msg))
            EVENTS.labels(kind=subject.split(".")[1] if "." in subject else "?", result="dead_letter").inc()
            return
        if ev is None:
            EVENTS.labels(kind="other", result="ignored").inc()
            return
        delivered = _delivered(msg)
        try:
            applied = await deps.apply(ev, datetime.now(UTC))
        except Exception as exc:  # Postgres away or a conflict: retry later, then dead-letter
            if delivered >= TIER_BILLING.max_deliver:
                await _dead_letter(deps.js, subject, raw.headers, body,
                                   f"gave up after {delivered} deliveries: {type(exc).__name__}", delivered)
                EVENTS.labels(kind=ev.kind, result="dead_letter").inc()
                return
            log.warning("billing event not applied, will retry", subject=subject, deliveries=delivered,
                        error=type(exc).__name__)
            raise NackMessage(delay=_retry_delay(delivered)) from exc
        EVENTS.labels(kind=ev.kind, result="applied" if applied else "duplicate").inc()


def _delivered(msg: NatsMessage) -> int:
    try:
        return int(msg.raw_message.metadata.num_delivered)
    except Exception:  # not a JetStream message (never in production)
        return 1


async def _dead_letter(
    js: JetStreamContext, subject: str, headers: dict[str, str] | None, body: bytes, reason: str, deliveries: int
) -> None:
    try:
        payload, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(body).decode("ascii"), "base64"
    letter = DeadLetter(
        service=SERVICE, original_subject=subject, original_msg_id=(headers or {}).get("Nats-Msg-Id"),
        reason=reason, payload=payload, payload_encoding=encoding,  # type: ignore[arg-type]
        deliveries=deliveries,
    )
    log.warning("billing event dead-lettered", subject=subject, reason=reason)
    await publish_event(js, subjects.deadletter(SERVICE, subject), letter)
