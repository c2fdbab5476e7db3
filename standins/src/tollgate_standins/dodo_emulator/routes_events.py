"""`/events`: usage-event ingestion (idempotent on event_id) and the event read API.

`POST /events/ingest` carries up to 1000 events and is the emulator's hot path (metering sends
tens of thousands of events a second in the benchmark). Requests in the plain shape every SDK
sends - JSON with the right content type, a valid key, each event's fields of their JSON types,
times as RFC 3339 with an offset - are handled by `IngestFastPath` before FastAPI: orjson, no
per-event model, the same checks and the same stored objects. Anything else (a missing or wrong
key, an unusual body, a value pydantic would coerce or reject) passes through untouched to the
FastAPI route below, whose answers - 401, 422 in Dodo's shape, ... - are therefore unchanged.
Both paths share `_ingest` for the batch rules (size, duplicates, time window, metadata limits,
unknown customers: a rejected request changes nothing) and the idempotent store.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import Emu, Page, require_auth
from .errors import ApiError, bad_request, error_response, not_found
from .metering import event_matches_meter
from .routes_meters import get_meter
from .schemas import IngestIn
from .state import Obj, public
from .timeutil import iso, parse_dt, utcnow

if TYPE_CHECKING:
    from .runtime import Emulator

router = APIRouter(dependencies=[Depends(require_auth)], tags=["usage events"])

MAX_EVENTS = 1000
MAX_PAST = timedelta(hours=1)
MAX_FUTURE = timedelta(minutes=5)
MAX_METADATA_KEYS = 50
MAX_KEY_LENGTH = 100
MAX_VALUE_LENGTH = 500


# (event_id, customer_id, event_name, timestamp or None, metadata or None), as EventIn has them;
# then, from the fast path: the timestamp as stored (timeutil.iso) when read straight off the
# wire, else None; and whether the metadata is already known to be within Dodo's limits.
EventTuple = tuple[str, str, str, datetime | None, dict[str, Any] | None, str | None, bool]


def _validate_event(emu: Emulator, event: EventTuple, now: datetime) -> datetime:
    event_id, customer_id, _, raw_timestamp, metadata, _, _ = event
    timestamp = parse_dt(raw_timestamp) if raw_timestamp is not None else now
    if timestamp < now - MAX_PAST:
        raise bad_request(f"event {event_id}: timestamp is more than 1 hour in the past")
    if timestamp > now + MAX_FUTURE:
        raise bad_request(f"event {event_id}: timestamp is more than 5 minutes in the future")
    metadata = metadata or {}
    if len(metadata) > MAX_METADATA_KEYS:
        raise ApiError(400, "MAXIMUM_KEYS_REACHED",
                       f"event {event_id}: metadata has more than {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if len(key) > MAX_KEY_LENGTH:
            raise bad_request(f"event {event_id}: metadata key longer than {MAX_KEY_LENGTH} characters")
        if isinstance(value, str) and len(value) > MAX_VALUE_LENGTH:
            raise bad_request(f"event {event_id}: metadata value of {key!r} longer than {MAX_VALUE_LENGTH}")
    if customer_id not in emu.state.customers:
        raise bad_request(f"event {event_id}: customer {customer_id} not found")
    return timestamp


def _iso(dt: datetime) -> str:
    """timeutil.iso (UTC, microseconds, `Z`), without strftime."""
    dt = dt.astimezone(UTC)
    if dt.year < 1000:  # strftime does not pad the year; keep its exact output
        return iso(dt)
    return dt.isoformat(timespec="microseconds")[:-6] + "Z"


def _as_stored(text: str) -> str | None:
    """timeutil.iso of a plain UTC time with microseconds, straight from its text (what every SDK
    sends); None for other offsets or precisions (then the datetime is formatted)."""
    if len(text) == 32 and text.endswith("+00:00") and text[19] == ".":
        return text[:26] + "Z"
    if len(text) == 27 and text[26] == "Z" and text[19] == ".":
        return text
    return None


def _ingest(emu: Emulator, events: Sequence[EventTuple]) -> int:
    if not 1 <= len(events) <= MAX_EVENTS:
        raise bad_request(f"a request carries 1 to {MAX_EVENTS} events, got {len(events)}")
    ids = [e[0] for e in events]
    if len(set(ids)) != len(ids):
        repeated = [event_id for event_id, n in Counter(ids).items() if n > 1]
        raise bad_request(f"duplicate event_id within the request: {', '.join(sorted(repeated)[:5])}")
    now = utcnow()
    # Validate the whole batch before storing anything: a rejected request changes nothing.
    # Events the fast path vouched for (a UTC time, metadata within limits) need only the time
    # window and the customer checked here; any other, or any doubt, takes _validate_event,
    # which is what raises - so errors and their order are _validate_event's.
    oldest, newest = now - MAX_PAST, now + MAX_FUTURE
    customers = emu.state.customers
    timestamps: list[datetime] = []
    append = timestamps.append
    for event in events:
        timestamp = event[3]
        if event[6] and timestamp is not None and oldest <= timestamp <= newest and event[1] in customers:
            append(timestamp)
        else:
            append(_validate_event(emu, event, now))
    state = emu.state
    stored = state.events
    log = state.event_log
    business_id = emu.settings.business_id
    ingested_at = _iso(now)
    ingested = 0
    for (event_id, customer_id, event_name, _, metadata, as_stored, _), timestamp in zip(
        events, timestamps, strict=True
    ):
        if event_id in stored:
            continue  # a retry of an already ingested event: ignored, and not counted
        stored[event_id] = {
            "event_id": event_id,
            "business_id": business_id,
            "customer_id": customer_id,
            "event_name": event_name,
            "timestamp": as_stored or _iso(timestamp),
            "metadata": metadata,
            "_ingested_at": ingested_at,
        }
        log.append(event_id)
        ingested += 1
    state.bump("events_ingested", ingested)
    state.bump("events_duplicate", len(events) - ingested)
    return ingested


@router.post("/events/ingest")
async def ingest(body: IngestIn, emu: Emu) -> Obj:
    events = [(e.event_id, e.customer_id, e.event_name, e.timestamp, e.metadata, None, False) for e in body.events]
    return {"ingested_count": _ingest(emu, events)}


# -- the fast path ------------------------------------------------------------------------------

_INGEST_PATH = "/events/ingest"
_SCALARS = (str, int, float, bool)


def _plain_time(value: object) -> datetime | None:
    """An RFC 3339 time with an offset and at most microseconds (`2026-01-01T00:00:00.123456+00:00`
    or `...Z`), which pydantic and datetime.fromisoformat read identically; None for any other
    form (fromisoformat is laxer, e.g. about an empty fraction)."""
    if (
        type(value) is not str or len(value) < 20 or value[4] != "-" or value[7] != "-" or value[10] != "T"
        or value[13] != ":" or value[16] != ":"
    ):
        return None
    if value[-1] == "Z":
        fraction = value[19:-1]
    elif value[-6] in "+-" and value[-3] == ":":
        fraction = value[19:-6]
    else:
        return None
    if fraction and not (fraction[0] == "." and 2 <= len(fraction) <= 7 and fraction[1:].isdigit()
                         and fraction.isascii()):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def plain_events(doc: object) -> list[EventTuple] | None:
    """The events of an ingest body exactly as IngestIn would validate them, when every field is
    of its JSON type already; None when the model has to decide (coercion or an error)."""
    if type(doc) is not dict:
        return None
    events = doc.get("events")
    if type(events) is not list:
        return None
    out: list[EventTuple] = []
    append = out.append
    last_raw: object = None  # the events of one usage share their time: parse it once
    last_time: datetime | None = None
    last_stored: str | None = None
    for event in events:
        if type(event) is not dict:
            return None
        event_id = event.get("event_id")
        customer_id = event.get("customer_id")
        event_name = event.get("event_name")
        if (
            type(event_id) is not str or not event_id or type(customer_id) is not str or not customer_id
            or type(event_name) is not str or not event_name
        ):
            return None
        raw_time = event.get("timestamp")
        timestamp = None
        as_stored = None
        if raw_time is not None:
            if raw_time != last_raw:
                last_time = _plain_time(raw_time)
                if last_time is None:
                    return None
                last_raw = raw_time
                last_stored = _as_stored(raw_time)  # type: ignore[arg-type]
            timestamp, as_stored = last_time, last_stored
        metadata = event.get("metadata")
        within_limits = True
        if metadata is not None:
            if type(metadata) is not dict:
                return None
            for value in metadata.values():
                kind = type(value)
                if kind not in _SCALARS:
                    return None
                if kind is str and len(value) > MAX_VALUE_LENGTH:
                    within_limits = False
            if len(metadata) > MAX_METADATA_KEYS or (metadata and max(map(len, metadata)) > MAX_KEY_LENGTH):
                within_limits = False
        append((event_id, customer_id, event_name, timestamp, metadata, as_stored,
                within_limits and timestamp is not None and timestamp.tzinfo is UTC))
    return out


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class IngestFastPath:
    """`POST /events/ingest` in the plain case, answered here; everything else goes to FastAPI
    with the body replayed, so its behaviour there is exactly the route's."""

    def __init__(self, app: ASGIApp, emu: Emulator) -> None:
        self.app = app
        self.emu = emu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != _INGEST_PATH:
            await self.app(scope, receive, send)
            return
        content_type: bytes | None = None  # the first of each, as Starlette's Headers.get reads them
        authorization: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"authorization" and authorization is None:
                authorization = value
        if not _is_json(content_type or b"") or not self._authorized(authorization or b""):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, _replay(b"".join(chunks), receive, message), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        events = None
        if body:
            try:
                events = plain_events(orjson.loads(body))
            except orjson.JSONDecodeError:
                events = None
        if events is None:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            response = JSONResponse({"ingested_count": _ingest(self.emu, events)})
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        await response(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        # require_auth's rule; a refusal is left to it (and its error) on the normal path.
        scheme, _, token = header.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        expected = self.emu.settings.api_key
        return expected is None or hmac.compare_digest(token.encode(), expected.encode())


def _replay(body: bytes, receive: Receive, pending: Message | None = None) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent, pending
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": pending is not None}
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replay


@router.get("/events/{event_id}")
async def retrieve_event(event_id: str, emu: Emu) -> Obj:
    event = emu.state.events.get(event_id)
    if event is None:
        raise not_found("event", event_id)
    return public(event)


@router.get("/events")
async def list_events(
    emu: Emu,
    page: Page,
    customer_id: str | None = None,
    event_name: str | None = None,
    meter_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Obj:
    meter = get_meter(emu, meter_id) if meter_id is not None else None
    if meter is not None and event_name is not None and event_name != meter["event_name"]:
        raise bad_request("event_name must match the meter's event_name", "INVALID_QUERY_PARAMS")
    items = []
    for event in emu.state.events.values():
        ts = parse_dt(event["timestamp"])
        if customer_id is not None and event["customer_id"] != customer_id:
            continue
        if event_name is not None and event["event_name"] != event_name:
            continue
        if meter is not None and not event_matches_meter(event, meter):
            continue
        if start is not None and ts < parse_dt(start):
            continue
        if end is not None and ts > parse_dt(end):
            continue
        items.append(event)
    items.sort(key=lambda e: e["timestamp"], reverse=True)
    return {"items": [public(e) for e in page.slice(items)]}
