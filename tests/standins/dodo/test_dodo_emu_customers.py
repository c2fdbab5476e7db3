"""Customers: create, retrieve, update, 0-based page-number listing, credit entitlements."""

from __future__ import annotations

import dodopayments
from dodo_emulator_kit import World


def test_customer_lifecycle(client: dodopayments.DodoPayments) -> None:
    created = client.customers.create(email="ada@example.com", name="Ada", metadata={"tier": "gold"})
    assert created.customer_id.startswith("cus_")
    assert created.metadata == {"tier": "gold"}

    fetched = client.customers.retrieve(created.customer_id)
    assert fetched.email == "ada@example.com"

    updated = client.customers.update(created.customer_id, name="Ada Lovelace", phone_number="+4400")
    assert (updated.name, updated.phone_number, updated.email) == ("Ada Lovelace", "+4400", "ada@example.com")
    assert client.customers.retrieve(created.customer_id).name == "Ada Lovelace"


def test_same_email_returns_the_existing_customer(client: dodopayments.DodoPayments) -> None:
    first = client.customers.create(email="Bob@Example.com", name="Bob")
    again = client.customers.create(email="bob@example.com", name="Robert")
    assert again.customer_id == first.customer_id


def test_list_pages_are_zero_based_newest_first(client: dodopayments.DodoPayments) -> None:
    ids = [client.customers.create(email=f"u{i}@example.com", name=f"User {i}").customer_id for i in range(5)]
    page0 = client.customers.list(page_number=0, page_size=2).items
    page1 = client.customers.list(page_number=1, page_size=2).items
    page2 = client.customers.list(page_number=2, page_size=2).items
    assert [c.customer_id for c in page0 + page1 + page2] == list(reversed(ids))
    assert client.customers.list(page_number=3, page_size=2).items == []
    assert len(client.customers.list().items) == 5  # default page size 10

    by_email = client.customers.list(email="u3@example.com").items
    assert [c.customer_id for c in by_email] == [ids[3]]
    assert len(client.customers.list(name="USER").items) == 5


async def test_async_client_works_too(aclient: dodopayments.AsyncDodoPayments) -> None:
    created = await aclient.customers.create(email="async@example.com", name="Async")
    fetched = await aclient.customers.retrieve(created.customer_id)
    assert fetched.name == "Async"


def test_customer_credit_entitlements_lists_balances(world: World, client: dodopayments.DodoPayments) -> None:
    customer = world.customer()
    assert client.customers.list_credit_entitlements(customer.customer_id).items == []
    ce = world.entitlement()
    world.buy(world.topup(ce.id, credits="12.5").product_id, customer.customer_id)
    items = client.customers.list_credit_entitlements(customer.customer_id).items
    assert [(i.credit_entitlement_id, i.balance, i.overage, i.unit) for i in items] == [(ce.id, "12.50", "0.00", "USD")]
