"""Dodo webhooks: each event applied exactly once whatever the delivery order or repetition, and
nothing at all stored for requests that do not carry a valid, fresh signature."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from standardwebhooks import Webhook

from ledger.support import (
    CENT,
    PACK_5,
    PACK_20,
    WEBHOOK_SECRET,
    RunningLedger,
    balance_of,
    billing_events,
    dispute,
    entries_of,
    envelope,
    payment_succeeded,
    refund_succeeded,
    sign_bytes,
    signed,
)
from support.servers import eventually
from tollgate_hotstate.loader import load_customer


async def inbox_row(ledger: RunningLedger, webhook_id: str) -> dict[str, object] | None:
    row = await ledger.ledger.pool.fetchrow("SELECT * FROM ledger.webhook_inbox WHERE webhook_id = $1", webhook_id)
    return dict(row) if row else None


async def test_top_up_credits_exactly_the_pack_credits_not_the_taxed_total(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    event = payment_succeeded(customer, packs=[(PACK_5, 2), (PACK_20, 1)], tax=270)
    response = await ledger.post_webhook(event)
    assert response.status_code == 200 and response.json()["status"] == "applied"
    pool = ledger.ledger.pool
    assert await balance_of(pool, customer) == 3000 * CENT  # 2 x 500 + 2000 credits; the tax buys nothing
    [entry] = await entries_of(pool, customer)
    assert entry["kind"] == "topup" and entry["idempotency_key"] == f"payment:{event['data']['payment_id']}"
    events = await eventually(lambda: _subjects(ledger, customer, "billing.payment.succeeded"))
    payment = events[0]
    assert payment["amount_cents"] == 3000 and payment["credited_nanos"] == 3000 * CENT


async def _subjects(ledger: RunningLedger, customer: str, subject: str) -> list[dict[str, object]]:
    return [p for s, p, _ in await billing_events(ledger.settings.nats_url, customer) if s.startswith(subject)]


async def test_replayed_webhook_and_redelivered_payment_apply_once(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    event = payment_succeeded(customer)
    first = await ledger.post_webhook(event, webhook_id="msg_replay_" + customer)
    replay = await ledger.post_webhook(event, webhook_id="msg_replay_" + customer)
    # Dodo may also deliver the same fact under a new message id: the payment id still decides.
    again = await ledger.post_webhook(event)
    assert [first.json()["status"], replay.json()["status"], again.json()["status"]] == [
        "applied", "duplicate", "duplicate",
    ]
    assert await balance_of(ledger.ledger.pool, customer) == 500 * CENT
    assert len(await entries_of(ledger.ledger.pool, customer)) == 1
    published = await eventually(lambda: _subjects(ledger, customer, "billing.payment.succeeded"))
    assert len(published) == 1


async def test_refund_delivered_before_its_payment_ends_in_the_right_balance(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    payment = payment_succeeded(customer)
    payment_id = payment["data"]["payment_id"]
    refund = refund_succeeded(payment_id, amount=200)
    parked = await ledger.post_webhook(refund)
    assert parked.status_code == 200 and parked.json()["status"] == "parked"
    assert await balance_of(ledger.ledger.pool, customer) == 0
    applied = await ledger.post_webhook(payment)
    assert applied.json()["status"] == "applied"
    # 500 credits bought, 200 of the 500 cents refunded: 300 credits remain.
    pool = ledger.ledger.pool
    assert await balance_of(pool, customer) == 300 * CENT
    kinds = [(e["kind"], e["amount_nanos"]) for e in await entries_of(pool, customer)]
    assert kinds == [("topup", 500 * CENT), ("refund", -200 * CENT)]
    # A late replay of the refund changes nothing.
    assert (await ledger.post_webhook(refund)).json()["status"] == "duplicate"
    assert await balance_of(pool, customer) == 300 * CENT
    refunds = await eventually(lambda: _subjects(ledger, customer, "billing.refund.succeeded"))
    assert refunds[0]["debited_nanos"] == 200 * CENT and refunds[0]["amount_cents"] == 200


async def test_partial_refunds_add_up_to_exactly_what_was_credited(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    payment = payment_succeeded(customer, packs=[(PACK_5, 1)], tax=33)  # 533 cents paid for 500 credits
    payment_id = payment["data"]["payment_id"]
    await ledger.post_webhook(payment)
    for amount in (100, 177, 256):  # 533 in three uneven parts
        assert (await ledger.post_webhook(refund_succeeded(payment_id, amount))).json()["status"] == "applied"
    assert await balance_of(ledger.ledger.pool, customer) == 0


async def test_refund_can_take_the_balance_negative(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    payment = payment_succeeded(customer)
    await ledger.post_webhook(payment)
    async with ledger.admin() as admin:
        spent = await admin.post(f"/customers/{customer}/adjustments", json={
            "amount_nanos": -400 * CENT, "reason": "spent on usage (test)", "idempotency_key": "spend-1",
        })
        assert spent.status_code == 200
    await ledger.post_webhook(refund_succeeded(payment["data"]["payment_id"], 500))
    assert await balance_of(ledger.ledger.pool, customer) == -400 * CENT


async def test_bad_signature_is_401_and_stores_nothing(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    body, headers = signed(payment_succeeded(customer), secret="whsec_" + "d3Jvbmctc2VjcmV0")
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{ledger.url}/webhooks/dodo", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    assert await inbox_row(ledger, headers["webhook-id"]) is None
    assert await balance_of(ledger.ledger.pool, customer) == 0


async def test_tampered_body_is_401(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    body, headers = signed(payment_succeeded(customer))
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{ledger.url}/webhooks/dodo", content=body.replace(b"500", b"900"),
                                     headers=headers)
        missing = await client.post(f"{ledger.url}/webhooks/dodo", content=body,
                                    headers={"content-type": "application/json"})
    assert response.status_code == 401 and missing.status_code == 401
    assert await balance_of(ledger.ledger.pool, customer) == 0


async def test_stale_timestamp_is_401_and_stores_nothing(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    stale = datetime.now(UTC) - timedelta(minutes=10)
    event = payment_succeeded(customer)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    response = await ledger.post_webhook(event, webhook_id=webhook_id, timestamp=stale)
    assert response.status_code == 401
    assert await inbox_row(ledger, webhook_id) is None
    assert await balance_of(ledger.ledger.pool, customer) == 0


async def test_malformed_json_with_a_valid_signature_is_400(ledger: RunningLedger) -> None:
    webhook_id = f"msg_{uuid.uuid4().hex}"
    response = await ledger.post_webhook('{"type": "payment.succeeded", "data": ', webhook_id=webhook_id)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert await inbox_row(ledger, webhook_id) is None


def _not_utf8(event: dict[str, object]) -> bytes:
    """The event's JSON with one byte that is not UTF-8 inside a string (the customer's name)."""
    body = json.dumps(event).encode().replace(b'"name": "X"', b'"name": "X\xff"', 1)
    assert b"\xff" in body
    return body


async def test_invalid_utf8_with_a_valid_signature_is_400_and_stores_nothing(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    body = _not_utf8(payment_succeeded(customer))
    webhook_id = f"msg_{uuid.uuid4().hex}"
    at = datetime.now(UTC)
    # the raw-bytes signer agrees with the library wherever the library can sign (UTF-8 text)
    assert sign_bytes(WEBHOOK_SECRET, webhook_id, at, b'{"a": 1}') == Webhook(WEBHOOK_SECRET).sign(
        webhook_id, at, '{"a": 1}')
    response = await ledger.post_webhook(body, webhook_id=webhook_id, timestamp=at)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": {"message": "webhook body is not valid UTF-8",
                                         "type": "invalid_request_error", "code": "invalid_encoding"}}
    assert await inbox_row(ledger, webhook_id) is None
    assert await balance_of(ledger.ledger.pool, customer) == 0


async def test_invalid_utf8_with_a_bad_signature_is_still_401(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    body = _not_utf8(payment_succeeded(customer))
    wrong_secret = signed(body, secret="whsec_" + "d3Jvbmctc2VjcmV0")
    stale = signed(body, timestamp=datetime.now(UTC) - timedelta(minutes=10))
    _, other_body_headers = signed(body.replace(b"\xff", b"\xfe"))
    _, nan_headers = signed(body)
    nan_headers["webhook-timestamp"] = "nan"
    attempts = [wrong_secret, stale, (body, other_body_headers), (body, nan_headers),
                (body, {"content-type": "application/json"})]
    async with httpx.AsyncClient(base_url=ledger.url) as client:
        for content, headers in attempts:
            response = await client.post("/webhooks/dodo", content=content, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json() == {"error": {"message": "invalid or expired webhook signature",
                                                 "type": "authentication_error", "code": "invalid_signature"}}
            if "webhook-id" in headers:
                assert await inbox_row(ledger, headers["webhook-id"]) is None
    assert await balance_of(ledger.ledger.pool, customer) == 0


async def test_body_over_one_mebibyte_is_413(ledger: RunningLedger) -> None:
    event = envelope("payment.succeeded", {"padding": "x" * (1024 * 1024 + 10)})
    response = await ledger.post_webhook(event)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_unknown_event_type_is_stored_and_acknowledged(ledger: RunningLedger) -> None:
    webhook_id = f"msg_{uuid.uuid4().hex}"
    response = await ledger.post_webhook(envelope("license_key.created", {"id": "lk_1"}), webhook_id=webhook_id)
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    row = await inbox_row(ledger, webhook_id)
    assert row is not None and row["outcome"] == "ignored" and row["type"] == "license_key.created"
    assert row["applied_at"] is not None and "lk_1" in str(row["payload"])


async def test_payment_failed_moves_no_money_and_is_published(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    event = payment_succeeded(customer)
    event["type"] = "payment.failed"
    event["data"]["status"] = "failed"
    event["data"]["error_message"] = "card declined"
    assert (await ledger.post_webhook(event)).json()["status"] == "applied"
    assert await balance_of(ledger.ledger.pool, customer) == 0
    failed = await eventually(lambda: _subjects(ledger, customer, "billing.payment.failed"))
    assert failed[0]["reason"] == "card declined"


async def test_dispute_freezes_the_customer_and_a_lost_dispute_claws_back(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    payment = payment_succeeded(customer)
    payment_id = payment["data"]["payment_id"]
    await ledger.post_webhook(payment)
    hot = ledger.ledger.hot
    await load_customer(ledger.ledger.pool, hot, customer, 0, 0)
    assert (await hot.snapshot(customer))["status"] == "active"

    await ledger.post_webhook(dispute("dispute.opened", payment_id, "dsp_" + customer, 500))
    assert (await hot.snapshot(customer))["status"] == "frozen"
    status = await ledger.ledger.pool.fetchval("SELECT status FROM ledger.hot_account WHERE customer_id = $1", customer)
    assert status == "frozen"  # a gateway loading from Postgres refuses too

    await ledger.post_webhook(dispute("dispute.lost", payment_id, "dsp_" + customer, 500))
    snap = await hot.snapshot(customer)
    assert snap["status"] == "active" and int(snap["bal"]) == 0
    assert await balance_of(ledger.ledger.pool, customer) == 0
    # A late `opened` does not reopen a lost dispute.
    late = await ledger.post_webhook(dispute("dispute.opened", payment_id, "dsp_" + customer, 500))
    assert late.json()["status"] == "duplicate"
    assert (await hot.snapshot(customer))["status"] == "active"
    lost = await eventually(lambda: _subjects(ledger, customer, "billing.dispute.lost"))
    assert lost[0]["dispute_id"] == "dsp_" + customer


async def test_won_dispute_unfreezes_without_moving_money(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    payment = payment_succeeded(customer)
    payment_id = payment["data"]["payment_id"]
    await ledger.post_webhook(payment)
    await load_customer(ledger.ledger.pool, ledger.ledger.hot, customer, 0, 0)
    await ledger.post_webhook(dispute("dispute.opened", payment_id, "dsp_w_" + customer, 500))
    assert (await ledger.ledger.hot.snapshot(customer))["status"] == "frozen"
    await ledger.post_webhook(dispute("dispute.won", payment_id, "dsp_w_" + customer, 500))
    assert (await ledger.ledger.hot.snapshot(customer))["status"] == "active"
    assert await balance_of(ledger.ledger.pool, customer) == 500 * CENT


async def test_payment_for_an_unknown_customer_is_kept_and_applied_once_linked(ledger: RunningLedger) -> None:
    dodo_id = f"cus_dodo_{uuid.uuid4().hex[:10]}"
    event = payment_succeeded("cus_tg_nobody", dodo_customer_id=dodo_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    response = await ledger.post_webhook(event, webhook_id=webhook_id)
    assert response.status_code == 200 and response.json()["status"] == "unmatched"
    row = await inbox_row(ledger, webhook_id)
    assert row is not None and row["applied_at"] is None
    # The operator creates the customer for that Dodo customer and re-applies the stored event.
    customer = await ledger.new_customer(dodo_customer_id=dodo_id)
    async with ledger.admin() as admin:
        first = await admin.post(f"/webhooks/{webhook_id}/reapply")
        second = await admin.post(f"/webhooks/{webhook_id}/reapply")
        missing = await admin.post("/webhooks/msg_nope/reapply")
    assert first.json()["status"] == "applied" and second.json()["status"] == "already_applied"
    assert missing.status_code == 404
    assert await balance_of(ledger.ledger.pool, customer) == 500 * CENT


async def test_dodo_customer_id_resolves_the_customer_without_metadata(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer(dodo_customer_id=f"cus_dodo_{uuid.uuid4().hex[:8]}")
    async with ledger.admin() as admin:
        dodo_id = (await admin.get(f"/customers/{customer}")).json()["dodo_customer_id"]
    event = payment_succeeded(customer, dodo_customer_id=dodo_id, metadata=False)
    assert (await ledger.post_webhook(event)).json()["status"] == "applied"
    assert await balance_of(ledger.ledger.pool, customer) == 500 * CENT
