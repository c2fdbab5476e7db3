"""Meters and usage events: validation limits, idempotent ingestion, the read API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import dodopayments
import pytest
from dodo_emulator_kit import World


def _event(customer_id: str, event_id: str, **kwargs: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": event_id, "customer_id": customer_id, "event_name": "llm.usage",
                             "timestamp": datetime.now(UTC)}
    event.update(kwargs)
    return event


def test_meter_crud_and_archive(world: World, client: dodopayments.DodoPayments) -> None:
    meter = world.meter(
        filter={"conjunction": "and", "clauses": [{"key": "model", "operator": "equals", "value": "gpt-4o"}]},
        description="input tokens",
    )
    assert meter.id.startswith("mtr_")
    assert meter.aggregation.type == "sum" and meter.aggregation.key == "cost_microusd"
    assert meter.filter is not None and meter.filter.conjunction == "and"
    renamed = client.meters.update(meter.id, name="Cost", description=None)
    assert (renamed.name, renamed.description) == ("Cost", None)
    assert [m.id for m in client.meters.list().items] == [meter.id]
    client.meters.archive(meter.id)
    assert client.meters.list().items == []
    assert [m.id for m in client.meters.list(archived=True).items] == [meter.id]
    client.meters.unarchive(meter.id)
    assert [m.id for m in client.meters.list().items] == [meter.id]


def test_meter_validation(client: dodopayments.DodoPayments) -> None:
    with pytest.raises(dodopayments.UnprocessableEntityError):
        client.meters.create(aggregation={"type": "sum"}, event_name="e", measurement_unit="u", name="n")
    count = client.meters.create(aggregation={"type": "count"}, event_name="e", measurement_unit="calls", name="n")
    assert count.aggregation.key is None


def test_ingest_is_idempotent_on_event_id(world: World, client: dodopayments.DodoPayments) -> None:
    customer = world.customer()
    batch = [_event(customer.customer_id, f"e{i}", metadata={"cost_microusd": i}) for i in range(3)]
    assert client.usage_events.ingest(events=batch).ingested_count == 3
    retry = [*batch, _event(customer.customer_id, "e3")]
    assert client.usage_events.ingest(events=retry).ingested_count == 1  # only the new one counts
    assert len(client.usage_events.list(page_size=100).items) == 4


@pytest.mark.parametrize(
    ("events", "status"),
    [
        ([], 400),
        ([{"duplicate": True}, {"duplicate": True}], 400),
        ([{"timestamp_offset": -timedelta(hours=2)}], 400),
        ([{"timestamp_offset": timedelta(minutes=10)}], 400),
        ([{"metadata": {f"k{i}": i for i in range(51)}}], 400),
        ([{"metadata": {"k" * 101: 1}}], 400),
        ([{"metadata": {"k": "v" * 501}}], 400),
        ([{"metadata": {"nested": {"no": "objects"}}}], 422),
        ([{"customer_id": "cus_unknown"}], 400),
    ],
    ids=["empty", "dup-in-request", "too-old", "future", "51-keys", "long-key", "long-value", "nested",
         "unknown-customer"],
)
def test_ingest_rejects_invalid_batches_whole(world: World, client: dodopayments.DodoPayments,
                                              events: list[dict[str, Any]], status: int) -> None:
    customer = world.customer()
    batch = [_event(customer.customer_id, "good")]
    for i, spec in enumerate(events):
        spec = dict(spec)  # parameters are shared between runs: never mutate them
        event = _event(customer.customer_id, "same" if spec.pop("duplicate", False) else f"bad{i}")
        if "timestamp_offset" in spec:  # relative to when the test runs, not when it was collected
            spec["timestamp"] = datetime.now(UTC) + spec.pop("timestamp_offset")
        event.update(spec)
        batch.append(event)
    if not events:
        batch = []
    with pytest.raises(dodopayments.APIStatusError) as exc:
        client.usage_events.ingest(events=batch)
    assert exc.value.status_code == status
    assert isinstance(exc.value.body, dict) and exc.value.body["message"]
    assert client.usage_events.list().items == []  # nothing of a rejected batch was stored


def test_ingest_caps_batch_size(world: World, client: dodopayments.DodoPayments) -> None:
    customer = world.customer()
    batch = [_event(customer.customer_id, f"e{i}") for i in range(1001)]
    with pytest.raises(dodopayments.BadRequestError):
        client.usage_events.ingest(events=batch)
    assert client.usage_events.ingest(events=batch[:1000]).ingested_count == 1000


def test_event_read_api(world: World, client: dodopayments.DodoPayments) -> None:
    ada = world.customer()
    bob = world.customer(email="bob@example.com", name="Bob")
    now = datetime.now(UTC)
    client.usage_events.ingest(events=[
        _event(ada.customer_id, "a1", timestamp=now - timedelta(minutes=30), metadata={"model": "gpt-4o"}),
        _event(ada.customer_id, "a2", timestamp=now - timedelta(minutes=10), metadata={"model": "mini"}),
        _event(bob.customer_id, "b1", timestamp=now - timedelta(minutes=20), event_name="other",
               metadata={"model": "gpt-4o"}),
    ])
    fetched = client.usage_events.retrieve("a1")
    assert (fetched.customer_id, fetched.event_name, fetched.metadata) == (ada.customer_id, "llm.usage",
                                                                            {"model": "gpt-4o"})
    assert [e.event_id for e in client.usage_events.list(customer_id=ada.customer_id).items] == ["a2", "a1"]
    assert [e.event_id for e in client.usage_events.list(event_name="other").items] == ["b1"]
    window = client.usage_events.list(start=now - timedelta(minutes=25), end=now - timedelta(minutes=15)).items
    assert [e.event_id for e in window] == ["b1"]
    assert [e.event_id for e in client.usage_events.list(page_size=1, page_number=1).items] == ["b1"]

    meter = world.meter(filter={"conjunction": "and",
                                "clauses": [{"key": "model", "operator": "equals", "value": "gpt-4o"}]})
    assert [e.event_id for e in client.usage_events.list(meter_id=meter.id).items] == ["a1"]
    with pytest.raises(dodopayments.BadRequestError):
        client.usage_events.list(meter_id=meter.id, event_name="other")
