"""The delivery worker: every replica runs one. It claims due deliveries (so replicas never send
the same one at once), sends them, and records each attempt with exponential backoff until the
channel's give-up horizon."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime

import asyncpg
import httpx
import structlog
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import Counter, Gauge

from tollgate_notifier import store
from tollgate_notifier.channels import PermanentError, TransientError
from tollgate_notifier.channels.email import EmailSender
from tollgate_notifier.channels.slack import SlackSender
from tollgate_notifier.channels.webhook import WebhookSender
from tollgate_notifier.prefs import load as load_prefs
from tollgate_notifier.render import render
from tollgate_notifier.settings import NotifierSettings

log = structlog.get_logger("tollgate_notifier.worker")

DELIVERIES = Counter(
    "notifier_delivery_attempts_total", "Delivery attempts by channel and outcome", ["channel", "outcome"]
)
# What an operator alerts on: a backlog that grows or ages means alerts are not getting out.
PENDING = Gauge("notifier_deliveries_pending", "Deliveries waiting to be sent (all replicas)")
OLDEST = Gauge("notifier_deliveries_oldest_pending_seconds", "Age of the oldest pending delivery")
BACKLOG_EVERY_S = 15.0
# Retries of recording an outcome: quick, since a terminated backend only needs a fresh
# connection, and at most a second apart, so the record lands soon after Postgres is back.
RECORD_RETRY_FIRST_S = 0.05
RECORD_RETRY_MAX_S = 1.0


def backoff_s(attempt: int, settings: NotifierSettings, rng: random.Random | None = None) -> float:
    """Delay before attempt `attempt + 1`: base * 2^(attempt-1), capped, with jitter so a backlog
    after an outage does not retry in lockstep."""
    delay = min(settings.retry_max_s, settings.retry_base_s * 2.0 ** max(0, attempt - 1))
    jitter = settings.retry_jitter * delay
    return max(0.0, delay + (rng or random).uniform(-jitter, jitter))


class DeliveryWorker:
    def __init__(
        self, pool: asyncpg.Pool, http: httpx.AsyncClient, settings: NotifierSettings,
        tracer_provider: TracerProvider,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.email = EmailSender(settings)
        self.slack = SlackSender(http)
        self.webhook = WebhookSender(http)
        self.tracer = tracer_provider.get_tracer("tollgate_notifier")
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._unrecorded: set[int] = set()  # deliveries whose outcome is being retried

    def wake(self) -> None:
        """A consumer just committed deliveries: look now instead of at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier-delivery-worker")

    async def stop(self) -> None:
        """Stop claiming, let the sends in flight finish (up to shutdown_drain_s). A send cut off
        here keeps its lease and is retried by another replica when the lease runs out."""
        self._stopping = True
        self._wake.set()
        if self._task:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=self.settings.shutdown_drain_s)
            for task in pending:
                task.cancel()

    async def _run(self) -> None:
        backlog_at = 0.0
        while not self._stopping:
            claimed = 0
            try:
                claimed = await self._claim_and_dispatch()
                if time.monotonic() - backlog_at > BACKLOG_EVERY_S:
                    backlog_at = time.monotonic()
                    count, age = await store.backlog(self.pool)
                    PENDING.set(count)
                    OLDEST.set(age)
            except Exception as exc:  # a dead worker would leave alerts unsent behind a green /readyz
                log.warning("claim failed", error=f"{type(exc).__name__}: {exc}")
            if claimed:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.worker_poll_s)

    async def _claim_and_dispatch(self) -> int:
        if self._unrecorded:
            # Our lease on an unrecorded delivery may have run out during the outage; claiming now
            # could take it back and send it again before its outcome is recorded.
            return 0
        free = self.settings.worker_concurrency - len(self._inflight)
        if free <= 0:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            return 1
        items = await store.claim_due(self.pool, min(free, self.settings.worker_batch), self.settings.claim_lease_s)
        for item in items:
            task = asyncio.create_task(self._deliver(item))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(items)

    async def _deliver(self, item: store.Claimed) -> None:
        started = datetime.now(UTC)
        parent = propagate.extract(item.trace)
        link = trace.Link(trace.get_current_span(parent).get_span_context())
        with self.tracer.start_as_current_span(
            "notifier.deliver", links=[link],
            attributes={"notifier.channel": item.channel, "notifier.kind": item.kind, "notifier.attempt": item.attempt},
        ):
            outcome, error, retry_in = await self._attempt(item)
        kept = await self._record(item, started, outcome, error, retry_in)
        if kept is None:
            return
        DELIVERIES.labels(item.channel, outcome).inc()
        fields = {"delivery_id": item.id, "alert_id": item.alert_id, "channel": item.channel,
                  "kind": item.kind, "attempt": item.attempt}
        if not kept:
            log.warning("lease lost while sending; another replica owns this delivery now", **fields)
        elif outcome == "sent":
            log.info("alert delivered", **fields)
        elif outcome == "retry":
            log.warning("delivery failed, will retry", error=error, retry_in_s=round(retry_in or 0, 3), **fields)
        else:
            log.error("delivery failed permanently", error=error, **fields)

    async def _record(
        self, item: store.Claimed, started: datetime, outcome: str, error: str | None, retry_in: float | None,
    ) -> bool | None:
        """store.finish, retried until it lands or record_retry_s runs out (then None).

        Giving up on recording a successful send would let the lease hand the delivery to another
        replica, which sends it again. While the database is down nobody can take it over (a claim
        is a write too), this replica claims nothing until the record lands, and retries are at
        most RECORD_RETRY_MAX_S apart: within the lease (claim_lease_s), no one else sends it.

        Still at-least-once, because a send and a database write can never be one atomic step:
        if the process dies (or stop() cuts it off) after the receiver accepted and before the
        commit, or an outage outlives the lease and another replica claims the delivery before
        this record lands, it is sent again. Recording "sending" first and never retrying would
        lose alerts instead; the stable Message-ID / webhook-id let receivers drop the repeat."""
        deadline = time.monotonic() + self.settings.record_retry_s
        failures = 0
        try:
            while True:
                try:
                    kept = await store.finish(self.pool, item, started, outcome, error, retry_in)
                except Exception as exc:  # asyncpg raises more than PostgresError on a broken connection
                    failures += 1
                    if failures == 1:
                        self._unrecorded.add(item.id)
                        log.warning("could not record delivery outcome, retrying", delivery_id=item.id,
                                    outcome=outcome, error=f"{type(exc).__name__}: {exc}")
                    if time.monotonic() >= deadline:
                        log.error("gave up recording delivery outcome; it is retried after its lease",
                                  delivery_id=item.id, outcome=outcome, tries=failures)
                        return None
                    delay = min(RECORD_RETRY_MAX_S, RECORD_RETRY_FIRST_S * 2.0 ** (failures - 1))
                    await asyncio.sleep(random.uniform(0.5, 1.0) * delay)
                    continue
                if failures:
                    log.info("delivery outcome recorded after retrying", delivery_id=item.id, tries=failures + 1)
                return kept
        except asyncio.CancelledError:
            log.error("stopped before recording delivery outcome; it is retried after its lease",
                      delivery_id=item.id, outcome=outcome)
            raise
        finally:
            self._unrecorded.discard(item.id)

    async def _attempt(self, item: store.Claimed) -> tuple[str, str | None, float | None]:
        try:
            await self._send(item)
            return "sent", None, None
        except PermanentError as exc:
            return "failed", str(exc), None
        except TransientError as exc:
            delay = max(backoff_s(item.attempt, self.settings), exc.retry_after_s or 0.0)
            age = (datetime.now(UTC) - item.created_at).total_seconds()
            horizon = self.settings.give_up_after_s(item.channel)
            if age + delay > horizon:
                return "failed", f"gave up after {item.attempt} attempts over {age:.0f}s: {exc}", None
            return "retry", str(exc), delay
        except Exception as exc:  # a template or code bug: keep retrying, it may be fixed by a deploy
            log.exception("unexpected delivery error", delivery_id=item.id)
            return "retry", f"internal error: {type(exc).__name__}", backoff_s(item.attempt, self.settings)

    async def _send(self, item: store.Claimed) -> None:
        rendered = render(item.kind, item.context, self.settings)
        if item.channel == "email":
            message_id = f"<alert-{item.alert_id}@{self.settings.message_id_domain}>"
            await self.email.send(item.target, rendered, message_id)
        elif item.channel == "slack":
            await self.slack.send(item.target, rendered)
        elif item.channel == "webhook":
            prefs = await load_prefs(self.pool, item.customer_id) if item.customer_id else None
            if prefs is None or not prefs.webhook_secret:
                raise PermanentError("webhook: no signing secret configured for this customer")
            payload = {
                "type": item.kind,
                "timestamp": item.created_at.isoformat(),
                "data": {"alert_id": item.alert_id, "dedup_key": item.dedup_key, **item.context},
                "text": rendered.text,
            }
            await self.webhook.send(item.target, prefs.webhook_secret, f"alert_{item.alert_id}", payload)
        else:
            raise PermanentError(f"unknown channel {item.channel}")
