"""One `POST /events/ingest` call through the official SDK, classified for the retry logic.

The SDK never retries here (max_retries=0): a batch is retried by the consumer, which keeps its
messages unacknowledged meanwhile. The request goes through the SDK's own `post` with the body
already serialised: events are built wire-shaped (strings, numbers), so the SDK's per-field
TypedDict transform would return them unchanged, at ~130 ms per 1000 events (measured) - more than
the whole rest of the pipeline. Auth, base URL, timeouts, errors and response parsing are the SDK's.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import orjson
from dodopayments import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncDodoPayments,
)
from dodopayments.types import UsageEventIngestResponse

INGEST_PATH = "/events/ingest"
# Permanent for the request as sent: one event is bad, or the whole batch is too big. Splitting
# the batch finds out which.
REJECTING_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class Accepted:
    ingested: int


@dataclass(frozen=True, slots=True)
class Rejected:
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Transient:
    reason: str  # "429", "5xx", "timeout", "connection", "http_<status>"
    retry_after: float | None = None
    message: str = ""


Outcome = Accepted | Rejected | Transient


def encode(events: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"events": events})


async def ingest(client: AsyncDodoPayments, body: bytes, headers: dict[str, str] | None = None) -> Outcome:
    try:
        response = await client.post(
            INGEST_PATH,
            content=body,
            cast_to=UsageEventIngestResponse,
            options={"headers": {"Content-Type": "application/json", **(headers or {})}},
        )
    except APITimeoutError:
        return Transient("timeout")
    except APIConnectionError as exc:
        return Transient("connection", message=type(exc.__cause__ or exc).__name__)
    except APIStatusError as exc:
        status = exc.status_code
        message = _message(exc)
        if status in REJECTING_STATUSES:
            return Rejected(status, message)
        if status == 429:
            return Transient("429", retry_after(exc.response.headers), message)
        if status >= 500:
            return Transient("5xx", retry_after(exc.response.headers), message)
        # 401/403/404/409...: not the events' fault; likely configuration. Retry (loudly) rather
        # than dead-letter every event in the stream.
        return Transient(f"http_{status}", retry_after(exc.response.headers), message)
    return Accepted(int(response.ingested_count or 0))


def _message(exc: APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        return f"{body.get('code', '')}: {body.get('message', '')}".strip(": ")
    return str(body or exc.message)[:500]


def retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None
