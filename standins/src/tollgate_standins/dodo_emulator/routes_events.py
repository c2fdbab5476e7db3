"""`/events`: usage-event ingestion (idempotent on event_id) and the event read API."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from fastapi import APIRouter, Depends

from .deps import Emu, Page, require_auth
from .errors import ApiError, bad_request, not_found
from .metering import event_matches_meter
from .routes_meters import get_meter
from .schemas import EventIn, IngestIn
from .state import Obj, public
from .timeutil import iso, parse_dt, utcnow

router = APIRouter(dependencies=[Depends(require_auth)], tags=["usage events"])

MAX_EVENTS = 1000
MAX_PAST = timedelta(hours=1)
MAX_FUTURE = timedelta(minutes=5)
MAX_METADATA_KEYS = 50
MAX_KEY_LENGTH = 100
MAX_VALUE_LENGTH = 500


def _validate_event(emu: Emu, event: EventIn, now: datetime) -> datetime:
    timestamp = parse_dt(event.timestamp) if event.timestamp is not None else now
    if timestamp < now - MAX_PAST:
        raise bad_request(f"event {event.event_id}: timestamp is more than 1 hour in the past")
    if timestamp > now + MAX_FUTURE:
        raise bad_request(f"event {event.event_id}: timestamp is more than 5 minutes in the future")
    metadata = event.metadata or {}
    if len(metadata) > MAX_METADATA_KEYS:
        raise ApiError(400, "MAXIMUM_KEYS_REACHED",
                       f"event {event.event_id}: metadata has more than {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if len(key) > MAX_KEY_LENGTH:
            raise bad_request(f"event {event.event_id}: metadata key longer than {MAX_KEY_LENGTH} characters")
        if isinstance(value, str) and len(value) > MAX_VALUE_LENGTH:
            raise bad_request(f"event {event.event_id}: metadata value of {key!r} longer than {MAX_VALUE_LENGTH}")
    if event.customer_id not in emu.state.customers:
        raise bad_request(f"event {event.event_id}: customer {event.customer_id} not found")
    return timestamp


@router.post("/events/ingest")
async def ingest(body: IngestIn, emu: Emu) -> Obj:
    if not 1 <= len(body.events) <= MAX_EVENTS:
        raise bad_request(f"a request carries 1 to {MAX_EVENTS} events, got {len(body.events)}")
    repeated = [event_id for event_id, n in Counter(e.event_id for e in body.events).items() if n > 1]
    if repeated:
        raise bad_request(f"duplicate event_id within the request: {', '.join(sorted(repeated)[:5])}")
    now = utcnow()
    # Validate the whole batch before storing anything: a rejected request changes nothing.
    timestamps = [_validate_event(emu, e, now) for e in body.events]
    state = emu.state
    ingested = 0
    for event, timestamp in zip(body.events, timestamps, strict=True):
        if event.event_id in state.events:
            continue  # a retry of an already ingested event: ignored, and not counted
        state.events[event.event_id] = {
            "event_id": event.event_id,
            "business_id": emu.settings.business_id,
            "customer_id": event.customer_id,
            "event_name": event.event_name,
            "timestamp": iso(timestamp),
            "metadata": event.metadata,
            "_ingested_at": iso(now),
        }
        state.event_log.append(event.event_id)
        ingested += 1
    state.bump("events_ingested", ingested)
    state.bump("events_duplicate", len(body.events) - ingested)
    return {"ingested_count": ingested}


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
