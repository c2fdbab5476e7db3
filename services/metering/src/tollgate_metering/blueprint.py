"""A Python counterpart of Dodo's LLM ingestion blueprint (which exists only in TypeScript), on
Tollgate's own path: for applications that call a model provider directly instead of through the
gateway.

    tracker = UsageTracker(nats_url, price_book=PriceBook.load("config/pricing.toml"))
    client = tracker.wrap(OpenAI(), customer_id="acme", dodo_customer_id="cus_123")
    client.chat.completions.create(model="gpt-4o", messages=[...])       # sync or async,
    client.chat.completions.create(..., stream=True)                      # streaming or not
    tracker.close()

Every response's usage becomes a `UsageRecorded` event on `usage.recorded.<customer>` (the USAGE
stream), exactly what the gateway publishes, so the metering service delivers it to Dodo and the
ledger posts it, with the same de-duplication: event_id = Nats-Msg-Id = the response id (a fresh
id only for responses that carry none, such as embeddings). Publishing happens on a background
thread with its own event loop; the call only enqueues (no I/O, no await), and a NATS outage
delays publishing, never the call. Streams ask for `include_usage` and read the final usage
chunk; when the wrapper added that option, the extra usage-only chunk is hidden from the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from tollgate_contracts import subjects
from tollgate_contracts.events import UsageRecorded
from tollgate_money import PriceBook, TokenUsage
from tollgate_platform import bus
from tollgate_platform.logging import get_logger

log = get_logger("tollgate_metering.blueprint")

Endpoint = Literal["chat", "completions", "embeddings", "responses"]
_TRACKED: dict[tuple[str, ...], Endpoint] = {
    ("chat", "completions", "create"): "chat",
    ("completions", "create"): "completions",
    ("embeddings", "create"): "embeddings",
    ("responses", "create"): "responses",
}
_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings",
          "responses": "/v1/responses"}
_PREFIXES = {path[:i] for path in _TRACKED for i in range(1, len(path))}


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    dodo_customer_id: str | None
    billing_mode: Literal["credits", "subscription", "free"]
    plan: str | None


@dataclass(slots=True)
class TrackerStats:
    enqueued: int = 0
    published: int = 0
    duplicates: int = 0
    dropped: int = 0
    publish_errors: int = 0


class UsageTracker:
    def __init__(
        self,
        nats_url: str,
        *,
        price_book: PriceBook | None = None,
        key_id: str = "blueprint",
        max_pending: int = 100_000,
        retry_delay_s: float = 0.5,
    ) -> None:
        self.nats_url = nats_url
        self.book = price_book
        self.key_id = key_id
        self.max_pending = max_pending
        self.retry_delay_s = retry_delay_s
        self.stats = TrackerStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[UsageRecorded | None] | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tollgate-usage-tracker", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # -- public API ----------------------------------------------------------------------------

    def wrap(
        self,
        client: Any,
        *,
        customer_id: str,
        dodo_customer_id: str | None = None,
        billing_mode: Literal["credits", "subscription", "free"] = "credits",
        plan: str | None = None,
    ) -> Any:
        """The same client, with every create() on chat, completions, embeddings and responses tracked."""
        subjects.for_customer(subjects.USAGE_RECORDED, customer_id)  # refuse ids that cannot be a subject
        return _Proxy(client, self, Customer(customer_id, dodo_customer_id, billing_mode, plan), ())

    def track(
        self,
        response: Any,
        *,
        customer_id: str,
        dodo_customer_id: str | None = None,
        endpoint: Endpoint = "chat",
        requested_model: str | None = None,
        started_at: datetime | None = None,
    ) -> UsageRecorded | None:
        """Record one response by hand (what `wrap` does after every call)."""
        customer = Customer(customer_id, dodo_customer_id, "credits", None)
        return self._record(response, customer, endpoint, requested_model, started_at or _now())

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything enqueued so far is published (True) or the timeout passes."""
        if self._loop is None or self._queue is None:
            return True
        future = asyncio.run_coroutine_threadsafe(self._queue.join(), self._loop)
        try:
            future.result(timeout)
            return True
        except TimeoutError:
            future.cancel()
            return False

    def __enter__(self) -> UsageTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        if self._loop is not None and self._queue is not None and not self._stopped.is_set():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
        self._thread.join(timeout)

    # -- recording -----------------------------------------------------------------------------

    def _record(
        self, response: Any, customer: Customer, endpoint: Endpoint, requested_model: str | None, started_at: datetime
    ) -> UsageRecorded | None:
        usage = getattr(response, "usage", None)
        if usage is None:
            return None  # no usage, no event (as Dodo's blueprint): nothing is known to bill
        counts = _token_counts(usage)
        served = str(getattr(response, "model", None) or requested_model or "unknown")
        price = self.book.price(served) if self.book else None
        if price is None and self.book is not None and requested_model:
            price = self.book.price(requested_model)
        cost = price.cost(counts) if price else 0
        event = UsageRecorded(
            event_id=str(getattr(response, "id", None) or f"bp_{uuid.uuid4().hex}"),
            customer_id=customer.customer_id,
            dodo_customer_id=customer.dodo_customer_id,
            key_id=self.key_id,
            endpoint=_PATHS[endpoint],
            model=served,
            requested_model=requested_model or served,
            input_tokens=counts.input_tokens,
            cached_input_tokens=counts.cached_input_tokens,
            output_tokens=counts.output_tokens,
            reasoning_tokens=counts.reasoning_tokens,
            cost_nanos=cost if customer.billing_mode == "credits" else 0,
            list_price_nanos=cost,
            price_book_version=self.book.version if self.book else "unpriced",
            billing_mode=customer.billing_mode,
            plan=customer.plan,
            started_at=started_at,
        )
        self._enqueue(event)
        return event

    def _enqueue(self, event: UsageRecorded) -> None:
        if self._loop is None or self._queue is None or self._stopped.is_set():
            self.stats.dropped += 1
            log.error("usage tracker is closed; usage not recorded", event_id=event.event_id)
            return
        if self._queue.qsize() >= self.max_pending:
            self.stats.dropped += 1
            log.error("usage tracker queue full; usage not recorded", event_id=event.event_id)
            return
        self.stats.enqueued += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    # -- the background publisher -------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._ready.set()
        nc = None
        try:
            while True:
                event = await self._queue.get()
                if event is None:
                    self._queue.task_done()
                    return
                while True:  # until the PubAck: the same msg id makes every retry a duplicate
                    try:
                        if nc is None:
                            nc = await bus.connect(self.nats_url, "tollgate-usage-tracker")
                        subject = subjects.for_customer(subjects.USAGE_RECORDED, event.customer_id)
                        ack = await bus.publish_event(nc.jetstream(), subject, event, timeout=2.0)
                        self.stats.published += 1
                        self.stats.duplicates += int(bool(ack.duplicate))
                        break
                    except Exception as exc:
                        self.stats.publish_errors += 1
                        log.warning("usage publish failed; retrying", error=type(exc).__name__)
                        await asyncio.sleep(self.retry_delay_s)
                self._queue.task_done()
        finally:
            self._stopped.set()
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _token_counts(usage: Any) -> TokenUsage:
    """OpenAI's two usage shapes: prompt/completion (chat, completions, embeddings) and
    input/output (responses)."""
    if _get(usage, "input_tokens") is not None:
        inp = int(_get(usage, "input_tokens") or 0)
        out = int(_get(usage, "output_tokens") or 0)
        cached = int(_get(usage, "input_tokens_details", "cached_tokens") or 0)
        reasoning = int(_get(usage, "output_tokens_details", "reasoning_tokens") or 0)
    else:
        inp = int(_get(usage, "prompt_tokens") or 0)
        out = int(_get(usage, "completion_tokens") or 0)
        cached = int(_get(usage, "prompt_tokens_details", "cached_tokens") or 0)
        reasoning = int(_get(usage, "completion_tokens_details", "reasoning_tokens") or 0)
    return TokenUsage(
        input_tokens=inp, output_tokens=out, cached_input_tokens=min(cached, inp), reasoning_tokens=min(reasoning, out)
    )


class _Proxy:
    """Attribute-for-attribute stand-in for an OpenAI client (or one of its resources)."""

    def __init__(self, target: Any, tracker: UsageTracker, customer: Customer, path: tuple[str, ...]) -> None:
        self._target = target
        self._tracker = tracker
        self._customer = customer
        self._path = path

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        path = (*self._path, name)
        endpoint = _TRACKED.get(path)
        if endpoint is not None:
            return self._tracked_create(attr, endpoint)
        if path in _PREFIXES:
            return _Proxy(attr, self._tracker, self._customer, path)
        return attr

    def _prepare(self, endpoint: Endpoint, kwargs: dict[str, Any]) -> bool:
        """Ask a chat/completions stream for its usage chunk; True when the caller had not."""
        if kwargs.get("stream") is not True or endpoint not in ("chat", "completions"):
            return False
        options = dict(kwargs.get("stream_options") or {})
        if "include_usage" in options:
            return False
        options["include_usage"] = True
        kwargs["stream_options"] = options
        return True

    def _tracked_create(self, create: Callable[..., Any], endpoint: Endpoint) -> Callable[..., Any]:
        """Sync and async clients alike: an async client's create() returns an awaitable (the SDK's
        decorators hide that it is a coroutine function), which is awaited in a wrapper coroutine."""

        def call(*args: Any, **kwargs: Any) -> Any:
            hide = self._prepare(endpoint, kwargs)
            started = _now()
            record = self._recorder(endpoint, kwargs.get("model"), started)
            streaming = kwargs.get("stream") is True
            result = create(*args, **kwargs)
            if inspect.isawaitable(result):
                return _finish_async(result, record, hide, streaming)
            if streaming:
                return _SyncStream(result, record, hide)
            record(result)
            return result

        return call

    def _recorder(self, endpoint: Endpoint, model: str | None, started: datetime) -> Callable[[Any], None]:
        def record(response: Any) -> None:
            try:
                self._tracker._record(response, self._customer, endpoint, model, started)
            except Exception:  # recording must never break the caller's response
                log.exception("recording usage failed")

        return record


async def _finish_async(pending: Awaitable[Any], record: Callable[[Any], None], hide: bool, streaming: bool) -> Any:
    result = await pending
    if streaming:
        return _AsyncStream(result, record, hide)
    record(result)
    return result


class _StreamUsage:
    """Watches stream chunks for the usage: a chat/completions chunk's `usage`, or the response
    inside a Responses API `response.completed` event."""

    def __init__(self, record: Callable[[Any], None], hide_usage_chunk: bool) -> None:
        self.record = record
        self.hide = hide_usage_chunk
        self.final: Any = None
        self.done = False

    def see(self, chunk: Any) -> bool:
        """Returns whether the chunk is shown to the caller."""
        if getattr(chunk, "type", None) in ("response.completed", "response.incomplete"):
            self.final = getattr(chunk, "response", None)
            return True
        if getattr(chunk, "usage", None) is not None:
            self.final = chunk
            return not (self.hide and not getattr(chunk, "choices", None))
        return True

    def finish(self) -> None:
        if not self.done:
            self.done = True
            if self.final is not None:
                self.record(self.final)


class _SyncStream:
    def __init__(self, stream: Any, record: Callable[[Any], None], hide: bool) -> None:
        self._stream = stream
        self._chunks = iter(stream)
        self._usage = _StreamUsage(record, hide)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._usage.finish()
                raise
            if self._usage.see(chunk):
                return chunk

    def __enter__(self) -> _SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._usage.finish()
        self._stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _AsyncStream:
    def __init__(self, stream: Any, record: Callable[[Any], None], hide: bool) -> None:
        self._stream = stream
        self._chunks = stream.__aiter__()
        self._usage = _StreamUsage(record, hide)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._usage.finish()
                raise
            if self._usage.see(chunk):
                return chunk

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._usage.finish()
        await self._stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
