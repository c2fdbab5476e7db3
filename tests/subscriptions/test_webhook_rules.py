"""The ledger's subscription rules, driven by signed webhooks posted directly (so order, repeats
and timing are chosen by the test): order-independence, replays, periods and cap resets,
cancellation now or at the period end, soft-cap events once per period, the hot-state push."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ledger.support import publish, signed, usage_event
from subscriptions.support import PLUS_CAP, World
from support.servers import eventually
from tollgate_dodo.catalogue import Catalogue
from tollgate_hotstate.loader import load_customer

NOW = datetime.now(UTC)


def catalogue(world: World) -> Catalogue:
    found = Catalogue.load(world.settings.dodo_catalogue_file)
    assert found is not None
    return found


def product(world: World, plan: str) -> str:
    return next(p.product_id for p in catalogue(world).plans if p.plan == plan)


def subscription(world: World, customer: str, sub_id: str, *, plan: str = "plus", status: str = "active",
                 seats: int = 1, start: datetime = NOW - timedelta(hours=1), cancel: bool = False,
                 end: datetime | None = None) -> dict[str, Any]:
    addon = catalogue(world).seat_addon_id
    return {
        "payload_type": "Subscription", "subscription_id": sub_id, "product_id": product(world, plan),
        "status": status, "quantity": 1,
        "addons": [{"addon_id": addon, "quantity": seats - 1}] if plan == "team" and seats > 1 else [],
        "previous_billing_date": start.isoformat(),
        "next_billing_date": (end or start + timedelta(days=30)).isoformat(),
        "cancel_at_next_billing_date": cancel, "metadata": {"tollgate_customer_id": customer},
        "customer": {"customer_id": "cus_not_linked", "email": "x@example.com", "name": "X"},
    }


async def deliver(world: World, event_type: str, data: dict[str, Any], at: datetime,
                  webhook_id: str | None = None) -> str:
    event = {"business_id": "bus_test", "type": event_type, "timestamp": at.isoformat(), "data": data}
    body, headers = signed(json.dumps(event), webhook_id)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{world.ledger_url}/webhooks/dodo", content=body, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


async def test_older_events_and_replays_never_overwrite_newer_state(world: World) -> None:
    customer = await world.new_customer()
    sub = f"sub_{uuid.uuid4().hex[:12]}"
    t0 = datetime.now(UTC)
    assert await deliver(world, "subscription.active", subscription(world, customer, sub, plan="team", seats=3),
                         t0) == "applied"
    newest = f"msg_{uuid.uuid4().hex}"
    assert await deliver(world, "subscription.plan_changed",
                         subscription(world, customer, sub, plan="team", seats=5), t0 + timedelta(seconds=2),
                         webhook_id=newest) == "applied"
    version = (await world.wait_plan(customer, seats=5))["plan_v"]

    # A plan change emitted between the two, delivered last: older than what is applied.
    assert await deliver(world, "subscription.plan_changed",
                         subscription(world, customer, sub, plan="team", seats=4), t0 + timedelta(seconds=1)) \
        == "ignored"
    # The same webhook again (Dodo retries, the emulator's redeliver): the inbox drops it.
    assert await deliver(world, "subscription.plan_changed",
                         subscription(world, customer, sub, plan="team", seats=5), t0 + timedelta(seconds=2),
                         webhook_id=newest) == "duplicate"
    # A late subscription.active (the first event, retried after the others): ignored too.
    assert await deliver(world, "subscription.active", subscription(world, customer, sub, plan="team", seats=3),
                         t0) == "ignored"
    plan = await world.plan(customer)
    assert plan["seats"] == 5 and plan["plan_v"] == version
    changes = await world.events(customer, "subscription.changed")
    assert [c["seats"] for c in changes] == [3, 5]
    assert changes[-1]["_msg_id"] == f"subscription:{newest}"


async def test_a_new_period_resets_the_cap_and_an_older_renewal_changes_nothing(world: World) -> None:
    customer = await world.new_customer()
    sub = f"sub_{uuid.uuid4().hex[:12]}"
    first = NOW - timedelta(days=40)
    t0 = datetime.now(UTC)
    await deliver(world, "subscription.active", subscription(world, customer, sub, start=first), t0)
    plan = await world.wait_plan(customer, plan="plus")
    assert plan["period_start"] == first.isoformat().replace("+00:00", "Z")

    # Usage in the first period, past the cap: announced once.
    await publish(world.infra.nats_url, [usage_event(customer, 300_000, mode="subscription") for _ in range(3)])
    await world.wait_plan(customer, used_nanos=900_000, softcap_reached=True)
    await publish(world.infra.nats_url, [usage_event(customer, 300_000, mode="subscription")])
    await world.wait_plan(customer, used_nanos=1_200_000)

    # Renewed: Dodo's previous_billing_date moves on; a period never starts in the future, so a
    # billing date ahead of the clock (the emulator's renewals) starts the period at the event.
    ahead = datetime.now(UTC) + timedelta(days=10)
    await deliver(world, "subscription.renewed", subscription(world, customer, sub, start=ahead),
                  t0 + timedelta(seconds=2))
    renewed = await world.wait_plan(customer, used_nanos=0, softcap_reached=False)
    assert renewed["period_start"] < ahead.isoformat().replace("+00:00", "Z")
    # A renewal of an older period, delivered late, is older than the state: nothing changes.
    await deliver(world, "subscription.renewed", subscription(world, customer, sub, start=first + timedelta(days=30)),
                  t0 + timedelta(seconds=1))
    assert (await world.plan(customer))["period_start"] == renewed["period_start"]

    await publish(world.infra.nats_url, [usage_event(customer, 250_000, mode="subscription") for _ in range(2)])
    await world.wait_plan(customer, used_nanos=500_000, softcap_reached=True)
    softcaps = await eventually(lambda: _count(world, customer, "softcap.reached", 2))
    assert [s["used_nanos"] >= PLUS_CAP for s in softcaps] == [True, True]
    assert {s["_msg_id"] for s in softcaps} == {f"softcap:{customer}:{plan['period_start'].replace('Z', '+00:00')}",
                                                f"softcap:{customer}:{renewed['period_start'].replace('Z', '+00:00')}"}


async def test_cancellation_now_is_final_and_at_period_end_waits_for_the_end(world: World) -> None:
    customer = await world.new_customer()
    now_sub, later_sub = f"sub_{uuid.uuid4().hex[:12]}", f"sub_{uuid.uuid4().hex[:12]}"
    t0 = datetime.now(UTC)
    await deliver(world, "subscription.active", subscription(world, customer, now_sub), t0)
    await world.wait_plan(customer, plan="plus")
    await deliver(world, "subscription.cancelled", subscription(world, customer, now_sub, status="cancelled"),
                  t0 + timedelta(seconds=1))
    await world.wait_plan(customer, plan="free", status="cancelled")
    # Ended is final: neither a late nor a newer `active` about it brings the plan back.
    assert await deliver(world, "subscription.active", subscription(world, customer, now_sub), t0) == "ignored"
    assert await deliver(world, "subscription.active", subscription(world, customer, now_sub),
                         t0 + timedelta(seconds=5)) == "ignored"
    assert (await world.plan(customer))["plan"] == "free"

    # A new subscription, then cancelled at its period end (1.5 s from now): the plan stays
    # until then, and the ledger's sweep ends it even though no webhook says so.
    ends = datetime.now(UTC) + timedelta(seconds=1.5)
    await deliver(world, "subscription.active", subscription(world, customer, later_sub, end=ends),
                  t0 + timedelta(seconds=6))
    await world.wait_plan(customer, plan="plus", status="active")
    await deliver(world, "subscription.updated", subscription(world, customer, later_sub, cancel=True, end=ends),
                  t0 + timedelta(seconds=7))
    cancelling = await world.wait_plan(customer, plan="plus", status="cancelling")
    assert cancelling["cancel_at_period_end"] is True
    ended = await world.wait_plan(customer, plan="free")
    assert ended["subscription"]["ended_at"] is not None
    changes = await world.events(customer, "subscription.changed")
    assert changes[-1]["_msg_id"].startswith(f"subscription:period-end:{later_sub}:")


async def test_expired_events_for_unknown_products_and_customers(world: World) -> None:
    customer = await world.new_customer()
    sub = f"sub_{uuid.uuid4().hex[:12]}"
    t0 = datetime.now(UTC)
    await deliver(world, "subscription.active", subscription(world, customer, sub), t0)
    await world.wait_plan(customer, plan="plus")
    await deliver(world, "subscription.expired", subscription(world, customer, sub, status="expired"),
                  t0 + timedelta(seconds=1))
    await world.wait_plan(customer, plan="free", status="expired")

    not_a_plan = subscription(world, customer, f"sub_{uuid.uuid4().hex[:12]}") | {"product_id": "pdt_something_else"}
    assert await deliver(world, "subscription.active", not_a_plan, t0) == "ignored"
    stranger = subscription(world, customer, f"sub_{uuid.uuid4().hex[:12]}") | {"metadata": {}}
    assert await deliver(world, "subscription.active", stranger, t0) == "unmatched"


async def test_plan_changes_reach_a_loaded_hot_state(world: World) -> None:
    customer = await world.new_customer()
    await load_customer(world.ledger_server.server.config.app.state.ledger.pool,  # type: ignore[attr-defined]
                        world.hot, customer, 0, 0)
    before = await world.hot_fields(customer)
    assert before["plan"] == "" and before["cap"] == "-1"
    sub = f"sub_{uuid.uuid4().hex[:12]}"
    t0 = datetime.now(UTC)
    await deliver(world, "subscription.active", subscription(world, customer, sub, plan="team", seats=2), t0)
    hot = await world.wait_hot(customer, plan="team", cap=2 * 400_000)
    assert hot["plan_models"] == ",gpt-4o,gpt-4o-mini,o1," and hot["fallback"] == ",gpt-4o=gpt-4o-mini,o1=gpt-4o-mini,"
    await deliver(world, "subscription.on_hold", subscription(world, customer, sub, plan="team", status="on_hold"),
                  t0 + timedelta(seconds=1))
    hot = await world.wait_hot(customer, plan="free", cap=-1, plan_models="", free_models=",gpt-4o-mini,")
    assert int(hot["plan_v"]) == 2


async def _count(world: World, customer: str, kind: str, n: int) -> list[dict[str, Any]] | None:
    found = await world.events(customer, kind)
    return found if len(found) >= n else None
