"""Acceptance, Plus: through the Dodo emulator and a real gateway process. Under the soft cap a
subscriber gets gpt-4o; past it gpt-4o-mini with `x-tollgate-downgraded-from: gpt-4o` (never a
refusal); `subscription.renewed` opens a new period and gpt-4o is back; a cancellation at the
period end keeps the plan until Dodo ends it, then the customer is on Free. softcap.reached is
published once per period, and subscription usage never touches credits."""

from __future__ import annotations

from subscriptions.support import FREE_DAILY_CAP, PLUS_CAP, World
from support.servers import eventually


async def use_until_downgraded(world: World, customer: str, key: str, used: int) -> int:
    """gpt-4o until the period's list-price usage reaches the cap, then one downgraded call.
    Checks each call against the cap; returns the period's usage afterwards."""
    for _ in range(20):
        reply = await world.chat(key, "gpt-4o")
        assert reply.status == 200, reply.body
        assert reply.mode == "subscription"
        if used < PLUS_CAP:
            assert reply.model == "gpt-4o" and reply.downgraded_from is None
            assert await world.upstream_model(reply) == "gpt-4o"
        else:
            assert reply.model == "gpt-4o-mini" and reply.downgraded_from == "gpt-4o"
            assert await world.upstream_model(reply) == "gpt-4o-mini"
            return int(used + reply.list_price(world.book))
        used += reply.list_price(world.book)
        await world.wait_hot(customer, pused=used)  # the gateway has counted it before the next call
    raise AssertionError("the soft cap was never reached")


async def test_plus_soft_cap_renewal_and_cancellation(world: World) -> None:
    customer = await world.new_customer()
    subscription = await world.subscribe(customer, "plus")
    key = await world.issue_key(customer)
    plan = await world.plan(customer)
    assert plan["cap_nanos"] == PLUS_CAP and plan["fallback"] == {"gpt-4o": "gpt-4o-mini", "o1": "gpt-4o-mini"}
    first_period = plan["period_start"]

    used = await use_until_downgraded(world, customer, key, 0)
    again = await world.chat(key, "gpt-4o")  # still served, still the smaller model
    assert again.status == 200 and again.downgraded_from == "gpt-4o"
    used += again.list_price(world.book)
    headers, models, billing = await world.stream(key, "gpt-4o")  # streams too, and say so up front
    assert headers["x-tollgate-downgraded-from"] == "gpt-4o" and set(models) == {"gpt-4o-mini"}
    assert billing["billing_mode"] == "subscription" and billing["cost_usd"] == "0.00"
    used = int(await eventually(lambda: _pused_above(world, customer, used)))

    # The ledger posts the usage; the period's total crosses the cap once, announced once.
    await world.wait_plan(customer, used_nanos=used, softcap_reached=True)
    softcaps = await eventually(lambda: _at_least(world.events(customer, "softcap.reached"), 1))
    assert len(softcaps) == 1
    assert softcaps[0]["period_start"] == first_period
    assert softcaps[0]["cap_nanos"] == PLUS_CAP and softcaps[0]["fallback_model"] == "gpt-4o-mini"
    assert softcaps[0]["_msg_id"].startswith(f"softcap:{customer}:")

    # Renewal: a new period, the cap starts over, gpt-4o is back.
    await world.control("POST", f"/subscriptions/{subscription}/renew")
    renewed = await eventually(lambda: _plan_with_new_period(world, customer, first_period))
    assert renewed["used_nanos"] == 0 and renewed["softcap_reached"] is False
    await world.wait_hot(customer, pused=0)
    reply = await world.chat(key, "gpt-4o")
    assert reply.model == "gpt-4o" and reply.downgraded_from is None
    used = reply.list_price(world.book)
    await world.wait_hot(customer, pused=used)
    used = await use_until_downgraded(world, customer, key, used)
    softcaps = await eventually(lambda: _at_least(world.events(customer, "softcap.reached"), 2))
    assert len(softcaps) == 2 and len({s["period_start"] for s in softcaps}) == 2  # one per period

    # Cancel at the period end: the plan keeps paying until Dodo ends it.
    cancel = await world.call("POST", f"/customers/{customer}/subscription/cancel", expect=202,
                              json={"at_period_end": True})
    assert cancel["subscription_id"] == subscription
    await world.wait_plan(customer, plan="plus", status="cancelling", cancel_at_period_end=True)
    assert (await world.chat(key, "gpt-4o")).mode == "subscription"

    await world.control("POST", f"/subscriptions/{subscription}/expire")  # the period ends: cancelled
    free = await world.wait_plan(customer, plan="free", status="cancelled")
    assert free["cap_nanos"] is None and free["daily_cap_nanos"] == FREE_DAILY_CAP
    await world.wait_hot(customer, plan="free")

    # Free: gpt-4o-mini within the daily allowance; gpt-4o is not in Free and there are no credits.
    mini = await world.chat(key, "gpt-4o-mini")
    assert mini.status == 200 and mini.mode == "free" and mini.model == "gpt-4o-mini"
    refused = await world.chat(key, "gpt-4o")
    assert refused.status == 402 and refused.error_code == "insufficient_quota"
    # The allowance is a hard daily cap: requests stop before it is exceeded.
    spent = mini.list_price(world.book)
    for _ in range(30):
        await world.wait_hot(customer, dused=spent)
        reply = await world.chat(key, "gpt-4o-mini")
        if reply.status == 402:
            break
        assert reply.mode == "free"
        spent += reply.list_price(world.book)
    else:
        raise AssertionError("the Free allowance never ran out")
    assert 0 < spent <= FREE_DAILY_CAP

    # Subscription and Free usage never moved credits.
    assert await world.balance(customer) == 0
    assert await world.usage_entries(customer) == []
    changes = [(e["plan"], e["status"]) for e in await world.events(customer, "subscription.changed")]
    assert changes[0] == ("plus", "active") and ("plus", "cancelling") in changes
    assert changes[-1] == ("free", "cancelled")


async def _at_least(events: object, n: int) -> list[dict[str, object]] | None:
    found = await events  # type: ignore[misc]
    return found if len(found) >= n else None


async def _plan_with_new_period(world: World, customer: str, old_start: str) -> dict[str, object] | None:
    plan = await world.plan(customer)
    return plan if plan["period_start"] != old_start and plan["plan"] == "plus" else None


async def _pused_above(world: World, customer: str, before: int) -> int | None:
    pused = int((await world.hot_fields(customer)).get("pused", 0))
    return pused if pused > before else None
