"""The usage consumer: every request charged exactly once whatever the delivery (duplicates,
reordering, many customers, redelivery after a crash), and the gateway's hot copy follows."""

from __future__ import annotations

import json
import random
import time

from ledger.support import CENT, RunningLedger, balance_of, funded_customer, publish, settle_in_gateway, usage_event
from support.servers import eventually
from tollgate_hotstate import HotState
from tollgate_hotstate.loader import load_customer
from tollgate_ledger.usage import _post_in_transaction
from tollgate_platform import bus


async def posted_count(ledger: RunningLedger, customers: list[str]) -> int:
    return int(await ledger.ledger.pool.fetchval(
        "SELECT count(*) FROM ledger.entries WHERE kind = 'usage' AND customer_id = ANY($1::text[])", customers
    ))


async def test_duplicates_reordering_and_many_customers_charge_each_request_once(
    consuming_ledger: RunningLedger,
) -> None:
    ledger = consuming_ledger
    hot = ledger.ledger.hot
    customers = [await funded_customer(ledger, 1000) for _ in range(8)]
    for customer in customers:
        await load_customer(ledger.ledger.pool, hot, customer, 0, 0)
    rng = random.Random(4)
    events = [usage_event(rng.choice(customers), rng.randint(1, 5_000_000)) for _ in range(400)]
    for event in events:
        await settle_in_gateway(hot, event)
    shuffled = events[:]
    rng.shuffle(shuffled)
    await publish(ledger.settings.nats_url, shuffled)
    await publish(ledger.settings.nats_url, rng.sample(events, 150), duplicate_ids=True)

    await eventually(lambda: _all_posted(ledger, customers, len(events)), timeout=30)
    pool = ledger.ledger.pool
    for customer in customers:
        spent = sum(e.cost_nanos for e in events if e.customer_id == customer)
        assert await balance_of(pool, customer) == 1000 * CENT - spent
        snap = await hot.snapshot(customer)
        assert int(snap["bal"]) == 1000 * CENT - spent and snap["unposted"] == "0"
        assert await hot.redis.hlen(f"{{c:{customer}}}:unposted") == 0
    references = await pool.fetch(
        "SELECT reference, count(*) AS n FROM ledger.entries WHERE kind = 'usage' AND customer_id = ANY($1::text[]) "
        "GROUP BY reference", customers,
    )
    assert len(references) == len(events) and all(r["n"] == 1 for r in references)
    # Balances after each entry chain exactly: seq has no gaps, each balance_after follows the last.
    for customer in customers:
        rows = await pool.fetch("SELECT seq, amount_nanos, balance_after FROM ledger.entries WHERE customer_id = $1 "
                                "ORDER BY seq", customer)
        running = 0
        for expected_seq, row in enumerate(rows, start=1):
            running += row["amount_nanos"]
            assert row["seq"] == expected_seq and row["balance_after"] == running


async def _all_posted(ledger: RunningLedger, customers: list[str], expected: int) -> bool:
    return await posted_count(ledger, customers) == expected and not await _pending(ledger)


async def _pending(ledger: RunningLedger) -> int:
    nc = await bus.connect(ledger.settings.nats_url, "ledger-tests-pending")
    try:
        info = await nc.jetstream().consumer_info("USAGE", "ledger-usage")
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await nc.close()


async def test_redelivery_after_commit_without_ack_still_clears_the_unposted_copy(
    consuming_ledger: RunningLedger,
) -> None:
    ledger = consuming_ledger
    hot = ledger.ledger.hot
    customer = await funded_customer(ledger, 100)
    await load_customer(ledger.ledger.pool, hot, customer, 0, 0)
    event = usage_event(customer, 7 * CENT)
    await settle_in_gateway(hot, event)
    # A previous consumer committed the entry and crashed before mirroring and acking.
    await ledger.ledger.transaction(lambda conn, effects: _post_in_transaction(conn, effects, [event], 20))
    assert int((await hot.snapshot(customer))["unposted"]) == 7 * CENT
    await publish(ledger.settings.nats_url, [event])
    await eventually(lambda: _unposted_is(hot, customer, 0))
    assert await balance_of(ledger.ledger.pool, customer) == 93 * CENT
    assert await hot.available(customer) == 93 * CENT
    assert await posted_count(ledger, [customer]) == 1


async def _unposted_is(hot: HotState, customer: str, value: int) -> bool:
    return int((await hot.snapshot(customer)).get("unposted", -1)) == value


async def test_subscription_usage_is_recorded_but_not_charged(consuming_ledger: RunningLedger) -> None:
    ledger = consuming_ledger
    customer = await funded_customer(ledger, 100)
    events = [usage_event(customer, 3 * CENT, mode="subscription"), usage_event(customer, 2 * CENT, mode="free")]
    await publish(ledger.settings.nats_url, events)
    await publish(ledger.settings.nats_url, events, duplicate_ids=True)
    pool = ledger.ledger.pool

    async def recorded() -> bool:
        return int(await pool.fetchval("SELECT count(*) FROM ledger.plan_usage WHERE customer_id = $1", customer)) == 2

    await eventually(recorded)
    await eventually(lambda: _no_pending(ledger))
    assert await balance_of(pool, customer) == 100 * CENT
    total = await pool.fetchval("SELECT sum(list_price_nanos) FROM ledger.plan_usage WHERE customer_id = $1", customer)
    assert total == 5 * CENT


async def _no_pending(ledger: RunningLedger) -> bool:
    return not await _pending(ledger)


async def test_bad_events_are_dead_lettered_and_the_rest_posted(consuming_ledger: RunningLedger) -> None:
    ledger = consuming_ledger
    customer = await funded_customer(ledger, 100)
    good = usage_event(customer, 5 * CENT)
    stranger = usage_event("cus_tg_stranger", 5 * CENT)
    nc = await bus.connect(ledger.settings.nats_url, "ledger-tests-bad")
    try:
        js = nc.jetstream()
        await bus.publish_raw(js, f"usage.recorded.{customer}", b'{"not": "a usage event"}', "bad-1")
        await publish(ledger.settings.nats_url, [good, stranger])
        dead = await js.pull_subscribe("deadletter.ledger.>", stream="DEADLETTER")

        async def letters() -> list[dict[str, object]]:
            try:
                msgs = await dead.fetch(10, timeout=0.2)
            except TimeoutError:
                return []
            return [json.loads(m.data) for m in msgs]

        found: list[dict[str, object]] = []

        async def both() -> bool:
            found.extend(await letters())
            return len(found) >= 2

        await eventually(both)
    finally:
        await nc.close()
    reasons = sorted(str(letter["reason"]) for letter in found)
    assert reasons[0].startswith("invalid usage event") and reasons[1] == "unknown customer cus_tg_stranger"
    assert await balance_of(ledger.ledger.pool, customer) == 95 * CENT


async def test_throughput_of_the_usage_consumer(consuming_ledger: RunningLedger) -> None:
    """Not a timing assertion: drains 6,000 events for 60 customers and reports the rate."""
    ledger = consuming_ledger
    customers = [await funded_customer(ledger, 10_000) for _ in range(60)]
    rng = random.Random(9)
    events = [usage_event(rng.choice(customers), rng.randint(1, 900_000)) for _ in range(6000)]
    started = time.monotonic()  # end to end: publishing (as the gateway would) and posting overlap
    await publish(ledger.settings.nats_url, events)
    await eventually(lambda: _all_posted(ledger, customers, len(events)), timeout=60, interval=0.05)
    elapsed = time.monotonic() - started
    print(f"\nledger usage consumer: {len(events)} events in {elapsed:.2f}s = {len(events) / elapsed:,.0f}/s")
    for customer in customers[:5]:
        spent = sum(e.cost_nanos for e in events if e.customer_id == customer)
        assert await balance_of(ledger.ledger.pool, customer) == 10_000 * CENT - spent
