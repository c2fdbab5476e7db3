"""Payments read API, refunds (full and partial) and disputes (driven by the control API)."""

from __future__ import annotations

import dodopayments
import httpx
import pytest
from dodo_emulator_kit import Receiver, World


def _paid_topup(world: World, price: int = 2000) -> tuple[str, str, str]:
    customer = world.customer()
    ce = world.entitlement()
    payment_id = world.buy(world.topup(ce.id, credits="20", price=price).product_id, customer.customer_id)["payment_id"]
    return customer.customer_id, ce.id, payment_id


def test_payment_list_filters_and_paging(world: World, client: dodopayments.DodoPayments,
                                         control: httpx.Client) -> None:
    customer_id, _, first = _paid_topup(world)
    other = world.customer(email="other@example.com")
    product = world.topup(world.entitlement().id)
    second = world.buy(product.product_id, other.customer_id)["payment_id"]
    failed_session = world.checkout(product.product_id, other.customer_id)
    control.post(f"/_emulator/checkouts/{failed_session.session_id}/decline").raise_for_status()

    assert [p.payment_id for p in client.payments.list(customer_id=customer_id).items] == [first]
    assert len(client.payments.list(status="failed").items) == 1
    assert [p.payment_id for p in client.payments.list(product_id=product.product_id, status="succeeded").items] == [
        second]
    assert len(client.payments.list(page_size=2, page_number=0).items) == 2
    assert len(client.payments.list(page_size=2, page_number=1).items) == 1


def test_full_refund(world: World, client: dodopayments.DodoPayments, receiver: Receiver) -> None:
    world.webhook(receiver.url)
    customer_id, ce_id, payment_id = _paid_topup(world)
    refund = client.refunds.create(payment_id=payment_id, reason="customer asked")
    assert refund.refund_id.startswith("ref_")
    assert (refund.amount, refund.is_partial, refund.status, refund.currency) == (2000, False, "succeeded", "USD")
    assert refund.customer.customer_id == customer_id

    payment = client.payments.retrieve(payment_id)
    assert payment.refund_status == "full"
    assert [r.refund_id for r in payment.refunds] == [refund.refund_id]
    [event] = receiver.wait_type("refund.succeeded")
    assert event.json["data"]["refund_id"] == refund.refund_id
    assert event.json["data"]["payload_type"] == "Refund"
    # Credits are left alone: Tollgate's own ledger claws back what a refund takes away.
    assert world.balance(ce_id, customer_id) == "20.00"

    with pytest.raises(dodopayments.BadRequestError) as exc:
        client.refunds.create(payment_id=payment_id)
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "PAYMENT_ALREADY_REFUNDED"


def test_partial_refunds_by_amount(world: World, client: dodopayments.DodoPayments) -> None:
    customer_id, _, payment_id = _paid_topup(world)
    product_id = client.payments.retrieve(payment_id).product_cart[0].product_id  # type: ignore[index]
    part = client.refunds.create(payment_id=payment_id, items=[{"item_id": product_id, "amount": 500}])
    assert (part.amount, part.is_partial) == (500, True)
    assert client.payments.retrieve(payment_id).refund_status == "partial"

    with pytest.raises(dodopayments.BadRequestError) as exc:
        client.refunds.create(payment_id=payment_id, items=[{"item_id": product_id, "amount": 1600}])
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "REFUND_AMOUNT_EXCEEDS_PAID_AMOUNT"

    rest = client.refunds.create(payment_id=payment_id)
    assert rest.amount == 1500
    assert client.payments.retrieve(payment_id).refund_status == "full"
    listed = client.refunds.list(customer_id=customer_id).items
    assert [r.refund_id for r in listed] == [rest.refund_id, part.refund_id]
    assert client.refunds.retrieve(part.refund_id).amount == 500


def test_dispute_opened_then_lost(world: World, client: dodopayments.DodoPayments, control: httpx.Client,
                                  receiver: Receiver) -> None:
    world.webhook(receiver.url)
    _, _, payment_id = _paid_topup(world)
    opened = control.post(f"/_emulator/payments/{payment_id}/dispute", json={"outcome": "opened"}).json()
    assert opened["dispute_status"] == "dispute_opened" and opened["amount"] == "2000"
    [event] = receiver.wait_type("dispute.opened")
    assert event.json["data"]["payment_id"] == payment_id
    assert event.json["data"]["payload_type"] == "Dispute"

    lost = control.post(f"/_emulator/payments/{payment_id}/dispute", json={"outcome": "lost"}).json()
    assert lost["dispute_id"] == opened["dispute_id"] and lost["dispute_status"] == "dispute_lost"
    receiver.wait_type("dispute.lost")
    payment = client.payments.retrieve(payment_id)
    assert [d.dispute_status for d in payment.disputes] == ["dispute_lost"]
    assert client.payments.list().items[0].dispute_status == "dispute_lost"
    assert client.disputes.retrieve(opened["dispute_id"]).customer.email == "ada@example.com"


def test_dispute_won_without_prior_open(world: World, control: httpx.Client, receiver: Receiver) -> None:
    world.webhook(receiver.url)
    _, _, payment_id = _paid_topup(world)
    won = control.post(f"/_emulator/payments/{payment_id}/dispute", json={"outcome": "won"})
    assert won.json()["dispute_status"] == "dispute_won"
    receiver.wait_type("dispute.won")
