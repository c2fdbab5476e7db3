"""The transactional outbox: every event committed with its cause reaches the BILLING stream
exactly once in effect (republishing is absorbed by Nats-Msg-Id), with several relays at once,
and balance alerts fire once per threshold crossing."""

from __future__ import annotations

import asyncio
from collections import Counter

from ledger.support import CENT, PACK_5, RunningLedger, billing_events, payment_succeeded, usage_event
from support.servers import eventually
from tollgate_ledger.outbox import OutboxRelay
from tollgate_ledger.usage import post_usage


async def unpublished(ledger: RunningLedger) -> int:
    return int(await ledger.ledger.pool.fetchval("SELECT count(*) FROM ledger.outbox WHERE published_at IS NULL"))


async def test_republishing_after_a_crash_between_publish_and_mark_is_absorbed(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    for _ in range(3):
        await ledger.post_webhook(payment_succeeded(customer))
    pool = ledger.ledger.pool
    await eventually(lambda: _settled(ledger))
    first = await billing_events(ledger.settings.nats_url, customer)
    # The relay published, then "crashed" before marking: the rows look unpublished again.
    await pool.execute(
        "UPDATE ledger.outbox SET published_at = NULL WHERE msg_id IN (SELECT unnest($1::text[]))",
        [msg_id for _, _, msg_id in first],
    )
    await eventually(lambda: _settled(ledger))
    again = await billing_events(ledger.settings.nats_url, customer)
    assert len(again) == len(first) == 6  # 3 x (payment.succeeded + balance.updated)
    assert len({msg_id for _, _, msg_id in again}) == len(again)


async def _settled(ledger: RunningLedger) -> bool:
    return await unpublished(ledger) == 0


async def test_several_relays_publish_every_event_once(ledger: RunningLedger) -> None:
    customers = [await ledger.new_customer() for _ in range(4)]
    relay = ledger.ledger.relay
    assert relay is not None
    extra = [
        OutboxRelay(ledger.ledger.pool, lambda: ledger.ledger.js, batch_size=5, poll_interval_s=0.05, retention_days=7)
        for _ in range(2)
    ]
    for r in extra:
        await r.start()
    try:
        await asyncio.gather(*(
            ledger.post_webhook(payment_succeeded(c)) for c in customers for _ in range(5)
        ))
        await eventually(lambda: _settled(ledger))
    finally:
        for r in extra:
            await r.stop()
    for customer in customers:
        events = await billing_events(ledger.settings.nats_url, customer)
        counts = Counter(msg_id for _, _, msg_id in events)
        assert len(events) == 10 and set(counts.values()) == {1}


async def test_low_depleted_and_restored_fire_once_per_crossing(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    core = ledger.ledger
    await ledger.post_webhook(payment_succeeded(customer, packs=[(PACK_5, 1)]))  # 500 credits, threshold 100

    async def spend(*cents: int) -> None:
        for amount in cents:
            await post_usage(core, [usage_event(customer, amount * CENT)])

    await spend(350)          # 150 left: above the threshold, quiet
    await spend(60, 10, 20)   # 90 -> low once; 80, 60 stay quiet
    await spend(100, 5)       # -40 -> depleted once; -45 quiet
    await ledger.post_webhook(payment_succeeded(customer, packs=[(PACK_5, 1)]))  # 455: restored
    await spend(400)          # 55 -> low again: a new crossing
    await spend(1)            # quiet

    def alerts(events: list[tuple[str, dict[str, object], str]]) -> list[tuple[str, int]]:
        return [
            (subject.split(".")[2], int(str(payload["balance_nanos"])) // CENT)
            for subject, payload, _ in events
            if subject.split(".")[1] == "balance" and subject.split(".")[2] != "updated"
        ]

    async def all_alerts() -> list[tuple[str, int]] | None:
        found = alerts(await billing_events(ledger.settings.nats_url, customer))
        return found if len(found) >= 4 else None

    found = await eventually(all_alerts)
    assert found == [("low", 90), ("depleted", -40), ("restored", 455), ("low", 55)]
    state = await core.pool.fetchval("SELECT alert_state FROM ledger.accounts WHERE customer_id = $1", customer)
    assert state == "low"


async def test_explicit_threshold_replaces_the_default_share(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    async with ledger.admin() as admin:
        await admin.post(f"/customers/{customer}/grants", json={
            "amount_cents": 1000, "reason": "welcome credits", "idempotency_key": f"w-{customer}",
        })
        response = await admin.put(f"/customers/{customer}/low-threshold", json={"threshold_nanos": 900 * CENT})
        assert response.status_code == 200
        assert response.json()["low_threshold_nanos"] == 900 * CENT
    await post_usage(ledger.ledger, [usage_event(customer, 150 * CENT)])  # 850 < 900 -> low

    async def low() -> bool:
        return any(s.startswith("billing.balance.low") for s, _, _ in await billing_events(
            ledger.settings.nats_url, customer))

    await eventually(low)
