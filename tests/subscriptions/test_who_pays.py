"""Which pays, for a customer with both a subscription and prepaid credits (docs/subscriptions.md):
1. an active paid plan that lists the model pays (credits untouched), past the cap with the
   fallback model;
2. otherwise credits (models the plan does not list; any model while the plan is on hold);
3. otherwise, on Free, the daily allowance;
4. otherwise 402."""

from __future__ import annotations

from decimal import Decimal

from subscriptions.support import PLUS_CAP, World
from support.servers import eventually
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


async def _wait_balance(world: World, customer: str, expected: int) -> None:
    async def posted() -> bool:
        return bool(await world.balance(customer) == expected)

    await eventually(posted, timeout=20)
