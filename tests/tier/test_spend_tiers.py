"""Lifetime net spend moves a customer between tiers: promotion on payment, demotion on refunds
and lost disputes, exactly one tier.changed per change, and the gateway's Redis limits follow."""

from __future__ import annotations

import uuid

from support.servers import eventually
from tier.helpers import TierService, new_customer
from tollgate_contracts.events import DisputeLost

NANOS_PER_USD = 1_000_000_000


async def test_payment_of_60_dollars_promotes_to_tier_2_and_a_refund_below_50_demotes(tier: TierService) -> None:
    customer = new_customer()
    await tier.load_hot_state(customer, rpm=3)

    payment = await tier.pay(customer, 60_00)

    snap = await eventually(lambda: _with(tier, customer, rpm="10"))
    assert snap["tier"] == "tier-2" and snap["tpm"] == "200000"
    events = await eventually(lambda: tier.tier_events(customer))
    assert [(e.old_tier, e.new_tier, e.cause, e.rpm) for e in events] == [("tier-1", "tier-2", payment.payment_id, 10)]
    assert events[0].lifetime_spend_nanos == 60 * NANOS_PER_USD and not events[0].pinned

    refund = await tier.refund(customer, payment.payment_id, 15_00)

    snap = await eventually(lambda: _with(tier, customer, rpm="3"))
    assert snap["tier"] == "tier-1"
    events = await eventually(lambda: _count(tier, customer, 2))
    assert (events[1].old_tier, events[1].new_tier, events[1].cause) == ("tier-2", "tier-1", refund.refund_id)
    assert events[1].lifetime_spend_nanos == 45 * NANOS_PER_USD
    assert events[1].version is not None and events[0].version is not None
    assert events[1].version > events[0].version


async def test_a_lost_dispute_demotes_like_a_refund(tier: TierService) -> None:
    customer = new_customer()
    payment = await tier.pay(customer, 300_00)
    await eventually(lambda: _view(tier, customer, "tier-3"))
    await tier.publish(DisputeLost(dispute_id=f"dp_{uuid.uuid4().hex[:10]}", payment_id=payment.payment_id,
                                   customer_id=customer, amount_cents=100_00))
    row = await eventually(lambda: _view(tier, customer, "tier-2"))
    assert row["lifetime_spend_nanos"] == 200 * NANOS_PER_USD and row["rpm"] == 10


async def test_replayed_events_change_nothing(tier: TierService) -> None:
    customer = new_customer()
    await tier.load_hot_state(customer)
    payment = await tier.pay(customer, 60_00)
    refund = await tier.refund(customer, payment.payment_id, 20_00)
    await tier.settled()
    assert [e.new_tier for e in await tier.tier_events(customer)] == ["tier-2", "tier-1"]
    before = await tier.hot.snapshot(customer)

    # the ledger's relay re-sends after the JetStream dedup window (new Nats-Msg-Id, same ids)
    await tier.publish(payment, msg_id=f"replay-{uuid.uuid4()}")
    await tier.publish(refund, msg_id=f"replay-{uuid.uuid4()}")
    await tier.publish(payment, msg_id=f"replay-{uuid.uuid4()}")
    await tier.settled()

    assert [e.new_tier for e in await tier.tier_events(customer)] == ["tier-2", "tier-1"]
    row = await tier.hot_limits(customer)
    assert row is not None and row["lifetime_spend_nanos"] == 40 * NANOS_PER_USD and row["tier"] == "tier-1"
    after = await tier.hot.snapshot(customer)
    assert (after["tier"], after["rpm"], after["limits_v"]) == (before["tier"], before["rpm"], before["limits_v"])


async def test_small_payments_add_up_and_the_view_tells_the_next_tier(tier: TierService) -> None:
    customer = new_customer()
    for _ in range(3):
        await tier.pay(customer, 20_00)
    row = await eventually(lambda: _view(tier, customer, "tier-2"))
    assert row["lifetime_spend_nanos"] == 60 * NANOS_PER_USD
    assert (row["rpm"], row["tpm"]) == (10, 200_000)
    assert (row["next_tier"], row["next_tier_min_spend_nanos"]) == ("tier-3", 250 * NANOS_PER_USD)
    await tier.settled()
    assert [(e.old_tier, e.new_tier) for e in await tier.tier_events(customer)] == [("tier-1", "tier-2")]


async def test_a_customer_without_hot_state_is_left_to_the_gateways_loader(tier: TierService) -> None:
    customer = new_customer()
    await tier.pay(customer, 75_00)
    await eventually(lambda: _view(tier, customer, "tier-2"))
    await tier.settled()
    assert await tier.hot.snapshot(customer) == {}  # never created half a hot state
    assert len(await tier.tier_events(customer)) == 1


async def test_other_billing_events_are_ignored_and_broken_ones_dead_lettered(tier: TierService) -> None:
    customer = new_customer()
    await tier.js.publish(f"billing.balance.updated.{customer}", b'{"not": "a spend event"}')
    subject = f"billing.payment.succeeded.{customer}"
    await tier.js.publish(subject, b'{"payment_id": "pay_x", "amount_cents": "lots"}')
    await tier.settled()

    assert await tier.hot_limits(customer) is None
    letters = await eventually(lambda: tier.stream_bodies("DEADLETTER", f"deadletter.tier.{subject}"))
    assert b"pay_x" in letters[0] and b"schema" in letters[0]


async def _with(tier: TierService, customer: str, **fields: str) -> dict[str, str] | None:
    snap = await tier.hot.snapshot(customer)
    return snap if all(snap.get(k) == v for k, v in fields.items()) else None


async def _view(tier: TierService, customer: str, name: str) -> object:
    row = await tier.hot_limits(customer)
    return row if row is not None and row["tier"] == name else None


async def _count(tier: TierService, customer: str, n: int) -> object:
    events = await tier.tier_events(customer)
    return events if len(events) >= n else None
