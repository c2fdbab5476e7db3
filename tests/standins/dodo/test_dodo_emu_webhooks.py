"""Webhook endpoints and deliveries: Standard Webhooks signatures, retries, replays."""

from __future__ import annotations

import json
import time

import dodopayments
import httpx
import pytest
from dodo_emulator_kit import WEBHOOK_SECRET, Receiver, World, wait_for
from standardwebhooks import WebhookVerificationError


def test_endpoint_management(client: dodopayments.DodoPayments) -> None:
    created = client.webhooks.create(url="http://127.0.0.1:9/a", description="ledger",
                                     filter_types=["payment.succeeded"], metadata={"env": "dev"},
                                     headers={"x-tenant": "t1"})
    assert created.id.startswith("ep_") and created.filter_types == ["payment.succeeded"]
    assert client.webhooks.retrieve(created.id).description == "ledger"
    updated = client.webhooks.update(created.id, description="ledger v2", disabled=True)
    assert (updated.description, updated.disabled) == ("ledger v2", True)
    assert client.webhooks.retrieve_secret(created.id).secret == WEBHOOK_SECRET

    assert client.webhooks.headers.retrieve(created.id).headers == {"x-tenant": "t1"}
    client.webhooks.headers.update(created.id, headers={"x-extra": "1"})
    assert client.webhooks.headers.retrieve(created.id).headers == {"x-tenant": "t1", "x-extra": "1"}

    again = client.webhooks.create(url="http://127.0.0.1:9/b", idempotency_key="k1")
    assert client.webhooks.create(url="http://127.0.0.1:9/b", idempotency_key="k1").id == again.id

    client.webhooks.delete(created.id)
    with pytest.raises(dodopayments.NotFoundError):
        client.webhooks.retrieve(created.id)


def test_endpoint_listing_is_cursor_paged(client: dodopayments.DodoPayments) -> None:
    ids = [client.webhooks.create(url=f"http://127.0.0.1:9/{i}").id for i in range(5)]
    first = client.webhooks.list(limit=2)
    assert [w.id for w in first.data] == ids[:2] and first.done is False and first.iterator == ids[1]
    second = client.webhooks.list(limit=2, iterator=first.iterator)
    assert [w.id for w in second.data] == ids[2:4]
    last = client.webhooks.list(limit=2, iterator=second.iterator)
    assert [w.id for w in last.data] == ids[4:] and last.done is True and last.iterator is None
    assert [w.id for w in client.webhooks.list(limit=2)] == ids  # the SDK follows the cursor


def test_delivery_is_signed_and_verifies_with_the_sdk(world: World, client: dodopayments.DodoPayments,
                                                      receiver: Receiver) -> None:
    world.webhook(receiver.url)
    customer = world.customer()
    payment_id = world.buy(world.topup(world.entitlement().id).product_id, customer.customer_id)["payment_id"]
    [delivery] = receiver.wait_type("payment.succeeded")
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert delivery.headers["webhook-signature"].startswith("v1,")
    assert delivery.headers["content-type"] == "application/json"

    event = client.webhooks.unwrap(delivery.body, headers=delivery.headers, key=WEBHOOK_SECRET)
    assert event.type == "payment.succeeded"
    assert event.business_id == delivery.json["business_id"]
    assert event.data.payment_id == payment_id  # type: ignore[union-attr]
    assert delivery.json["data"]["payload_type"] == "Payment"
    assert set(delivery.json) == {"business_id", "type", "timestamp", "data"}

    tampered = delivery.body.replace('"total_amount":2000', '"total_amount":9999')
    assert tampered != delivery.body
    with pytest.raises(WebhookVerificationError):
        client.webhooks.unwrap(tampered, headers=delivery.headers, key=WEBHOOK_SECRET)
    stale = dict(delivery.headers, **{"webhook-timestamp": str(int(time.time()) - 600)})
    with pytest.raises(WebhookVerificationError):
        client.webhooks.unwrap(delivery.body, headers=stale, key=WEBHOOK_SECRET)
    with pytest.raises(WebhookVerificationError):
        client.webhooks.unwrap(delivery.body, headers=delivery.headers, key="whsec_c2VjcmV0Cg==")


def test_custom_headers_filters_and_disabled_endpoints(world: World, client: dodopayments.DodoPayments,
                                                       receiver: Receiver) -> None:
    world.webhook(receiver.url, filter_types=["credit.added"], headers={"x-tenant": "t1"})
    muted = world.webhook(receiver.url + "?muted", disabled=True)
    customer = world.customer()
    world.buy(world.topup(world.entitlement().id).product_id, customer.customer_id)
    [added] = receiver.wait_type("credit.added")
    assert added.headers["x-tenant"] == "t1"
    assert receiver.types() == ["credit.added"]
    assert world.deliveries(endpoint_id=muted.id) == []


def test_failed_deliveries_are_retried(world: World, receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    endpoint = world.webhook(receiver.url, filter_types=["payment.succeeded"])
    customer = world.customer()
    world.buy(world.topup(world.entitlement().id).product_id, customer.customer_id)
    [received] = receiver.wait_type("payment.succeeded")

    [delivery] = wait_for(lambda: [d for d in world.deliveries(type="payment.succeeded", endpoint_id=endpoint.id)
                                   if d["status"] == "succeeded"], what="the delivery to be marked succeeded")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
    assert received.headers["webhook-id"] == delivery["message_id"]  # stable across retries


def test_unreachable_endpoint_gives_up_after_the_schedule(world: World) -> None:
    world.webhook("http://127.0.0.1:9/nothing-listens-here")
    customer = world.customer()
    world.buy(world.topup(world.entitlement().id).product_id, customer.customer_id)
    # Dodo's schedule has 8 attempts; at the default factor 0.001 the last one is ~73 s out, so only
    # check that attempts pile up as failures and that the delivery is still pending for retry.
    delivery = wait_for(lambda: [d for d in world.deliveries(type="payment.succeeded")
                                 if len(d["attempts"]) >= 3], what="three failed attempts")[0]
    assert delivery["status"] == "pending"
    assert all(a["status_code"] is None and a["error"] for a in delivery["attempts"])


def test_payload_carries_latest_state(world: World, client: dodopayments.DodoPayments,
                                      control: httpx.Client, receiver: Receiver) -> None:
    receiver.statuses = [500]  # the first attempt fails; the retry renders the object again
    world.webhook(receiver.url, filter_types=["payment.succeeded"])
    customer = world.customer()
    payment_id = world.buy(world.topup(world.entitlement().id).product_id, customer.customer_id)["payment_id"]
    client.refunds.create(payment_id=payment_id)
    [delivery] = receiver.wait_type("payment.succeeded")
    assert delivery.json["data"]["refund_status"] == "full"


def test_redeliver_replays_with_the_same_webhook_id(world: World, control: httpx.Client,
                                                    receiver: Receiver) -> None:
    world.webhook(receiver.url, filter_types=["payment.succeeded"])
    customer = world.customer()
    world.buy(world.topup(world.entitlement().id).product_id, customer.customer_id)
    [original] = receiver.wait_type("payment.succeeded")
    assert control.post("/_emulator/webhooks/redeliver").json() == {"redelivered": 1}
    _, replay = receiver.wait_type("payment.succeeded", count=2)
    assert replay.headers["webhook-id"] == original.headers["webhook-id"]
    assert json.loads(replay.body) == json.loads(original.body)
    assert dodopayments.DodoPayments(bearer_token="x").webhooks.unwrap(
        replay.body, headers=replay.headers, key=WEBHOOK_SECRET).type == "payment.succeeded"
