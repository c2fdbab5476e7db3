"""Dodo failing (5xx, 429, timeouts after it applied the batch): usage waits unacknowledged and
reaches Dodo exactly once when it recovers; the operator sees retries and lag meanwhile."""

from __future__ import annotations

import httpx
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from metering.emulator import usage
from metering.harness import Dodo, metering, publish
from support.servers import Infra, eventually
from tollgate_cli.metering_cmds import read_dead_letters

INGEST = {"method": "POST", "path_prefix": "/events/ingest"}


async def metric(url: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_an_outage_holds_usage_until_dodo_recovers(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    dodo.emulator.faults({**INGEST, "error_rate": 1.0, "status": 503})
    async with metering(clean_bus, dodo) as server:
        retries_before = await metric(server.url, "tollgate_metering_ingest_retries_total", reason="5xx")
        for i in range(20):
            await publish(nats_js, usage(f"ft1_{i}", "acme", dodo.customers[i % 3]))
        await eventually(
            lambda: metric(server.url, "tollgate_metering_ingest_retries_total", reason="5xx"), timeout=10
        )
        assert await metric(server.url, "tollgate_metering_ingest_retries_total", reason="5xx") > retries_before
        # The operator's view: usage is waiting, and how old the oldest waiting usage is.
        await eventually(lambda: _positive(server.url, "tollgate_metering_consumer_lag_seconds"), timeout=10)
        assert dodo.emulator.events() == []

        dodo.emulator.faults()
        await eventually(lambda: len(dodo.emulator.events()) == 40, timeout=15)
        await eventually(lambda: _zero(server.url, "tollgate_metering_consumer_lag_seconds"), timeout=10)
    assert await read_dead_letters(nats_js) == []


async def test_rate_limits_are_retried_not_dropped(clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo) -> None:
    dodo.emulator.faults({**INGEST, "error_rate": 1.0, "status": 429, "retry_after_s": 0.2})
    async with metering(clean_bus, dodo) as server:
        for i in range(10):
            await publish(nats_js, usage(f"ft2_{i}", "acme", dodo.customers[0]))
        await eventually(lambda: metric(server.url, "tollgate_metering_ingest_retries_total", reason="429"))
        dodo.emulator.faults()
        await eventually(lambda: len(dodo.emulator.events()) == 20, timeout=15)
    assert await read_dead_letters(nats_js) == []


async def test_timeouts_after_dodo_applied_the_batch_never_count_twice(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    dodo.emulator.faults({**INGEST, "error_rate": 1.0, "status": "timeout", "apply_then_fail": True, "hang_max_s": 5})
    async with metering(clean_bus, dodo, dodo_timeout_s=0.3) as server:
        for i in range(10):
            await publish(nats_js, usage(f"ft3_{i}", "acme", dodo.customers[1], input_tokens=100 + i))
        await eventually(lambda: dodo.emulator.stats()["counters"].get("events_duplicate", 0) >= 20, timeout=15)
        assert await metric(server.url, "tollgate_metering_ingest_retries_total", reason="timeout") > 0
        dodo.emulator.faults()
        await eventually(lambda: _zero(server.url, "tollgate_metering_held_messages"), timeout=15)
    events = dodo.emulator.events()
    assert len(events) == 20 and dodo.emulator.event_log_length() == 20
    inputs = sorted(e["metadata"]["tokens"] for e in events if e["event_name"] == "llm.input_tokens")
    assert inputs == [100 + i for i in range(10)]


async def _positive(url: str, name: str) -> bool:
    return await metric(url, name) > 0


async def _zero(url: str, name: str) -> bool:
    return await metric(url, name) == 0
