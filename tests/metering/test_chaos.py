"""Exactly once in effect, through every fault at once: 20% of ingest calls failing (500s, 500s
after the batch was applied, 429s with retry-after, timeouts after the batch was applied), the
metering process SIGKILLed mid-run and restarted, NATS killed and restarted on the same store.
Afterwards Dodo holds exactly one event per (usage, meter), none twice, and every customer's
token sums equal what was published.

The normal suite runs a small profile; `make test-chaos` (-m chaos) runs the 100,000-event one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from nats.js import JetStreamContext

from metering.emulator import RunningEmulator, dodo_customers, usage
from metering.harness import Dodo
from support.servers import Infra, ManagedProcess, eventually, service_process, wait_http
from tollgate_cli.metering_cmds import read_dead_letters
from tollgate_contracts import subjects
from tollgate_contracts.events import UsageRecorded
from tollgate_contracts.streams import METERING_USAGE
from tollgate_platform import bus

INGEST = {"method": "POST", "path_prefix": "/events/ingest"}
# The emulator applies the first matching rule, so the fault kinds take turns, each failing 20%.
FAULT_ROTATION = (
    {**INGEST, "error_rate": 0.2, "status": 500, "apply_then_fail": True},
    {**INGEST, "error_rate": 0.2, "status": 429, "retry_after_s": 0.5},
    {**INGEST, "error_rate": 0.2, "status": "timeout", "apply_then_fail": True, "hang_max_s": 10},
    {**INGEST, "error_rate": 0.2, "status": 500},
)
MODELS = (("gpt-4o", 0), ("gpt-4o-mini", 0), ("o1", 64), ("gpt-4o", 512))


@dataclass(frozen=True)
class Profile:
    events: int
    customers: int
    kills_at: tuple[float, ...]  # fractions of the events published when metering is SIGKILLed
    nats_restart_at: float
    publish_concurrency: int
    timeout_s: float
    batch_max_events: int = 1000  # smaller batches: more ingest calls, so more of them fail


SMALL = Profile(
    events=3000, customers=12, kills_at=(0.3,), nats_restart_at=0.6, publish_concurrency=20, timeout_s=90,
    batch_max_events=50,
)

FULL = Profile(
    events=100_000, customers=200, kills_at=(0.25, 0.65), nats_restart_at=0.45, publish_concurrency=200,
    timeout_s=600,
)


async def test_exactly_once_through_faults_kills_and_a_nats_restart(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    await run_chaos(clean_bus, nats_js, dodo, SMALL)


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_exactly_once_at_100k_events(clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo) -> None:
    await run_chaos(clean_bus, nats_js, dodo, FULL)


async def run_chaos(infra: Infra, js: JetStreamContext, dodo: Dodo, profile: Profile) -> None:
    customers = dodo.customers + await dodo_customers(dodo.emulator, profile.customers - len(dodo.customers))
    run = uuid.uuid4().hex[:8]
    rng = random.Random(42)
    published = [_usage(rng, f"ch{run}_{i}", customers) for i in range(profile.events)]
    env = {
        "TOLLGATE_DODO_CATALOGUE_FILE": str(dodo.catalogue_file),
        "DODO_PAYMENTS_BASE_URL": dodo.emulator.url,
        "DODO_PAYMENTS_API_KEY": "sk_test_metering",
        "METERING_DODO_TIMEOUT_S": "1.0",
        "METERING_FLUSH_INTERVAL_MS": "100",
        "METERING_BATCH_MAX_EVENTS": str(profile.batch_max_events),
        "METERING_BACKOFF_BASE_S": "0.1",
        "METERING_BACKOFF_MAX_S": "2",
        "METERING_NAK_DELAY_MAX_S": "2",
        "LOG_LEVEL": "WARNING",
    }
    async with service_process("tollgate_metering", infra, env=env) as proc, _rotating_faults(dodo.emulator):
        chaos = _Chaos(infra, proc, profile)
        await _publish_all(js, published, profile, chaos)
        await eventually(lambda: dodo.emulator.stats()["events"] >= 2 * profile.events, timeout=profile.timeout_s,
                         interval=0.5)
        await eventually(lambda: _all_acked(js), timeout=60, interval=0.5)
    assert chaos.kills == len(profile.kills_at) and chaos.nats_restarts == 1
    counters = dodo.emulator.stats()["counters"]
    print(f"chaos {profile.events}: {counters}")
    assert counters.get("faults_injected", 0) > 0

    events = dodo.emulator.events()
    expected_ids = {f"{u.event_id}:{name}" for u in published for name in _meters(u)}
    assert len(events) == 2 * profile.events
    assert {e["event_id"] for e in events} == expected_ids
    assert dodo.emulator.event_log_length() == len(events)  # nothing stored twice
    assert _sums_from_dodo(events) == _sums_published(published)
    assert await read_dead_letters(js) == []


def _usage(rng: random.Random, request_id: str, customers: list[str]) -> UsageRecorded:
    model, cached = rng.choice(MODELS)
    customer = rng.choice(customers)
    mode = "subscription" if rng.random() < 0.2 else "credits"
    return usage(
        request_id, f"t_{customer}", customer, model=model, input_tokens=rng.randint(cached + 1, 5000),
        output_tokens=rng.randint(0, 2000), cached_input_tokens=cached, billing_mode=mode,
    )


def _meters(u: UsageRecorded) -> tuple[str, str]:
    if u.billing_mode == "credits":
        return ("llm.input_tokens", "llm.output_tokens")
    return ("llm.subscription.input_tokens", "llm.subscription.output_tokens")


def _sums_published(published: list[UsageRecorded]) -> dict[str, dict[str, Any]]:
    sums: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for u in published:
        bucket = sums[u.dodo_customer_id or ""]
        bucket[f"{u.billing_mode}:input"] += u.input_tokens
        bucket[f"{u.billing_mode}:output"] += u.output_tokens
        bucket["cost_nanos"] += u.cost_nanos
    return {k: dict(v) for k, v in sums.items()}


def _sums_from_dodo(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Raw tokens per customer and mode, and the credit value the weighted meters carry (input
    units at 2,500 nanos, output units at 10,000 nanos: GPT-4o's per-token prices)."""
    sums: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    value = defaultdict(Decimal)
    for e in events:
        meta = e["metadata"]
        kind = "input" if e["event_name"].endswith("input_tokens") else "output"
        bucket = sums[e["customer_id"]]
        bucket[f"{meta['billing_mode']}:{kind}"] += meta.get("raw_tokens", meta["tokens"])
        if meta["billing_mode"] == "credits":
            value[e["customer_id"]] += Decimal(str(meta["tokens"])) * (2500 if kind == "input" else 10_000)
    for customer, nanos in value.items():
        assert nanos == nanos.to_integral_value()
        sums[customer]["cost_nanos"] = int(nanos)
    return {k: dict(v) for k, v in sums.items()}


class _Chaos:
    """Kills and restarts, triggered by how much has been published."""

    def __init__(self, infra: Infra, proc: ManagedProcess, profile: Profile) -> None:
        self.infra = infra
        self.proc = proc
        self.profile = profile
        self.kills = 0
        self.nats_restarts = 0
        self.pending: list[tuple[float, str]] = sorted(
            [(f, "kill") for f in profile.kills_at] + [(profile.nats_restart_at, "nats")]
        )

    async def progress(self, fraction: float) -> None:
        while self.pending and fraction >= self.pending[0][0]:
            _, action = self.pending.pop(0)
            if action == "kill":
                self.proc.kill()  # SIGKILL: no drain, no flush, in-flight batches cut off
                self.kills += 1
                self.proc.start(wait=False)
                await wait_http(f"http://127.0.0.1:{self.proc.port}/healthz", self.proc)
            else:
                self.infra.nats.kill()
                await asyncio.sleep(0.5)
                self.infra.nats.start()
                self.nats_restarts += 1


async def _publish_all(js: JetStreamContext, published: list[UsageRecorded], profile: Profile, chaos: _Chaos) -> None:
    """Publishes like the gateway's spool: retry until the PubAck, same msg id (dedup on the server)."""
    chunk = profile.publish_concurrency
    for start in range(0, len(published), chunk):
        await asyncio.gather(*(_publish_one(js, u) for u in published[start:start + chunk]))
        await chaos.progress((start + chunk) / len(published))


async def _publish_one(js: JetStreamContext, u: UsageRecorded) -> None:
    subject = subjects.for_customer(subjects.USAGE_RECORDED, u.customer_id)
    while True:
        try:
            await bus.publish_event(js, subject, u, timeout=2.0)
            return
        except Exception:  # NATS restarting: keep the event and try again
            await asyncio.sleep(0.2)


async def _all_acked(js: JetStreamContext) -> bool:
    with contextlib.suppress(Exception):
        info = await js.consumer_info(METERING_USAGE.stream.name, METERING_USAGE.durable)
        return not info.num_pending and not info.num_ack_pending
    return False


@contextlib.asynccontextmanager
async def _rotating_faults(emulator: RunningEmulator) -> AsyncIterator[None]:
    async def rotate() -> None:
        seed = 0
        while True:
            for rule in FAULT_ROTATION:
                seed += 1
                await asyncio.to_thread(emulator.faults, rule, seed=seed)
                await asyncio.sleep(1.0)

    task = asyncio.create_task(rotate())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(emulator.faults)
