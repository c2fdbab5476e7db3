"""The `metering-usage` pull consumer: pull usage messages, batch their Dodo events, ingest, and
acknowledge each message only after Dodo accepted all of its events.

Why nats-py directly rather than a FastStream subscriber: a Dodo batch spans several pulls
(flushed by size or by deadline), each message is acked/naked/dead-lettered on the outcome of a
later HTTP call, held messages get `in_progress` while a batch retries, and pulling must stop when
too much is held. FastStream's per-message handler model fits none of these.

Exactly once in effect: a message is acked only after Dodo accepted its events; anything else
(crash, timeout, NATS restart) redelivers it, and Dodo ignores event ids it already has
(event_id = f"{request_id}:{event name}"). Within one replica the same request is never in two
concurrent calls (a redelivered copy rides along with the copy already in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dodopayments import AsyncDodoPayments
from nats.js import JetStreamContext
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

from tollgate_metering import deadletter, ingest, metrics
from tollgate_metering.mapping import Mapped, Mapper, Permanent, Skip
from tollgate_metering.pull import Puller
from tollgate_metering.settings import MeteringSettings
from tollgate_metering.wire import Delivery, MeteringClient
from tollgate_platform.logging import get_logger

log = get_logger("tollgate_metering.consumer")

MAX_LINKS = 32
REPLAY_MARK = ":replay:"
_REPLAY_MARK_B = REPLAY_MARK.encode()


@dataclass(eq=False, slots=True)
class Held:
    msg: Delivery
    mapped: Mapped
    signalled: float  # when the server last heard about this message (delivery or in_progress)
    duplicates: list[Delivery] | None = None

    @property
    def msgs(self) -> list[Delivery]:
        return [self.msg] if self.duplicates is None else [self.msg, *self.duplicates]


@dataclass(eq=False, slots=True)
class Batch:
    items: list[Held] = field(default_factory=list)
    events: int = 0
    opened: float = 0.0


@dataclass(frozen=True, slots=True)
class ConsumerLimits:
    """What the server says about the durable consumer (not what we hope it says)."""

    stream: str
    durable: str
    ack_wait_s: float
    max_deliver: int


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("metering task crashed", task=task.get_name(), error=repr(task.exception()))


class UsageConsumer:
    def __init__(
        self,
        settings: MeteringSettings,
        nc: MeteringClient,
        js: JetStreamContext,
        client: AsyncDodoPayments,
        mapper: Callable[[], Mapper],
        limits: ConsumerLimits,
        tracer: trace.Tracer,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.client = client
        self.mapper = mapper
        self.limits = limits
        self.tracer = tracer
        # Unbounded: what bounds it is max_held_messages (pulling stops; the backlog stays in NATS).
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()
        self.open = Batch()
        self.inflight: dict[str, Held] = {}  # request id -> held message
        self.held = 0
        self.room = asyncio.Event()
        self.room.set()
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []
        self.side_tasks: set[asyncio.Task[None]] = set()  # dead letters, skips, naks off the hot path
        self._now: datetime | None = None
        self._mono = 0.0
        self._mapper: Mapper | None = None
        # Read once: settings attributes are not free, and these are used per message.
        self._batch_max = settings.batch_max_events
        limit = settings.max_held_messages
        # Room for a whole fetch, not for one message: near the limit, fetching whatever fits
        # would turn into one round trip per message.
        self._room_below = limit - min(settings.fetch_batch, limit)
        self.puller = Puller(
            nc, limits.stream, limits.durable, self._on_message, self.room, settings.fetch_batch
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.puller.start()
        self.tasks = [
            asyncio.create_task(self._flush_loop(), name="metering-flush"),
            asyncio.create_task(self._heartbeat_loop(), name="metering-heartbeat"),
            *(asyncio.create_task(self._send_loop(), name=f"metering-send-{i}") for i in range(self.settings.senders)),
        ]
        for task in [*self.tasks, *([self.puller.task] if self.puller.task else [])]:
            task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        """Stop pulling, deliver what is held (bounded by drain_timeout_s), hand back the rest."""
        self.stopping = True
        await self.puller.stop()
        self._emit_open()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout=self.settings.drain_timeout_s)
        if self.side_tasks:
            await asyncio.wait(list(self.side_tasks), timeout=5)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for held in list(self.inflight.values()):
            await self._settle(held, "nak", delay=0.0)

    # -- receiving ---------------------------------------------------------------------------

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """Called by the parser for each message, synchronously: no await on the hot path."""
        msg = Delivery((subject, reply, data, headers))
        now = self._now
        if now is None:  # one clock reading (and catalogue look) per batch of messages off the socket
            now = self._now = datetime.now(UTC)
            self._mono = time.monotonic()
            asyncio.get_running_loop().call_soon(self._reset_now)
        try:
            self._accept(msg, now)
        except Exception:  # a bug must not stop the stream; the message comes back later
            log.exception("accepting a message failed", subject=msg.subject)
            self._side(self._nak_msgs([msg], self.settings.nak_delay_max_s))

    def _reset_now(self) -> None:
        self._now = None
        self._mapper = None

    def _accept(self, msg: Delivery, now: datetime) -> None:
        replay = False
        raw_headers = msg[3]
        if raw_headers is not None and _REPLAY_MARK_B in raw_headers:  # cheap test; the dict only if needed
            msg_id = (msg.headers or {}).get("Nats-Msg-Id")
            replay = bool(msg_id and REPLAY_MARK in msg_id)
        mapper = self._mapper
        if mapper is None:
            mapper = self._mapper = self.mapper()
        try:
            mapped = mapper.map(msg[2], now=now, replay=replay)
        except Skip as skip:
            metrics.SKIPPED.labels(skip.code).inc()
            log.warning("usage skipped by policy", reason=skip.code, subject=msg.subject,
                        msg_id=(msg.headers or {}).get("Nats-Msg-Id"))
            self._side(self._ack_msgs([msg]))
            return
        except Permanent as perm:
            self._track(1)
            self._side(self._dead_letter_msgs([msg], perm.code, perm.detail, self._deliveries(msg)))
            return
        self.held += 1
        if self.held > self._room_below:  # _track(1), inline: this runs per message
            self.room.clear()
        existing = self.inflight.get(mapped.request_id)
        if existing is not None:
            # A redelivered (or re-published) copy of a request already on its way: it shares
            # that copy's outcome instead of racing it in a second ingest call.
            if existing.duplicates is None:
                existing.duplicates = [msg]
            else:
                existing.duplicates.append(msg)
            return
        held = Held(msg, mapped, self._mono)
        self.inflight[mapped.request_id] = held
        size = len(mapped.events)
        open_batch = self.open
        if open_batch.items and open_batch.events + size > self._batch_max:
            self._emit_open()
            open_batch = self.open
        if not open_batch.items:
            open_batch.opened = held.signalled
        open_batch.items.append(held)
        open_batch.events += size
        if open_batch.events >= self._batch_max:
            self._emit_open()

    def _emit_open(self) -> None:
        if not self.open.items:
            return
        batch, self.open = self.open, Batch()
        self.queue.put_nowait(batch)

    def _side(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.side_tasks.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task[None]) -> None:
        self.side_tasks.discard(task)
        _report_crash(task)

    def _deliveries(self, msg: Delivery) -> int:
        # Parsed from the reply subject only when needed (naks, dead letters): it is not free.
        return int(msg.msg(self.nc).metadata.num_delivered or 1)

    async def _flush_loop(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        while True:
            await asyncio.sleep(min(interval / 4, 0.05))
            if self.open.items and time.monotonic() - self.open.opened >= interval:
                self._emit_open()

    def _track(self, delta: int) -> None:
        self.held += delta
        if self.held <= self._room_below:
            self.room.set()
        else:
            self.room.clear()

    # -- sending -----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            batch = await self.queue.get()
            try:
                await self._deliver(batch.items)
            except Exception:  # a bug must not kill the sender; the messages redeliver
                log.exception("delivering a batch failed")
                for held in batch.items:
                    if self.inflight.get(held.mapped.request_id) is held:  # not settled before the error
                        with contextlib.suppress(Exception):
                            await self._settle(held, "nak", delay=self.settings.backoff_max_s)
            finally:
                self.queue.task_done()

    async def _deliver(self, items: list[Held]) -> None:
        outcome = await self._ingest_with_retries(items)
        if isinstance(outcome, ingest.Accepted):
            now = datetime.now(UTC)
            metrics.observe_many(
                metrics.DELIVERY_LAG, [max((now - held.mapped.occurred_at).total_seconds(), 0.0) for held in items]
            )
            await self._ack_held(items)
            return
        if isinstance(outcome, ingest.Rejected):
            if len(items) == 1:
                await self._settle(
                    items[0], "deadletter", reason="dodo_rejected", detail=f"HTTP {outcome.status} {outcome.message}"
                )
                return
            # One bad event fails the whole request and nothing of it is stored: bisect until the
            # bad message is alone, so every good message still goes through.
            metrics.SPLITS.inc()
            middle = len(items) // 2
            await self._deliver(items[:middle])
            await self._deliver(items[middle:])
            return
        for held in items:
            deliveries = self._deliveries(held.msg)
            if deliveries >= self.limits.max_deliver:
                # The server would silently stop redelivering after this: never let it.
                await self._settle(
                    held, "deadletter", reason="dodo_unavailable",
                    detail=f"{outcome.reason} on delivery {deliveries} of {self.limits.max_deliver}",
                )
            else:
                await self._settle(held, "nak", delay=self._nak_delay(deliveries, outcome.retry_after))

    async def _ingest_with_retries(self, items: list[Held]) -> ingest.Outcome:
        events = [event for held in items for event in held.mapped.events]
        body = ingest.encode(events)
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            with self._span(items, len(events), attempt):
                outcome = await ingest.ingest(self.client, body)
            elapsed = time.monotonic() - started
            if isinstance(outcome, ingest.Accepted):
                metrics.INGEST_SECONDS.labels("accepted").observe(elapsed)
                metrics.BATCH_EVENTS.observe(len(events))
                metrics.EVENTS_INGESTED.inc(len(events))
                metrics.EVENTS_NEW.inc(outcome.ingested)
                return outcome
            if isinstance(outcome, ingest.Rejected):
                metrics.INGEST_SECONDS.labels("rejected").observe(elapsed)
                log.warning("dodo rejected a batch", status=outcome.status, message=outcome.message,
                            events=len(events), messages=len(items))
                return outcome
            metrics.INGEST_SECONDS.labels(outcome.reason).observe(elapsed)
            metrics.RETRIES.labels(outcome.reason).inc()
            level = log.error if outcome.reason.startswith("http_") else log.info
            level("ingest failed, will retry", reason=outcome.reason, message=outcome.message, attempt=attempt,
                  events=len(events))
            delay = self._backoff(attempt, outcome.retry_after)
            if self.stopping or attempt >= self.settings.local_attempts or delay > self.settings.backoff_max_s:
                return outcome
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after  # Dodo said when; waiting less only earns another 429
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _nak_delay(self, deliveries: int, retry_after: float | None) -> float:
        ceiling = min(self.settings.nak_delay_max_s, self.settings.backoff_base_s * 2 ** min(deliveries, 16))
        delay = random.uniform(ceiling / 2, ceiling)
        return min(max(delay, retry_after or 0.0), self.settings.nak_delay_max_s)

    def _span(self, items: list[Held], events: int, attempt: int) -> contextlib.AbstractContextManager[trace.Span]:
        """One span per ingest call, a child of the first message's trace (gateway -> NATS ->
        metering -> Dodo) and linked to the traces of the others."""
        contexts = []
        for held in items[:MAX_LINKS]:
            if held.msg.header_contains(b"traceparent"):
                headers = held.msg.headers
                if headers and "traceparent" in headers:
                    contexts.append(trace.get_current_span(propagate.extract(headers)).get_span_context())
        parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])) if contexts else None
        return self.tracer.start_as_current_span(
            "metering ingest",
            context=parent,
            kind=SpanKind.INTERNAL,
            links=[Link(c) for c in contexts[1:]],
            attributes={"dodo.events": events, "messaging.batch.message_count": len(items), "attempt": attempt},
        )

    # -- outcomes ----------------------------------------------------------------------------

    async def _ack_held(self, items: list[Held]) -> None:
        """Dodo took the whole batch: ack every message of it (and its riders) in one write."""
        msgs: list[Delivery] = []
        inflight = self.inflight
        for held in items:
            request_id = held.mapped.request_id
            if inflight.get(request_id) is held:
                del inflight[request_id]
            msgs.append(held.msg)
            if held.duplicates is not None:
                msgs.extend(held.duplicates)
        await self._ack_msgs(msgs)
        metrics.USAGE_ACKED.inc(len(msgs))
        self._track(-len(msgs))

    async def _settle(
        self, held: Held, how: str, *, delay: float = 0.0, reason: str = "", detail: str = ""
    ) -> None:
        if self.inflight.get(held.mapped.request_id) is held:
            del self.inflight[held.mapped.request_id]
        msgs = held.msgs
        if how == "ack":
            await self._ack_msgs(msgs)
            metrics.USAGE_ACKED.inc(len(msgs))
        elif how == "nak":
            await self._nak_msgs(msgs, delay)
        else:
            await self._dead_letter_msgs(msgs, reason, detail, self._deliveries(held.msg))
            return
        self._track(-len(msgs))

    async def _ack_msgs(self, msgs: list[Delivery]) -> None:
        # Fire-and-forget, one write for all (what Msg.ack() sends, each): a lost ack only
        # redelivers, and Dodo ignores the repeat.
        with contextlib.suppress(Exception):
            await self.nc.send_raw(b"".join([msg.ack_command() for msg in msgs]))

    async def _nak_msgs(self, msgs: list[Delivery], delay: float) -> None:
        metrics.NAKS.inc(len(msgs))
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.msg(self.nc).nak(delay=delay)

    async def _dead_letter_msgs(self, msgs: list[Delivery], code: str, detail: str, deliveries: int) -> None:
        first = msgs[0]
        msg_id = (first.headers or {}).get("Nats-Msg-Id")
        letter = deadletter.build(first.subject, msg_id, first.data, f"{code}: {detail}", deliveries)
        try:
            await deadletter.publish(self.js, letter)
        except Exception as exc:
            # Not recorded anywhere yet: keep the message and try again later.
            log.warning("dead letter not published; message will redeliver", error=type(exc).__name__)
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.msg(self.nc).nak(delay=self.settings.backoff_max_s)
            self._track(-len(msgs))
            return
        metrics.DEAD_LETTERS.labels(code).inc(len(msgs))
        log.error("usage dead-lettered", reason=code, detail=detail, subject=first.subject, msg_id=msg_id,
                  deliveries=deliveries)
        await self._ack_msgs(msgs)
        self._track(-len(msgs))

    # -- keeping held messages alive ---------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Messages held longer than a third of ack_wait (a batch backing off, a slow Dodo) get
        `in_progress`, so the server does not redeliver them to another replica meanwhile."""
        period = max(self.limits.ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(min(period, 1.0))
            metrics.HELD_MESSAGES.set(self.held)
            now = time.monotonic()
            for held in list(self.inflight.values()):
                if held.signalled <= now - period:
                    held.signalled = now
                    for msg in held.msgs:
                        with contextlib.suppress(Exception):
                            await msg.msg(self.nc).in_progress()
