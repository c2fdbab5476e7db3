"""Which pays, for a customer with both a subscription and prepaid credits (docs/subscriptions.md):
1. an active paid plan that lists the model pays (credits untouched), past the cap with the
   fallback model;
2. otherwise credits (models the plan does not list; any model while the plan is on hold);
3. otherwise, on Free, the daily allowance;
4. otherwise 402."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from subscriptions.support import FREE_DAILY_CAP, PLUS_CAP, World
from support.servers import eventually
from tollgate_contracts.events import UsageRecorded
from tollgate_hotstate.keys import CustomerKeys
from tollgate_money import NANOS_PER_USD


def charged(reply_cost: str | None) -> int:
    assert reply_cost is not None
    return int(Decimal(reply_cost) * NANOS_PER_USD)


async def test_plan_first_then_credits_and_on_hold_falls_back_to_credits(world: World) -> None:
    customer = await world.new_customer()
    await world.grant(customer, 100)  # $1.00 of credits
    subscription = await world.subscribe(customer, "plus")
    key = await world.issue_key(customer)
    funded = await world.balance(customer)

    # 1. The plan pays for its models, under and over the cap; credits stay as they were.
    used = 0
    while used < PLUS_CAP:
        reply = await world.chat(key, "gpt-4o")
        assert reply.mode == "subscription" and reply.headers["x-tollgate-cost-usd"] == "0.00"
        used += reply.list_price(world.book)
        await world.wait_hot(customer, pused=used)
    over = await world.chat(key, "gpt-4o")
    assert over.mode == "subscription" and over.downgraded_from == "gpt-4o"
    used += over.list_price(world.book)

    # 2. A model the plan does not list is paid by credits, exactly what the gateway charged.
    embedding = await world.embed(key)
    assert embedding.status == 200 and embedding.mode == "credits"
    embedding_cost = charged(embedding.headers.get("x-tollgate-cost-usd"))
    assert embedding_cost > 0
    await world.wait_plan(customer, used_nanos=used)
    assert await world.balance(customer) == funded - embedding_cost
    assert [e["model"] for e in await world.usage_entries(customer)] == ["text-embedding-3-small"]

    # On hold (a failed renewal) the plan stops paying: credits pay, no downgrade, any model.
    await world.control("POST", f"/subscriptions/{subscription}/fail-renewal")
    await world.wait_plan(customer, plan="free", status="on_hold")
    await world.wait_hot(customer, plan="free")
    held = await world.chat(key, "gpt-4o")
    assert held.status == 200 and held.mode == "credits" and held.model == "gpt-4o"
    assert held.downgraded_from is None
    # Free's models are paid by credits first too: the allowance is for when credits run out.
    mini = await world.chat(key, "gpt-4o-mini")
    assert mini.mode == "credits"
    spent = charged(held.headers.get("x-tollgate-cost-usd")) + charged(mini.headers.get("x-tollgate-cost-usd"))
    await _wait_balance(world, customer, funded - embedding_cost - spent)

    # Paid again (the renewal goes through): a new period, the plan pays again, gpt-4o is back.
    await world.control("POST", f"/subscriptions/{subscription}/renew")
    await world.wait_plan(customer, plan="plus", status="active", used_nanos=0)
    await world.wait_hot(customer, plan="plus", pused=0)
    back = await world.chat(key, "gpt-4o")
    assert back.mode == "subscription" and back.model == "gpt-4o" and back.downgraded_from is None
    assert await world.balance(customer) == funded - embedding_cost - spent


async def test_free_allowance_after_credits_run_out(world: World) -> None:
    customer = await world.new_customer()
    key = await world.issue_key(customer)
    # A new customer has no plan: credits only, so nothing runs without them.
    assert (await world.plan(customer))["plan"] == ""
    assert (await world.chat(key, "gpt-4o-mini")).status == 402
    # An operator puts the customer on Free: gpt-4o-mini within the daily allowance.
    await world.call("PUT", f"/customers/{customer}/plan", json={"plan": "free"})
    await world.wait_hot(customer, plan="free")
    reply = await world.chat(key, "gpt-4o-mini")
    assert reply.status == 200 and reply.mode == "free"
    assert (await world.chat(key, "gpt-4o")).status == 402
    # Enterprise by contract: no cap, nothing downgraded.
    await world.call("PUT", f"/customers/{customer}/plan", json={"plan": "enterprise", "seats": 5})
    await world.wait_hot(customer, plan="enterprise", cap=-1)
    big = await world.chat(key, "gpt-4o")
    assert big.mode == "subscription" and big.model == "gpt-4o"
    # Back to following Dodo: never subscribed there, so credits only again.
    cleared = await world.call("PUT", f"/customers/{customer}/plan", json={"plan": None})
    assert cleared["plan"] == "" and cleared["source"] == "none"


async def test_concurrent_free_calls_never_exceed_the_daily_allowance(world: World) -> None:
    """The allowance is held against like credits: a burst of calls cannot all see it unused."""
    customer = await world.new_customer()
    key = await world.issue_key(customer)
    await world.call("PUT", f"/customers/{customer}/plan", json={"plan": "free"})
    await world.wait_plan(customer, plan="free")  # the gateway loads it at the first call
    replies = await asyncio.gather(*(world.chat(key, "gpt-4o-mini") for _ in range(30)))
    served = [r for r in replies if r.status == 200]
    assert served and all(r.mode == "free" for r in served)
    assert {r.status for r in replies} == {200, 402}
    refused = next(r for r in replies if r.status == 402)
    assert refused.error_code == "insufficient_quota"
    assert "of today's allowance left" in refused.body["error"]["message"]
    used = sum(r.list_price(world.book) for r in served)
    assert used <= FREE_DAILY_CAP
    # Every hold went back: what is left of the day is the allowance minus what was used.
    await world.wait_hot(customer, dused=used, dheld=0)


async def test_past_the_cap_a_key_kept_off_the_fallback_model_is_refused_clearly(world: World) -> None:
    customer = await world.new_customer()
    await world.grant(customer, 100)
    await world.subscribe(customer, "plus")
    issued = await world.call("POST", f"/customers/{customer}/keys", expect=201,
                              json={"name": "gpt-4o only", "models": ["gpt-4o"]})
    key = str(issued["key"])
    funded = await world.balance(customer)
    used = 0
    while used < PLUS_CAP:
        reply = await world.chat(key, "gpt-4o")
        assert reply.status == 200 and reply.mode == "subscription" and reply.model == "gpt-4o"
        used += reply.list_price(world.book)
        await world.wait_hot(customer, pused=used)
    refused = await world.chat(key, "gpt-4o")
    assert refused.status == 403 and refused.error_code == "fallback_model_not_allowed"
    assert "gpt-4o-mini" in refused.body["error"]["message"]
    assert await world.balance(customer) == funded  # and credits were not charged instead


async def test_plan_usage_settled_by_a_gateway_that_died_before_publishing_still_counts(world: World) -> None:
    """Settled plan usage waits in Redis until the ledger posts it, like credits usage: a gateway
    that dies between settling and publishing leaves it to another gateway to publish."""
    customer = await world.new_customer()
    await world.subscribe(customer, "plus")
    key = await world.issue_key(customer)
    first = await world.chat(key, "gpt-4o")
    used = first.list_price(world.book)
    await world.wait_plan(customer, used_nanos=used)
    # What a gateway leaves behind when it dies right after settling a subscription call.
    lost = UsageRecorded(
        event_id="req_" + uuid.uuid4().hex, customer_id=customer, key_id="key_lost", endpoint="/v1/chat/completions",
        model="gpt-4o", requested_model="gpt-4o", input_tokens=20, output_tokens=10, cost_nanos=0,
        list_price_nanos=150_000, price_book_version=world.book.version, billing_mode="subscription", plan="plus",
        started_at=datetime.now(UTC), occurred_at=datetime.now(UTC),  # within the period
    )
    await world.hot.settle(customer, lost.event_id, cost=0, mode="subscription", list_price=150_000,
                           tokens_refund=0, event_json=lost.model_dump_json().encode())
    await world.wait_plan(customer, used_nanos=used + 150_000)
    # Posted: the gateway forgets it, and nothing was taken from credits.
    await eventually(lambda: _hlen(world, CustomerKeys(customer).unposted_ev, 0))
    assert await world.balance(customer) == 0


async def _hlen(world: World, key: str, expected: int) -> bool:
    return bool(await world.hot.redis.hlen(key) == expected)


async def _wait_balance(world: World, customer: str, expected: int) -> None:
    async def posted() -> bool:
        return bool(await world.balance(customer) == expected)

    await eventually(posted, timeout=20)
