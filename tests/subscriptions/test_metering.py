"""Subscribers' usage is still metered to Dodo, on the plan meters that no product links to the
credit entitlement: Dodo sees it, and deducts nothing from the customer's credits for it. Usage
paid by credits next to it is deducted exactly. (Metering's own mapping and ingest code, against
the emulator's real meters and deduction.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from subscriptions.support import World
from support.servers import eventually
from tollgate_contracts.events import UsageRecorded
from tollgate_dodo.catalogue import Catalogue
from tollgate_metering.ingest import Accepted, encode, ingest
from tollgate_metering.mapping import Mapper
from tollgate_money import NANOS_PER_CENT, TokenUsage


def usage(customer: str, dodo_customer: str, mode: str, cost: int, list_price: int) -> UsageRecorded:
    now = datetime.now(UTC)
    return UsageRecorded(
        event_id=f"req_{uuid.uuid4().hex}", customer_id=customer, dodo_customer_id=dodo_customer, key_id="key_x",
        endpoint="/v1/chat/completions", model="gpt-4o", requested_model="gpt-4o", input_tokens=1000,
        output_tokens=500, cost_nanos=cost, list_price_nanos=list_price, price_book_version="test",
        billing_mode=mode, plan="plus" if mode == "subscription" else None, started_at=now,  # type: ignore[arg-type]
    )


async def test_subscription_usage_is_metered_but_never_deducted_from_credits(world: World) -> None:
    customer = await world.new_customer()
    dodo_customer = (await world.call("GET", f"/customers/{customer}"))["dodo_customer_id"]
    await world.grant(customer, 100)
    catalogue = Catalogue.load(world.settings.dodo_catalogue_file)
    assert catalogue is not None
    async with world.sdk() as sdk:
        async def dodo_credits() -> Decimal:
            found = await sdk.credit_entitlements.balances.retrieve(
                dodo_customer, credit_entitlement_id=catalogue.credit_entitlement_id
            )
            return Decimal(found.balance)

        await eventually(lambda: _equals(dodo_credits(), Decimal(100)))  # the grant reached Dodo

        price = world.book.price("gpt-4o")
        assert price is not None
        cost = price.cost(TokenUsage(input_tokens=1000, output_tokens=500))
        mapper = Mapper(catalogue, world.book, "deadletter", 3300)
        events = []
        for mode, charged in (("subscription", 0), ("credits", cost)):
            record = usage(customer, dodo_customer, mode, charged, cost)
            events += mapper.map(record.model_dump_json().encode(), now=datetime.now(UTC)).events
        assert isinstance(await ingest(sdk, encode(events)), Accepted)
        await world.control("POST", "/deduct")

        # Only the credits usage was deducted, to the nano; the plan usage is visible in Dodo.
        assert await dodo_credits() == Decimal(100) - Decimal(cost) / NANOS_PER_CENT
        seen = [e.event_name async for e in sdk.usage_events.list(customer_id=dodo_customer)]
        assert sorted(n for n in seen if n.startswith("llm.subscription.")) == [
            "llm.subscription.input_tokens", "llm.subscription.output_tokens",
        ]


async def _equals(value: object, expected: Decimal) -> bool:
    return bool(await value == expected)  # type: ignore[misc]
