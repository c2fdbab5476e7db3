"""Fault injection: failing, slow and apply-then-fail API calls; dropped, duplicated, reordered webhooks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dodopayments
import httpx
import pytest
from dodo_emulator_kit import Receiver, RunningEmulator, World, wait_for


def _faults(control: httpx.Client, **config: Any) -> None:
    control.put("/_emulator/faults", json=config).raise_for_status()


def _event(customer_id: str, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "customer_id": customer_id, "event_name": "llm.usage",
            "timestamp": datetime.now(UTC)}


def test_injected_500_and_429(world: World, client: dodopayments.DodoPayments, control: httpx.Client) -> None:
    customer = world.customer()
    _faults(control, endpoints=[{"method": "POST", "path_prefix": "/events/ingest", "error_rate": 1.0,
                                 "status": 429, "retry_after_s": 1}])
    with pytest.raises(dodopayments.RateLimitError) as exc:
        client.usage_events.ingest(events=[_event(customer.customer_id, "e1")])
    assert exc.value.response.headers["retry-after"] == "1"
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "TOO_MANY_REQUESTS"
    assert client.customers.list().items  # other routes are untouched

    _faults(control, endpoints=[{"path_prefix": "/events", "error_rate": 1.0, "status": 500}])
    with pytest.raises(dodopayments.InternalServerError):
        client.usage_events.ingest(events=[_event(customer.customer_id, "e1")])
    control.delete("/_emulator/faults").raise_for_status()
    assert client.usage_events.list().items == []  # failed before applying
    assert control.get("/_emulator/faults").json()["endpoints"] == []


def test_faults_are_deterministic_for_a_seed(world: World, client: dodopayments.DodoPayments,
                                             control: httpx.Client) -> None:
    customer = world.customer()

    def outcomes() -> list[bool]:
        _faults(control, seed=7, endpoints=[{"path_prefix": "/customers/", "error_rate": 0.5, "status": 500}])
        results = []
        for _ in range(16):
            try:
                client.customers.retrieve(customer.customer_id)
                results.append(True)
            except dodopayments.InternalServerError:
                results.append(False)
        return results

    first = outcomes()
    assert first == outcomes()
    assert True in first and False in first
    assert control.get("/_emulator/faults").json()["injected"] == first.count(False)


def test_apply_then_fail_stores_the_batch(world: World, client: dodopayments.DodoPayments,
                                          control: httpx.Client) -> None:
    customer = world.customer()
    _faults(control, endpoints=[{"method": "POST", "path_prefix": "/events/ingest", "error_rate": 1.0,
                                 "status": 500, "apply_then_fail": True}])
    batch = [_event(customer.customer_id, "e1"), _event(customer.customer_id, "e2")]
    with pytest.raises(dodopayments.InternalServerError):
        client.usage_events.ingest(events=batch)
    control.delete("/_emulator/faults")
    assert client.usage_events.ingest(events=batch).ingested_count == 0  # the retry is a no-op
    assert len(client.usage_events.list().items) == 2


def test_timeout_after_apply(emulator: RunningEmulator, world: World, client: dodopayments.DodoPayments,
                             control: httpx.Client) -> None:
    customer = world.customer()
    _faults(control, endpoints=[{"method": "POST", "path_prefix": "/events/ingest", "error_rate": 1.0,
                                 "status": "timeout", "apply_then_fail": True}])
    impatient = emulator.sdk(timeout=0.5)
    with pytest.raises(dodopayments.APITimeoutError):
        impatient.usage_events.ingest(events=[_event(customer.customer_id, "late")])
    control.delete("/_emulator/faults")
    assert client.usage_events.retrieve("late").customer_id == customer.customer_id


def test_latency_injection_without_errors(world: World, client: dodopayments.DodoPayments,
                                          control: httpx.Client) -> None:
    _faults(control, endpoints=[{"path_prefix": "/customers", "delay_ms": 50}])
    assert world.customer().customer_id.startswith("cus_")
    assert control.get("/_emulator/faults").json()["injected"] == 0


def test_dropped_webhooks(world: World, control: httpx.Client, receiver: Receiver) -> None:
    _faults(control, webhooks={"drop_rate": 1.0})
    world.webhook(receiver.url, filter_types=["payment.succeeded"])
    world.buy(world.topup(world.entitlement().id).product_id, world.customer().customer_id)
    [delivery] = world.deliveries(type="payment.succeeded")
    assert delivery["status"] == "dropped" and delivery["attempts"] == []
    assert receiver.requests == []


def test_duplicated_webhooks(world: World, control: httpx.Client, receiver: Receiver) -> None:
    _faults(control, webhooks={"duplicate_rate": 1.0})
    world.webhook(receiver.url, filter_types=["payment.succeeded"])
    world.buy(world.topup(world.entitlement().id).product_id, world.customer().customer_id)
    first, second = receiver.wait_type("payment.succeeded", count=2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_reordered_webhooks(world: World, control: httpx.Client, receiver: Receiver) -> None:
    _faults(control, webhooks={"reorder": True, "reorder_window_ms": 200})
    world.webhook(receiver.url, filter_types=["payment.succeeded", "credit.added"])
    world.buy(world.topup(world.entitlement().id).product_id, world.customer().customer_id)
    wait_for(lambda: len(receiver.types()) == 2, what="both webhooks")
    assert receiver.types() == ["credit.added", "payment.succeeded"]  # emitted the other way round
