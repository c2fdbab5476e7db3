"""`usage.recorded` off the response path.

Requests drop their event into a bounded queue; one dispatcher takes whatever has gathered
(after a short linger, so one socket write carries many events), and publishes each to JetStream
with Nats-Msg-Id = request id and the trace context in headers. Acknowledgements are matched by
reply subject on one subscription - no coroutine and no timer task per event. An event NATS does
not acknowledge in time goes to the durable spool, which a drainer re-sends once NATS is back;
JetStream's duplicate window absorbs any repeat. On shutdown the queue is flushed to NATS or the
spool: an event the gateway has accepted is never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge

from tollgate_gateway.bus import BusConnection
from tollgate_gateway.spool import Spool, SpooledEvent, SpoolFile
from tollgate_platform.logging import get_logger

log = get_logger("tollgate.gateway.publisher")

PUBLISHED = Counter("gateway_usage_published_total", "Usage events acknowledged by JetStream")
SPOOLED = Counter("gateway_usage_spooled_total", "Usage events written to the local spool")
SPOOL_PENDING = Gauge("gateway_usage_spool_pending", "Usage events waiting in this worker's spool")

_DRAIN_BATCH = 256
_MAX_BATCH = 512


@dataclass(slots=True)
class Outgoing:
    subject: str
    msg_id: str
    payload: bytes
    parent: SpanContext | None


def traceparent(context: SpanContext) -> str | None:
    """W3C trace context of a span, what consumers continue the trace from."""
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags) & 0xFF:02x}"


class UsagePublisher:
    def __init__(
        self, bus: BusConnection, tracer: trace.Tracer, spool_dir: Path, *, queue_size: int, timeout_s: float,
        drain_interval_s: float, linger_s: float = 0.002, max_unacked: int = 20_000,
    ) -> None:
        self.bus = bus
        self.tracer = tracer
        self.spool_dir = spool_dir
        self.queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=queue_size)
        self.timeout = timeout_s
        self.drain_interval = drain_interval_s
        self.linger = linger_s
        self.max_unacked = max_unacked
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-spool")
        self._spool: Spool | None = None
        self._to_spool: list[SpooledEvent] = []
        self._spool_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._own_pending = 0
        # reply token -> (on_done(ok), timer)
        self._unacked: dict[str, tuple[Callable[[bool], None], asyncio.TimerHandle]] = {}
        self._tokens = itertools.count()
        self._inbox: str | None = None
        self._ack_sub: Subscription | None = None
        self._ack_nc: Any = None
        self._drained = asyncio.Event()
        self._room = asyncio.Event()

    async def start(self) -> None:
        self._spool = await self._in_spool_thread(Spool, self.spool_dir)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._dispatcher()),
            loop.create_task(self._spool_writer()),
            loop.create_task(self._drainer()),
        ]

    def submit(self, subject: str, msg_id: str, payload: bytes, parent: SpanContext | None) -> None:
        item = Outgoing(subject, msg_id, payload, parent)
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self._spool_later(item, self._headers(item, item.parent))

    # -- publishing
    @staticmethod
    def _headers(item: Outgoing, context: SpanContext | None) -> dict[str, str]:
        headers = {"Nats-Msg-Id": item.msg_id, "Content-Type": "application/json"}
        parent = traceparent(context) if context is not None else None
        if parent is not None:
            headers["traceparent"] = parent
        return headers

    async def _dispatcher(self) -> None:
        while True:
            batch = [await self.queue.get()]
            if self.linger:
                await asyncio.sleep(self.linger)
            while len(batch) < _MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            while len(self._unacked) > self.max_unacked and self.bus.connected:
                # NATS is slow to acknowledge: wait for room rather than pile up without bound
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout=0.1)
            for item in batch:
                try:
                    await self._fire(item)
                except Exception:  # never let one event stop the dispatcher
                    log.exception("usage publish failed unexpectedly")
                    self._spool_later(item, self._headers(item, item.parent))

    async def _fire(self, item: Outgoing) -> None:
        parent = trace.set_span_in_context(NonRecordingSpan(item.parent)) if item.parent else None
        span = self.tracer.start_span(
            f"{item.subject} publish", context=parent, kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.message.id": item.msg_id},
        )
        headers = self._headers(item, span.get_span_context())

        def done(ok: bool) -> None:
            if ok:
                PUBLISHED.inc()
            else:
                span.set_status(Status(StatusCode.ERROR, "not acknowledged; spooled"))
                self._spool_later(item, headers)
            span.end()

        if not await self._publish(item.subject, item.payload, headers, done):
            done(False)

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str], done: Callable[[bool], None]
    ) -> bool:
        """Sends one message; `done` is called once with whether JetStream stored it. False when
        it could not even be sent (NATS away: the spool is durable, a reconnect buffer is not)."""
        nc = self.bus.nc
        if nc is None or not self.bus.connected:
            return False
        if self._ack_nc is not nc:
            await self._subscribe_acks()
        assert self._inbox is not None
        token = str(next(self._tokens))
        timer = asyncio.get_running_loop().call_later(self.timeout, self._expire, token)
        self._unacked[token] = (done, timer)
        try:
            await nc.publish(subject, payload, reply=self._inbox + token, headers=headers)
        except Exception as exc:
            self._unacked.pop(token, None)
            timer.cancel()
            log.warning("usage publish failed; spooling", subject=subject, error=type(exc).__name__)
            return False
        return True

    async def _subscribe_acks(self) -> None:
        nc = self.bus.nc
        assert nc is not None
        self._inbox = nc.new_inbox() + "."
        self._ack_sub = await nc.subscribe(self._inbox + "*", cb=self._on_ack)
        self._ack_nc = nc

    async def _on_ack(self, msg: Msg) -> None:
        assert self._inbox is not None
        entry = self._unacked.pop(msg.subject[len(self._inbox):], None)
        if entry is None:
            return
        done, timer = entry
        timer.cancel()
        # A PubAck is {"stream":...,"seq":...}; failures are an error object or a 503 status.
        ok = b'"error"' not in msg.data and not (msg.headers and msg.headers.get("Status") == "503")
        if not ok:
            log.warning("jetstream refused a usage event; spooling", reply=msg.data[:200].decode(errors="replace"))
        done(ok)
        self._settled_one()

    def _expire(self, token: str) -> None:
        entry = self._unacked.pop(token, None)
        if entry is not None:
            log.warning("usage publish not acknowledged in time; spooling")
            entry[0](False)
        self._settled_one()

    def _settled_one(self) -> None:
        if len(self._unacked) <= self.max_unacked:
            self._room.set()
        if not self._unacked:
            self._drained.set()

    async def _send_and_wait(self, subject: str, payload: bytes, headers: dict[str, str]) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def done(ok: bool) -> None:
            if not future.done():
                future.set_result(ok)

        if not await self._publish(subject, payload, headers, done):
            return False
        ok = await future
        if ok:
            PUBLISHED.inc()
        return ok

    # -- the spool
    def _spool_later(self, item: Outgoing, headers: dict[str, str]) -> None:
        self._to_spool.append(SpooledEvent(item.subject, item.msg_id, item.payload, headers))
        self._spool_wakeup.set()

    async def _in_spool_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _spool_writer(self) -> None:
        while True:
            await self._spool_wakeup.wait()
            self._spool_wakeup.clear()
            await self._flush_spool_buffer()

    async def _flush_spool_buffer(self) -> None:
        batch, self._to_spool = self._to_spool, []
        if not batch or self._spool is None:
            self._to_spool = batch + self._to_spool
            return
        try:
            await self._in_spool_thread(self._spool.append, batch)
        except Exception:
            # Keep them in memory and try again: a full disk must not turn into lost usage.
            log.exception("cannot write the usage spool; retrying", events=len(batch))
            self._to_spool = batch + self._to_spool
            await asyncio.sleep(1)
            self._spool_wakeup.set()
            return
        SPOOLED.inc(len(batch))
        self._own_pending += len(batch)
        SPOOL_PENDING.set(self._own_pending)

    async def _drainer(self) -> None:
        while True:
            await asyncio.sleep(self.drain_interval)
            if not self.bus.connected or self._spool is None:
                continue
            try:
                await self._drain_file(self._spool.own, own=True)
                orphans: list[SpoolFile] = await self._in_spool_thread(self._spool.orphans)
                for orphan in orphans:
                    try:
                        await self._drain_file(orphan, own=False)
                    finally:
                        await self._in_spool_thread(orphan.close, True)
            except Exception:
                log.exception("usage spool drain failed; will retry")

    async def _drain_file(self, file: SpoolFile, *, own: bool) -> None:
        while self.bus.connected:
            rows: list[tuple[int, SpooledEvent]] = await self._in_spool_thread(file.head, _DRAIN_BATCH)
            if not rows:
                if own:
                    self._own_pending = 0
                    SPOOL_PENDING.set(0)
                return
            results = await asyncio.gather(*(self._send_and_wait(e.subject, e.payload, e.headers) for _, e in rows))
            done = [row_id for (row_id, _), ok in zip(rows, results, strict=True) if ok]
            await self._in_spool_thread(file.delete, done)
            if own:
                self._own_pending = max(0, self._own_pending - len(done))
                SPOOL_PENDING.set(self._own_pending)
            if len(done) < len(rows):
                return

    async def pending_in_spool(self) -> int:
        if self._spool is None:
            return 0
        return int(await self._in_spool_thread(self._spool.pending))

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        deadline = time.monotonic() + flush_timeout_s
        while not self.queue.empty():
            await self._fire(self.queue.get_nowait())  # spooled at once when NATS is away
        if self._unacked:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout=max(0.0, deadline - time.monotonic()))
        for token in list(self._unacked):
            self._expire(token)  # unacknowledged at shutdown: keep it in the spool
        if self._ack_sub is not None:
            with contextlib.suppress(Exception):
                await self._ack_sub.unsubscribe()
        if self._spool is not None:
            batch, self._to_spool = self._to_spool, []
            if batch:
                await self._in_spool_thread(self._spool.append, batch)
            await self._in_spool_thread(self._spool.close)
        self._executor.shutdown(wait=True)
