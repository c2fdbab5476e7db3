"""Products (one-time, recurring, usage-based with credit-linked meters) and add-ons."""

from __future__ import annotations

import dodopayments
import pytest
from dodo_emulator_kit import MONTHLY, World


def test_one_time_product_with_attached_credits(world: World, client: dodopayments.DodoPayments) -> None:
    ce = world.entitlement()
    product = world.topup(ce.id, credits="20", low_balance_threshold_percent=10)
    assert product.product_id.startswith("pdt_")
    assert product.is_recurring is False
    assert product.price.type == "one_time_price" and product.price.price == 2000
    [mapping] = product.credit_entitlements
    assert mapping.credit_entitlement_id == ce.id
    assert (mapping.credits_amount, mapping.credit_entitlement_name, mapping.credit_entitlement_unit) == (
        "20.00", "USD credits", "USD")
    assert mapping.low_balance_threshold_percent == 10
    assert mapping.overage_behavior == "forgive_at_reset"
    assert client.products.retrieve(product.product_id).credit_entitlements[0].id == mapping.id


def test_usage_based_price_links_meter_to_credits(world: World, client: dodopayments.DodoPayments) -> None:
    ce = world.entitlement()
    meter = world.meter()
    product = world.usage_product(meter.id, ce.id, "1000")
    assert product.is_recurring is True
    assert product.price.type == "usage_based_price"
    [m] = product.price.meters or []
    assert (m.meter_id, m.credit_entitlement_id, m.meter_units_per_credit) == (meter.id, ce.id, "1000")
    assert (m.name, m.measurement_unit) == ("LLM cost", "micro-USD")  # echoed from the meter


def test_meter_link_needs_units_per_credit(world: World, client: dodopayments.DodoPayments) -> None:
    ce = world.entitlement()
    meter = world.meter()
    with pytest.raises(dodopayments.UnprocessableEntityError):
        client.products.create(
            name="bad", tax_category="saas",
            price={"type": "usage_based_price", "fixed_price": 0, "currency": "USD", **MONTHLY,
                   "meters": [{"meter_id": meter.id, "credit_entitlement_id": ce.id}]},
        )
    with pytest.raises(dodopayments.NotFoundError):
        world.topup("cde_unknown")


def test_update_list_archive_unarchive(world: World, client: dodopayments.DodoPayments) -> None:
    one_time = world.topup(world.entitlement().id)
    plan = world.plan(price=1500)
    assert client.products.update(plan.product_id, name="Pro Plus", description="more") is None
    assert client.products.retrieve(plan.product_id).name == "Pro Plus"

    listed = client.products.list().items
    assert [p.product_id for p in listed] == [plan.product_id, one_time.product_id]
    assert listed[0].price == 1500 and listed[0].currency == "USD" and listed[0].is_recurring
    assert listed[0].price_detail is not None and listed[0].price_detail.type == "recurring_price"
    assert [p.product_id for p in client.products.list(recurring=False).items] == [one_time.product_id]

    client.products.archive(plan.product_id)
    assert [p.product_id for p in client.products.list().items] == [one_time.product_id]
    assert [p.product_id for p in client.products.list(archived=True).items] == [plan.product_id]
    client.products.unarchive(plan.product_id)
    assert len(client.products.list().items) == 2


def test_addons_crud(client: dodopayments.DodoPayments) -> None:
    seat = client.addons.create(currency="USD", name="Seat", price=500, tax_category="saas")
    assert seat.price == 500 and seat.currency == "USD"
    updated = client.addons.update(seat.id, price=600, description="one more teammate")
    assert (updated.price, updated.description) == (600, "one more teammate")
    assert client.addons.retrieve(seat.id).price == 600
    assert [a.id for a in client.addons.list().items] == [seat.id]
    client.addons.delete(seat.id)
    assert client.addons.list().items == []
    assert [a.id for a in client.addons.list(archived=True).items] == [seat.id]
    client.addons.unarchive(seat.id)
    assert [a.id for a in client.addons.list().items] == [seat.id]
