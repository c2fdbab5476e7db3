"""Checkout sessions: the hosted HTML page (Pay / Decline forms) and the test-control API."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import dodopayments
import httpx
import pytest
from dodo_emulator_kit import Receiver, World


def _form_action(html: str, label: str) -> str:
    match = re.search(rf'<form method="post" action="([^"]+)" aria-label="{label}">', html)
    assert match, f"no {label} form on the page"
    return match.group(1)


def test_pay_through_the_checkout_page(world: World, client: dodopayments.DodoPayments,
                                       receiver: Receiver) -> None:
    world.webhook(receiver.url)
    customer = world.customer()
    ce = world.entitlement()
    product = world.topup(ce.id, credits="20")
    session = world.checkout(product.product_id, customer.customer_id, return_url="https://shop.example/done?x=1",
                             metadata={"ledger_ref": "abc"})
    assert session.session_id.startswith("cks_")
    assert session.checkout_url is not None

    with httpx.Client() as browser:
        page = browser.get(session.checkout_url)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "Top-up" in page.text and "USD 20.00" in page.text
        assert '<button type="submit" class="pay" aria-label="Pay USD 20.00">Pay</button>' in page.text
        assert ">Decline</button>" in page.text
        base = f"{urlsplit(session.checkout_url).scheme}://{urlsplit(session.checkout_url).netloc}"
        paid = browser.post(base + _form_action(page.text, "Pay"))

    assert paid.status_code == 303
    target = urlsplit(paid.headers["location"])
    assert (target.netloc, target.path) == ("shop.example", "/done")
    query = parse_qs(target.query)
    assert query["x"] == ["1"] and query["status"] == ["succeeded"]
    payment_id = query["payment_id"][0]

    payment = client.payments.retrieve(payment_id)
    assert (payment.status, payment.total_amount, payment.currency) == ("succeeded", 2000, "USD")
    assert payment.customer.customer_id == customer.customer_id
    assert payment.metadata == {"ledger_ref": "abc"}
    assert payment.checkout_session_id == session.session_id
    assert [(i.product_id, i.quantity) for i in payment.product_cart or []] == [(product.product_id, 1)]
    assert world.balance(ce.id, customer.customer_id) == "20.00"

    status = client.checkout_sessions.retrieve(session.session_id)
    assert (status.payment_id, status.payment_status, status.customer_email) == (
        payment_id, "succeeded", "ada@example.com")

    [succeeded] = receiver.wait_type("payment.succeeded")
    assert succeeded.json["data"]["payment_id"] == payment_id
    [added] = receiver.wait_type("credit.added")
    assert (added.json["data"]["amount"], added.json["data"]["reference_id"]) == ("20.00", payment_id)


def test_decline_on_the_page_fires_payment_failed(world: World, client: dodopayments.DodoPayments,
                                                  receiver: Receiver) -> None:
    world.webhook(receiver.url)
    customer = world.customer()
    ce = world.entitlement()
    session = world.checkout(world.topup(ce.id).product_id, customer.customer_id)
    with httpx.Client() as browser:
        page = browser.get(session.checkout_url or "")
        base = session.checkout_url.split("/checkout/")[0] if session.checkout_url else ""
        declined = browser.post(base + _form_action(page.text, "Decline"))
        assert declined.status_code == 200 and "declined" in declined.text
        assert "declined" in browser.get(session.checkout_url or "").text  # the page offers a retry

    [failed] = receiver.wait_type("payment.failed")
    assert failed.json["data"]["status"] == "failed"
    assert client.payments.retrieve(failed.json["data"]["payment_id"]).error_code == "CARD_DECLINED"
    assert client.checkout_sessions.retrieve(session.session_id).payment_status == "failed"
    assert world.balance(ce.id, customer.customer_id) == "0.00"


def test_page_collects_buyer_when_no_customer_given(world: World, client: dodopayments.DodoPayments) -> None:
    product = world.topup(world.entitlement().id)
    session = client.checkout_sessions.create(product_cart=[{"product_id": product.product_id, "quantity": 2}])
    with httpx.Client() as browser:
        page = browser.get(session.checkout_url or "")
        assert '<label for="email">Email</label>' in page.text
        action = _form_action(page.text, "Pay")
        base = (session.checkout_url or "").split("/checkout/")[0]
        done = browser.post(base + action, data={"email": "grace@example.com", "name": "Grace"})
    assert done.status_code == 200 and "Payment successful" in done.text
    [customer] = client.customers.list(email="grace@example.com").items
    [payment] = client.payments.list(customer_id=customer.customer_id).items
    assert payment.total_amount == 4000


def test_control_api_pay_and_decline(world: World, control: httpx.Client) -> None:
    customer = world.customer()
    product = world.topup(world.entitlement().id)
    first = world.checkout(product.product_id, customer.customer_id)
    declined = control.post(f"/_emulator/checkouts/{first.session_id}/decline").json()
    assert declined["status"] == "failed" and declined["payment_id"].startswith("pay_")
    paid = world.pay(first.session_id)  # a declined card can be retried
    assert paid["status"] == "succeeded" and paid["subscription_id"] is None
    again = control.post(f"/_emulator/checkouts/{first.session_id}/pay")
    assert again.status_code == 409 and again.json()["code"] == "CHECKOUT_SESSION_ALREADY_COMPLETED"


def test_subscription_checkout_with_seat_addons(world: World, client: dodopayments.DodoPayments,
                                                receiver: Receiver) -> None:
    world.webhook(receiver.url)
    seat = client.addons.create(currency="USD", name="Seat", price=500, tax_category="saas")
    ce = world.entitlement()
    plan = world.plan(price=2000, addons=[seat.id], credits=[{"credit_entitlement_id": ce.id, "credits_amount": "50"}])
    customer = world.customer()
    result = world.buy(plan.product_id, customer.customer_id, addons=[{"addon_id": seat.id, "quantity": 3}])
    sub = client.subscriptions.retrieve(result["subscription_id"])
    assert sub.subscription_id.startswith("sub_")
    assert (sub.status, sub.product_id, sub.quantity) == ("active", plan.product_id, 1)
    assert [(a.addon_id, a.quantity) for a in sub.addons] == [(seat.id, 3)]
    assert sub.recurring_pre_tax_amount == 2000 + 3 * 500
    assert sub.next_billing_date > sub.previous_billing_date
    [cart] = sub.credit_entitlement_cart
    assert (cart.credit_entitlement_id, cart.credits_amount, cart.remaining_balance) == (ce.id, "50.00", "50.00")

    payment = client.payments.retrieve(result["payment_id"])
    assert (payment.total_amount, payment.charge_type, payment.subscription_id) == (3500, "new", sub.subscription_id)
    receiver.wait_type("subscription.active")
    assert world.balance(ce.id, customer.customer_id) == "50.00"


def test_checkout_validation(world: World, client: dodopayments.DodoPayments) -> None:
    customer = world.customer()
    cheap = client.products.create(name="Too cheap", tax_category="saas",
                                   price={"type": "one_time_price", "price": 10, "currency": "USD"})
    with pytest.raises(dodopayments.BadRequestError) as exc:
        world.checkout(cheap.product_id, customer.customer_id)
    assert isinstance(exc.value.body, dict)
    assert exc.value.body["code"] == "TOTAL_PAYMENT_AMOUNT_BELOW_MINIMUM_AMOUNT"

    seat = client.addons.create(currency="USD", name="Seat", price=500, tax_category="saas")
    plan = world.plan()  # the seat add-on is not attached to this plan
    with pytest.raises(dodopayments.BadRequestError):
        world.checkout(plan.product_id, customer.customer_id, addons=[{"addon_id": seat.id, "quantity": 1}])
    with pytest.raises(dodopayments.NotFoundError):
        world.checkout("pdt_nope", customer.customer_id)
    with pytest.raises(dodopayments.NotFoundError):
        world.checkout(plan.product_id, "cus_nope")
