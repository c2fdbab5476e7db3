"""Usage published on the bus reaches Dodo as meter events: one per meter, ids derived from the
request id, token sums exact, credits deducted exactly what the ledger charged, plan usage metered
but never deducted, repeats never counted twice."""

from __future__ import annotations

from decimal import Decimal

from nats.js import JetStreamContext

from metering.emulator import usage
from metering.harness import Dodo, metering, publish
from support.servers import Infra, eventually
from tollgate_money import NANOS_PER_CENT


async def test_usage_becomes_one_dodo_event_per_meter(clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo) -> None:
    cus = dodo.customers[0]
    async with metering(clean_bus, dodo):
        await publish(nats_js, usage("dv_a", "acme", cus, model="gpt-4o", input_tokens=4000, output_tokens=1000))
        await publish(nats_js, usage("dv_b", "acme", cus, model="gpt-4o-mini", input_tokens=1000, output_tokens=500))
        events = await eventually(lambda: len(dodo.emulator.events()) >= 4 and dodo.emulator.events())
    by_id = {e["event_id"]: e for e in events}
    assert set(by_id) == {
        "dv_a:llm.input_tokens", "dv_a:llm.output_tokens", "dv_b:llm.input_tokens", "dv_b:llm.output_tokens"
    }
    assert all(e["customer_id"] == cus for e in events)
    # Weighted meters: GPT-4o tokens count as themselves, gpt-4o-mini's at 0.15/2.50 and 0.60/10.00.
    assert by_id["dv_a:llm.input_tokens"]["metadata"]["tokens"] == 4000
    assert by_id["dv_a:llm.output_tokens"]["metadata"]["tokens"] == 1000
    assert Decimal(str(by_id["dv_b:llm.input_tokens"]["metadata"]["tokens"])) == 60
    assert Decimal(str(by_id["dv_b:llm.output_tokens"]["metadata"]["tokens"])) == 30
    assert by_id["dv_b:llm.input_tokens"]["metadata"]["raw_tokens"] == 1000
    assert by_id["dv_b:llm.input_tokens"]["metadata"]["billing_mode"] == "credits"


async def test_dodo_deducts_exactly_the_credit_cost_and_nothing_for_plan_usage(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    cus = dodo.customers[1]
    ce_id = dodo.catalogue.credit_entitlement_id
    client = dodo.emulator.sdk()
    await client.credit_entitlements.balances.create_ledger_entry(
        cus, credit_entitlement_id=ce_id, amount="1000", entry_type="credit", idempotency_key="grant-1"
    )
    paid = [
        usage("dv_1", "acme", cus, model="gpt-4o", input_tokens=4000, output_tokens=1000),
        usage("dv_2", "acme", cus, model="gpt-4o-mini", input_tokens=1000, output_tokens=500),
        usage("dv_3", "acme", cus, model="o1", input_tokens=333, output_tokens=77, cached_input_tokens=100),
        usage("dv_4", "acme", cus, model="gpt-4o", input_tokens=1234, output_tokens=99, cached_input_tokens=1000),
    ]
    plan = usage("dv_5", "acme", cus, input_tokens=50_000, output_tokens=9000, billing_mode="subscription")
    async with metering(clean_bus, dodo):
        for event in [*paid, plan]:
            await publish(nats_js, event)
        await eventually(lambda: len(dodo.emulator.events()) >= 10)
    dodo.emulator.control("POST", "/deduct")
    balance = await client.credit_entitlements.balances.retrieve(cus, credit_entitlement_id=ce_id)
    await client.close()
    charged = sum(u.cost_nanos for u in paid)
    assert Decimal(balance.balance) == Decimal(1000) - Decimal(charged) / NANOS_PER_CENT
    plan_events = {e["event_name"]: e for e in dodo.emulator.events() if e["event_id"].startswith("dv_5:")}
    assert plan_events["llm.subscription.input_tokens"]["metadata"]["tokens"] == 50_000
    assert plan_events["llm.subscription.output_tokens"]["metadata"]["billing_mode"] == "subscription"


async def test_a_republished_request_is_counted_once(clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo) -> None:
    event = usage("dv_twice", "acme", dodo.customers[0])
    async with metering(clean_bus, dodo):
        await publish(nats_js, event)
        await eventually(lambda: len(dodo.emulator.events()) == 2)
        # Past JetStream's dedup window a gateway re-publish is a second message with the same request.
        await nats_js.publish(
            "usage.recorded.acme", event.model_dump_json().encode(), headers={"Nats-Msg-Id": "dv_twice:again"}
        )
        await eventually(lambda: dodo.emulator.stats()["counters"].get("events_duplicate", 0) >= 2)
    ids = sorted(e["event_id"] for e in dodo.emulator.events())
    assert ids == ["dv_twice:llm.input_tokens", "dv_twice:llm.output_tokens"]
    assert dodo.emulator.event_log_length() == 2


async def test_two_replicas_share_the_stream_and_count_each_request_once(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    events = [usage(f"dv_r{i}", "acme", dodo.customers[i % 3], input_tokens=10 + i) for i in range(600)]
    async with metering(clean_bus, dodo, batch_max_events=40), metering(clean_bus, dodo, batch_max_events=40):
        for event in events:
            await publish(nats_js, event)
        await eventually(lambda: len(dodo.emulator.events()) == 1200, timeout=20)
    assert dodo.emulator.event_log_length() == 1200
    inputs = sorted(e["metadata"]["raw_tokens"] if "raw_tokens" in e["metadata"] else e["metadata"]["tokens"]
                    for e in dodo.emulator.events() if e["event_name"] == "llm.input_tokens")
    assert inputs == [10 + i for i in range(600)]
