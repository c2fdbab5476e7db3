"""Subscriptions: updates, cancellation, renewals, plan changes (seats), on-demand charges."""

from __future__ import annotations

from typing import Any

import dodopayments
import httpx
import pytest
from dodo_emulator_kit import WEBHOOK_SECRET, Receiver, World


def _subscribe(world: World, client: dodopayments.DodoPayments, **plan: Any) -> tuple[Any, Any, str]:
    customer = world.customer()
    product = world.plan(**plan)
    result = world.buy(product.product_id, customer.customer_id)
    return customer, product, result["subscription_id"]


def test_retrieve_list_and_update(world: World, client: dodopayments.DodoPayments) -> None:
    customer, _, sub_id = _subscribe(world, client)
    listed = client.subscriptions.list(customer_id=customer.customer_id).items
    assert [s.subscription_id for s in listed] == [sub_id]
    assert listed[0].product_name == "Pro"
    assert client.subscriptions.list(status="cancelled").items == []

    updated = client.subscriptions.update(sub_id, metadata={"team": "core"})
    assert updated.metadata == {"team": "core"}
    assert client.subscriptions.retrieve(sub_id).metadata == {"team": "core"}


def test_cancel_immediately(world: World, client: dodopayments.DodoPayments, receiver: Receiver) -> None:
    world.webhook(receiver.url)
    _, _, sub_id = _subscribe(world, client)
    cancelled = client.subscriptions.update(sub_id, status="cancelled", cancellation_feedback="too_expensive")
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert cancelled.cancellation_feedback == "too_expensive"
    [event] = receiver.wait_type("subscription.cancelled")
    assert event.json["data"]["subscription_id"] == sub_id
    assert event.json["data"]["payload_type"] == "Subscription"


def test_cancel_at_period_end_then_expire(world: World, client: dodopayments.DodoPayments,
                                          control: httpx.Client, receiver: Receiver) -> None:
    world.webhook(receiver.url)
    _, _, sub_id = _subscribe(world, client)
    sub = client.subscriptions.update(sub_id, cancel_at_next_billing_date=True)
    assert sub.cancel_at_next_billing_date is True and sub.status == "active"
    renew = control.post(f"/_emulator/subscriptions/{sub_id}/renew")
    assert renew.status_code == 409

    ended = control.post(f"/_emulator/subscriptions/{sub_id}/expire").json()
    assert ended["event"] == "subscription.cancelled" and ended["status"] == "cancelled"
    final = client.subscriptions.retrieve(sub_id)
    assert final.status == "cancelled" and final.cancelled_at == sub.next_billing_date
    receiver.wait_type("subscription.cancelled")


def test_expire_without_cancel_flag_is_expired(world: World, client: dodopayments.DodoPayments,
                                               control: httpx.Client) -> None:
    _, _, sub_id = _subscribe(world, client)
    assert control.post(f"/_emulator/subscriptions/{sub_id}/expire").json()["event"] == "subscription.expired"
    assert client.subscriptions.retrieve(sub_id).status == "expired"


def test_renewal_advances_period_charges_and_regrants_credits(
    world: World, client: dodopayments.DodoPayments, control: httpx.Client, receiver: Receiver
) -> None:
    world.webhook(receiver.url)
    ce = world.entitlement()
    customer, _, sub_id = _subscribe(
        world, client, price=1000, credits=[{"credit_entitlement_id": ce.id, "credits_amount": "100"}]
    )
    before = client.subscriptions.retrieve(sub_id)
    client.credit_entitlements.balances.create_ledger_entry(
        customer.customer_id, credit_entitlement_id=ce.id, amount="30", entry_type="debit"
    )
    assert world.balance(ce.id, customer.customer_id) == "70.00"

    result = control.post(f"/_emulator/subscriptions/{sub_id}/renew").json()
    after = client.subscriptions.retrieve(sub_id)
    assert after.previous_billing_date == before.next_billing_date
    assert after.next_billing_date > before.next_billing_date
    renewal = client.payments.retrieve(result["payment_id"])
    assert (renewal.charge_type, renewal.total_amount, renewal.subscription_id) == ("renewal", 1000, sub_id)
    # Without rollover, the unused 70 are forfeited and a fresh 100 is granted.
    assert world.balance(ce.id, customer.customer_id) == "100.00"
    [usage] = client.subscriptions.retrieve_credit_usage(sub_id).items
    assert (usage.credit_entitlement_id, usage.balance, usage.overage, usage.limit_reached) == (
        ce.id, "100.00", "0.00", False)

    [renewed] = receiver.wait_type("subscription.renewed")
    assert renewed.json["data"]["payment_id"] == result["payment_id"]
    unwrapped = client.webhooks.unwrap(renewed.body, headers=renewed.headers, key=WEBHOOK_SECRET)
    assert unwrapped.type == "subscription.renewed"
    receiver.wait_type("credit.expired")


def test_failed_renewal_puts_subscription_on_hold(world: World, client: dodopayments.DodoPayments,
                                                  control: httpx.Client, receiver: Receiver) -> None:
    world.webhook(receiver.url)
    _, _, sub_id = _subscribe(world, client)
    result = control.post(f"/_emulator/subscriptions/{sub_id}/fail-renewal").json()
    assert result["status"] == "on_hold" and result["payment_status"] == "failed"
    assert client.subscriptions.retrieve(sub_id).status == "on_hold"
    receiver.wait_type("subscription.on_hold")
    receiver.wait_type("payment.failed")
    # A later successful renewal brings it back.
    assert control.post(f"/_emulator/subscriptions/{sub_id}/renew").json()["status"] == "active"
    receiver.wait_type("subscription.active", count=2)


def test_change_seats_with_addons(world: World, client: dodopayments.DodoPayments, receiver: Receiver) -> None:
    world.webhook(receiver.url)
    seat = client.addons.create(currency="USD", name="Seat", price=500, tax_category="saas")
    customer = world.customer()
    plan = world.plan(price=2000, addons=[seat.id])
    sub_id = world.buy(plan.product_id, customer.customer_id,
                       addons=[{"addon_id": seat.id, "quantity": 2}])["subscription_id"]

    result = client.subscriptions.change_plan(
        sub_id, product_id=plan.product_id, quantity=1, proration_billing_mode="difference_immediately",
        addons=[{"addon_id": seat.id, "quantity": 5}],
    )
    sub = client.subscriptions.retrieve(sub_id)
    assert [(a.addon_id, a.quantity) for a in sub.addons] == [(seat.id, 5)]
    assert sub.recurring_pre_tax_amount == 2000 + 5 * 500
    assert result.payment_id is not None
    charge = client.payments.retrieve(result.payment_id)
    assert (charge.charge_type, charge.total_amount) == ("plan_change", 1500)
    [changed] = receiver.wait_type("subscription.plan_changed")
    assert changed.json["data"]["addons"] == [{"addon_id": seat.id, "quantity": 5}]

    # Dropping seats with do_not_bill charges nothing; add-ons in the call replace the set.
    result = client.subscriptions.change_plan(sub_id, product_id=plan.product_id, quantity=1,
                                              proration_billing_mode="do_not_bill")
    assert result.payment_id is None
    assert client.subscriptions.retrieve(sub_id).addons == []


def test_change_to_another_plan_grants_its_credits(world: World, client: dodopayments.DodoPayments) -> None:
    ce = world.entitlement()
    customer = world.customer()
    basic = world.plan(price=1000, name="Basic")
    pro = world.plan(price=3000, name="Pro", credits=[{"credit_entitlement_id": ce.id, "credits_amount": "40"}])
    sub_id = world.buy(basic.product_id, customer.customer_id)["subscription_id"]
    result = client.subscriptions.change_plan(sub_id, product_id=pro.product_id, quantity=1,
                                              proration_billing_mode="full_immediately")
    assert client.payments.retrieve(result.payment_id or "").total_amount == 3000
    assert client.subscriptions.retrieve(sub_id).product_id == pro.product_id
    assert world.balance(ce.id, customer.customer_id) == "40.00"


def test_on_demand_charge(world: World, client: dodopayments.DodoPayments, control: httpx.Client,
                          receiver: Receiver) -> None:
    world.webhook(receiver.url)
    customer = world.customer()
    plan = world.plan(price=0, name="Auto top-up mandate")
    session = client.checkout_sessions.create(
        product_cart=[{"product_id": plan.product_id, "quantity": 1}],
        customer={"customer_id": customer.customer_id},
        subscription_data={"on_demand": {"mandate_only": True}},
    )
    sub_id = world.pay(session.session_id)["subscription_id"]
    assert client.subscriptions.retrieve(sub_id).on_demand is True

    charged = client.subscriptions.charge(sub_id, product_price=2500, metadata={"reason": "auto_topup"})
    payment = client.payments.retrieve(charged.payment_id)
    assert (payment.status, payment.charge_type, payment.total_amount) == ("succeeded", "on_demand", 2500)
    assert payment.metadata == {"reason": "auto_topup"}

    control.put(f"/_emulator/subscriptions/{sub_id}/card", json={"decline": True}).raise_for_status()
    declined = client.subscriptions.charge(sub_id, product_price=2500)
    assert client.payments.retrieve(declined.payment_id).status == "failed"
    [failed] = receiver.wait_type("payment.failed")
    assert failed.json["data"]["charge_type"] == "on_demand"


def test_charge_needs_an_on_demand_subscription(world: World, client: dodopayments.DodoPayments) -> None:
    _, _, sub_id = _subscribe(world, client)
    with pytest.raises(dodopayments.BadRequestError) as exc:
        client.subscriptions.charge(sub_id, product_price=100)
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "SUBSCRIPTION_NOT_ON_DEMAND"


def test_plan_change_at_next_billing_date_waits_for_renewal(world: World, client: dodopayments.DodoPayments,
                                                             control: httpx.Client, receiver: Receiver) -> None:
    world.webhook(receiver.url, filter_types=["subscription.plan_changed"])
    customer = world.customer()
    basic = world.plan(price=1000, name="Basic")
    pro = world.plan(price=3000, name="Pro")
    sub_id = world.buy(basic.product_id, customer.customer_id)["subscription_id"]
    result = client.subscriptions.change_plan(sub_id, product_id=pro.product_id, quantity=2,
                                              proration_billing_mode="do_not_bill", effective_at="next_billing_date")
    assert result.payment_id is None
    pending = client.subscriptions.retrieve(sub_id)
    assert pending.product_id == basic.product_id
    assert pending.scheduled_change is not None and pending.scheduled_change.product_id == pro.product_id
    with pytest.raises(dodopayments.ConflictError):
        client.subscriptions.change_plan(sub_id, product_id=pro.product_id, quantity=1,
                                         proration_billing_mode="do_not_bill")

    renewal = control.post(f"/_emulator/subscriptions/{sub_id}/renew").json()
    after = client.subscriptions.retrieve(sub_id)
    assert (after.product_id, after.quantity, after.scheduled_change) == (pro.product_id, 2, None)
    assert client.payments.retrieve(renewal["payment_id"]).total_amount == 6000
    receiver.wait_type("subscription.plan_changed")
