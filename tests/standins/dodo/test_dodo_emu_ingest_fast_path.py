"""`POST /events/ingest` answers the same whether the fast path or the FastAPI route handles it.

The fast path takes `application/json`; `application/x-tollgate+json` is JSON to FastAPI too but
not to the fast path, so it forces the route. Each body goes to a fresh emulator both ways and
the status, the answer and everything stored must be identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from tollgate_standins.dodo_emulator import EmulatorSettings, create_app
from tollgate_standins.dodo_emulator.routes_events import _plain_time

API_KEY = "sk_test_fast_path"
NOW = datetime.now(UTC).replace(microsecond=123456)
FAST = "application/json"
ROUTE = "application/x-tollgate+json"


@pytest.fixture
def pair() -> Iterator[tuple[TestClient, TestClient]]:
    fast = TestClient(create_app(EmulatorSettings(api_key=API_KEY, deduct_interval_s=3600)))
    route = TestClient(create_app(EmulatorSettings(api_key=API_KEY, deduct_interval_s=3600)))
    with fast, route:
        for client in (fast, route):
            for name in ("Ada", "Bob"):
                client.app.state.emu.state.customers[f"cus_{name}"] = {"customer_id": f"cus_{name}"}  # type: ignore[attr-defined]
        yield fast, route


def _event(i: int, **kwargs: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": f"e{i}", "customer_id": "cus_Ada", "event_name": "llm.input_tokens",
                             "timestamp": (NOW - timedelta(minutes=i)).isoformat(),
                             "metadata": {"tokens": 12.5, "model": "gpt-4o", "raw": 7, "estimated": True}}
    event.update(kwargs)
    return event


def _post(client: TestClient, body: bytes, content_type: str, key: str = API_KEY) -> tuple[int, Any]:
    response = client.post("/events/ingest", content=body,
                           headers={"content-type": content_type, "authorization": f"Bearer {key}"})
    return response.status_code, response.json()


def _stored(client: TestClient, none_time_ids: set[str]) -> dict[str, Any]:
    state = client.app.state.emu.state  # type: ignore[attr-defined]
    events = {}
    for event_id, event in state.events.items():
        kept = {k: v for k, v in event.items() if k != "_ingested_at"}
        if event_id in none_time_ids:
            kept.pop("timestamp")  # "now" on each side
        events[event_id] = kept
    return {"events": events, "log": list(state.event_log), "counters": dict(state.counters)}


BODIES: list[tuple[str, Any]] = [
    ("plain", {"events": [_event(i) for i in range(5)]}),
    ("offsets and fractions", {"events": [
        _event(1, timestamp=(NOW - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")),
        _event(2, timestamp=(NOW - timedelta(minutes=2)).astimezone(
            __import__("datetime").timezone(timedelta(hours=5, minutes=30))).isoformat()),
        _event(3, timestamp=(NOW - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"),
        _event(5, timestamp=(NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
        _event(6, timestamp=(NOW - timedelta(minutes=6)).replace(microsecond=0).isoformat()),
        _event(7, timestamp=(NOW - timedelta(minutes=7)).strftime("%Y-%m-%dT%H:%M:%S.%f-00:00")),
    ]}),
    ("no time, no metadata, extra keys", {"extra": 1, "events": [
        {"event_id": "n1", "customer_id": "cus_Bob", "event_name": "x", "other": [1]},
        {"event_id": "n2", "customer_id": "cus_Bob", "event_name": "x", "timestamp": None, "metadata": None},
    ]}),
    ("coerced times", {"events": [
        _event(1, timestamp=int((NOW - timedelta(minutes=1)).timestamp())),
        _event(2, timestamp=(NOW - timedelta(minutes=2)).replace(tzinfo=None).isoformat()),
        _event(3, timestamp=(NOW - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%S+0000")),
        _event(4, timestamp=(NOW - timedelta(minutes=4)).strftime("%Y-%m-%d %H:%M:%SZ")),
        _event(5, timestamp=(NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "1Z"),
    ]}),
    ("invalid time", {"events": [_event(1, timestamp="2026-02-30T00:00:00Z")]}),
    ("nested metadata", {"events": [_event(1, metadata={"nested": {"no": 1}})]}),
    ("null metadata value", {"events": [_event(1, metadata={"k": None})]}),
    ("empty id", {"events": [_event(1, event_id="")]}),
    ("numeric id", {"events": [_event(1, event_id=5)]}),
    ("event not an object", {"events": [_event(1), "e2"]}),
    ("events not a list", {"events": {"e1": _event(1)}}),
    ("not an object", [_event(1)]),
    ("no events", {"events": []}),
    ("too many", {"events": [_event(i % 50, event_id=f"m{i}") for i in range(1001)]}),
    ("duplicates", {"events": [_event(1), _event(1)]}),
    ("too old", {"events": [_event(0), _event(61)]}),
    ("future", {"events": [_event(-10)]}),
    ("unknown customer", {"events": [_event(1, customer_id="cus_Nobody")]}),
    ("too many keys", {"events": [_event(1, metadata={f"k{i}": i for i in range(51)})]}),
    ("long key", {"events": [_event(1, metadata={"k" * 101: 1})]}),
    ("long value", {"events": [_event(1, metadata={"k": "v" * 501})]}),
    ("first error in order wins", {"events": [_event(1), _event(2, metadata={"k": "v" * 501}), _event(61)]}),
    ("first error in order wins 2", {"events": [_event(61), _event(2, metadata={"k" * 101: 1})]}),
    ("customer after limits", {"events": [_event(1, customer_id="cus_X"), _event(2, metadata={"k": "v" * 501})]}),
    ("a value of exactly the limit", {"events": [_event(1, metadata={"k" * 100: "v" * 500})]}),
    ("shared times", {"events": [_event(i % 3, event_id=f"s{i}") for i in range(30)]}),
]


def test_plain_bodies_take_the_fast_path() -> None:
    from tollgate_standins.dodo_emulator.routes_events import plain_events

    for name, body in BODIES[:3]:
        assert plain_events(orjson.loads(orjson.dumps(body))) is not None, name
    for name, body in BODIES[3:12]:
        assert plain_events(orjson.loads(orjson.dumps(body))) is None, name


@pytest.mark.parametrize(("name", "body"), BODIES, ids=[name for name, _ in BODIES])
def test_fast_path_and_route_agree(pair: tuple[TestClient, TestClient], name: str, body: Any) -> None:
    fast, route = pair
    raw = orjson.dumps(body)
    assert _post(fast, raw, FAST) == _post(route, raw, ROUTE), name
    # and a retry of the same body (idempotency) agrees too
    assert _post(fast, raw, FAST) == _post(route, raw, ROUTE), name
    none_time = {e.get("event_id") for e in (body.get("events") if isinstance(body, dict) else []) or []
                 if isinstance(e, dict) and e.get("timestamp") is None}
    assert _stored(fast, none_time) == _stored(route, none_time)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"events": [NaN]}', b'{"events": [{"event_id": "\\ud800"}]}',
                                 b'{"events": [{"event_id": 123456789012345678901234567890}]}'])
def test_bodies_orjson_refuses_go_to_the_route(pair: tuple[TestClient, TestClient], raw: bytes) -> None:
    fast, route = pair
    assert _post(fast, raw, FAST) == _post(route, raw, ROUTE)
    status, answer = _post(fast, raw, FAST)
    assert status in (400, 422) and set(answer) == {"code", "message"}


def test_auth_is_the_route_s(pair: tuple[TestClient, TestClient]) -> None:
    fast, route = pair
    raw = orjson.dumps({"events": [_event(1)]})
    assert _post(fast, raw, FAST, key="wrong") == _post(route, raw, ROUTE, key="wrong")
    status, answer = _post(fast, raw, FAST, key="wrong")
    assert status == 401 and answer["code"] == "UNAUTHORIZED"
    assert fast.app.state.emu.state.events == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", [
    "2026-11-30T02:41:00.123456+00:00", "2026-11-30T02:41:00Z", "2026-11-30T02:41:00.1Z",
    "2026-11-30T02:41:00.12345-07:00", "2026-11-30T02:41:00+23:59",
    "2026-11-30T02:41:00-00:00", "1999-01-01T00:00:00.000001+01:00",
])
def test_plain_times_read_as_pydantic_reads_them(text: str) -> None:
    from pydantic import TypeAdapter

    parsed = _plain_time(text)
    assert parsed is not None
    expected = TypeAdapter(datetime).validate_python(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("text", [
    "2026-11-30T02:41:00", "2026-11-30 02:41:00Z", "2026-11-30T02:41Z", "2026-11-30T02:41:00+0530",
    "2026-W48-1T02:41:00Z", "2026-11-30T02:41:00.Z", "2026-11-30T24:00:00Z", "2026-11-30T02:41:00+05:30:00",
    "2026-11-30T02:41:00z", "2026-11-30T02:41:00.1234567Z", "2026-11-30T02:41:00.12a+00:00",
    "2026-11-30T02:41:00.\u0661Z", "2026-11-30T02:41:00+05:3",
])
def test_other_times_are_left_to_pydantic(text: str) -> None:
    assert _plain_time(text) is None
