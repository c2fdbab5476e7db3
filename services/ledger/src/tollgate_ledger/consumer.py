"""The `ledger-usage` durable pull consumer (shared by every ledger replica): batches of
`usage.recorded` events, one transaction per batch. Transient failures nak the batch with a
delay; events that can never be posted go to the dead-letter stream with the reason."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import asyncpg
from faststream import Context
from faststream.exceptions import NackMessage
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, PullSub
from nats.aio.msg import Msg
from pydantic import ValidationError
from redis.exceptions import RedisError

from tollgate_contracts import streams, subjects
from tollgate_contracts.events import DeadLetter, UsageRecorded
from tollgate_ledger import metrics
from tollgate_ledger.context import Ledger
from tollgate_ledger.usage import BatchConflict, post_usage
from tollgate_platform import bus
from tollgate_platform.db import UNAVAILABLE
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

SERVICE = "ledger"
BatchMessage = Annotated[StreamMessage[list[Msg]], Context("message")]
RETRY_DELAY_S = 2.0
_TRANSIENT: tuple[type[BaseException], ...] = (*UNAVAILABLE, RedisError, BatchConflict)


async def _raw_bodies(msg: StreamMessage[list[Msg]]) -> list[bytes]:
    # Decoding ourselves keeps one malformed message from failing the whole batch.
    return [m.data for m in msg.raw_message]


def register(broker: NatsBroker, ledger: Ledger) -> Any:
    spec = streams.LEDGER_USAGE

    @broker.subscriber(
        spec.filter_subject,
        stream=JStream(spec.stream.name, declare=False),
        durable=spec.durable,
        pull_sub=PullSub(ledger.settings.usage_batch_size, timeout=ledger.settings.usage_batch_timeout_s, batch=True),
        decoder=_raw_bodies,
        title="ledger-usage",
        description="Posts usage.recorded events to the ledger (credits usage debits the balance).",
    )
    async def on_usage(bodies: list[bytes], message: BatchMessage) -> None:
        await handle_batch(ledger, message.raw_message)

    return on_usage


async def handle_batch(ledger: Ledger, raw: list[Msg]) -> None:
    events: list[UsageRecorded] = []
    by_id: dict[str, Msg] = {}
    for msg in raw:
        try:
            event = UsageRecorded.model_validate_json(msg.data)
        except ValidationError as exc:
            await dead_letter(ledger, msg, f"invalid usage event: {exc.errors()[0].get('msg', 'invalid')}")
            continue
        events.append(event)
        by_id.setdefault(event.event_id, msg)
    if not events:
        return
    try:
        result = await post_usage(ledger, events)
    except _TRANSIENT as exc:
        log.warning("usage batch will be redelivered", error=type(exc).__name__, size=len(events))
        raise NackMessage(delay=RETRY_DELAY_S) from exc
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
        # Something in the batch can never be stored: post one by one to isolate it.
        await _post_one_by_one(ledger, events, by_id)
        return
    for event in result.unknown_customers:
        await dead_letter(ledger, by_id[event.event_id], f"unknown customer {event.customer_id}")


async def _post_one_by_one(ledger: Ledger, events: list[UsageRecorded], by_id: dict[str, Msg]) -> None:
    for event in events:
        try:
            result = await post_usage(ledger, [event])
        except _TRANSIENT as exc:
            raise NackMessage(delay=RETRY_DELAY_S) from exc
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            await dead_letter(ledger, by_id[event.event_id], f"cannot be stored: {type(exc).__name__}: {exc}"[:300])
            continue
        for unknown in result.unknown_customers:
            await dead_letter(ledger, by_id[unknown.event_id], f"unknown customer {unknown.customer_id}")


async def dead_letter(ledger: Ledger, msg: Msg, reason: str) -> None:
    try:
        payload, encoding = msg.data.decode(), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(msg.data).decode(), "base64"
    headers = msg.headers or {}
    deliveries = 1
    try:
        deliveries = msg.metadata.num_delivered or 1
    except Exception:  # core NATS message in tests: no JetStream metadata
        deliveries = 1
    letter = DeadLetter(
        service=SERVICE, original_subject=msg.subject, original_msg_id=headers.get("Nats-Msg-Id"),
        reason=reason, payload=payload, payload_encoding=encoding,  # type: ignore[arg-type]
        deliveries=deliveries,
    )
    try:
        await bus.publish_event(ledger.js, subjects.deadletter(SERVICE, msg.subject), letter)
    except Exception as exc:
        raise NackMessage(delay=RETRY_DELAY_S) from exc
    metrics.DEAD_LETTERS.labels(reason.split(":")[0].split(" ")[0]).inc()
    log.warning("usage event dead-lettered", reason=reason, subject=msg.subject)
