"""The ledger against the Dodo emulator through the official SDK: a checkout link bought with
real (emulated) webhooks, grants and refunds mirrored onto Dodo's credit entitlement, Tollgate
and Dodo agreeing on the balance, drift detected and corrected with an explicit adjustment."""

from __future__ import annotations

import hashlib
from typing import Any

from ledger.support import CENT, DodoLedger, balance_of, billing_events, refund_succeeded
from support.servers import eventually
from tollgate_hotstate import api_key
from tollgate_ledger import metrics
from tollgate_ledger import reconcile as reconciliation


async def dodo_balance(dl: DodoLedger, dodo_customer: str) -> int:
    """Dodo's balance as the ledger last heard it (credit.* webhooks)."""
    value = await dl.ledger.pool.fetchval(
        "SELECT balance_nanos FROM ledger.dodo_credit_balances WHERE dodo_customer_id = $1", dodo_customer
    )
    return -1 if value is None else int(value)


async def buy_pack(dl: DodoLedger, customer: str) -> tuple[dict[str, Any], dict[str, Any]]:
    pack = dl.catalogue.packs[0]
    async with dl.admin() as admin:
        link = await admin.post(f"/customers/{customer}/checkout", json={"pack": pack.name})
        assert link.status_code == 200, link.text
    checkout = link.json()
    assert checkout["checkout_url"] and checkout["credits"] == pack.credits
    paid = await dl.control("POST", f"/checkouts/{checkout['session_id']}/pay")
    return checkout, paid


async def new_dodo_customer(dl: DodoLedger) -> tuple[str, str]:
    async with dl.admin() as admin:
        created = (await admin.post("/customers", json={"email": "buyer@example.com", "name": "Buyer"})).json()
    assert created["dodo_customer_id"], "the Dodo customer is created through the SDK"
    return created["customer_id"], created["dodo_customer_id"]


async def reconcile(dl: DodoLedger, customer: str) -> dict[str, Any]:
    async with dl.admin() as admin:
        response = await admin.post(f"/customers/{customer}/reconcile")
        assert response.status_code == 200, response.text
        return dict(response.json())


async def test_checkout_grant_and_refund_keep_tollgate_and_dodo_in_agreement(dodo_ledger: DodoLedger) -> None:
    dl = dodo_ledger
    customer, dodo_customer = await new_dodo_customer(dl)
    checkout, paid = await buy_pack(dl, customer)
    assert paid["customer_id"] == dodo_customer
    pool = dl.ledger.pool
    await eventually(lambda: _is(balance_of(pool, customer), 500 * CENT))
    await eventually(lambda: _is(dodo_balance(dl, dodo_customer), 500 * CENT))
    assert (await reconcile(dl, customer))["status"] == "ok"

    async with dl.admin() as admin:
        granted = await admin.post(f"/customers/{customer}/grants", json={
            "amount_cents": 125, "reason": "apology for an outage", "idempotency_key": "outage-42",
        })
        assert granted.status_code == 200
    await eventually(lambda: _is(dodo_balance(dl, dodo_customer), 625 * CENT))

    async with dl.sdk() as sdk:
        refund = await sdk.refunds.create(
            payment_id=paid["payment_id"], items=[{"item_id": checkout["pack"]["product_id"], "amount": 200}],
        )
    await eventually(lambda: _is(balance_of(pool, customer), 425 * CENT))
    await eventually(lambda: _is(dodo_balance(dl, dodo_customer), 425 * CENT))
    check = await reconcile(dl, customer)
    assert check["status"] == "ok" and check["drift_nanos"] == 0
    refunds = [p for s, p, _ in await billing_events(dl.settings.nats_url, customer) if "refund" in s]
    assert refunds[0]["refund_id"] == refund.refund_id and refunds[0]["debited_nanos"] == 200 * CENT


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_drift_is_recorded_published_and_fixed_only_by_an_adjustment(dodo_ledger: DodoLedger) -> None:
    dl = dodo_ledger
    customer, dodo_customer = await new_dodo_customer(dl)
    await buy_pack(dl, customer)
    await eventually(lambda: _is(dodo_balance(dl, dodo_customer), 500 * CENT))
    await eventually(lambda: _is(balance_of(dl.ledger.pool, customer), 500 * CENT))
    # Someone takes 50 credits away in Dodo's dashboard, behind Tollgate's back.
    async with dl.sdk() as sdk:
        await sdk.credit_entitlements.balances.create_ledger_entry(
            dodo_customer, credit_entitlement_id=dl.catalogue.credit_entitlement_id, amount="50",
            entry_type="debit", reason="manual", idempotency_key="dashboard-1",
        )
    await eventually(lambda: _is(dodo_balance(dl, dodo_customer), 450 * CENT))
    first = await reconcile(dl, customer)
    second = await reconcile(dl, customer)
    assert first["drift_nanos"] == -50 * CENT and {first["status"], second["status"]} <= {"suspect", "drift"}
    assert second["status"] == "drift"
    # Never overwritten: Tollgate still holds its own balance.
    assert await balance_of(dl.ledger.pool, customer) == 500 * CENT
    async with dl.admin() as admin:
        listed = (await admin.get("/drift")).json()
        assert [d["drift_nanos"] for d in listed if d["customer_id"] == customer] == [-50 * CENT]
    assert metrics.DRIFT_NANOS.labels(customer)._value.get() == -50 * CENT

    async def published() -> list[dict[str, Any]]:
        return [p for s, p, _ in await billing_events(dl.settings.nats_url, customer) if s.startswith("billing.drift")]

    drift_events = await eventually(published)
    assert len(drift_events) == 1 and drift_events[0]["drift_nanos"] == -50 * CENT

    async with dl.admin() as admin:
        fixed = await admin.post(f"/customers/{customer}/adjustments", json={
            "amount_nanos": -50 * CENT, "reason": "match Dodo: manual dashboard debit", "idempotency_key": "drift-1",
        })
        assert fixed.status_code == 200
    assert (await reconcile(dl, customer))["status"] == "ok"
    async with dl.admin() as admin:
        assert customer not in [d["customer_id"] for d in (await admin.get("/drift")).json()]
        history = (await admin.get(f"/customers/{customer}/drift")).json()
    assert [h["status"] for h in history][:2] == ["ok", "drift"]


async def test_refund_for_a_payment_not_yet_seen_fetches_the_payment_from_dodo(dodo_ledger: DodoLedger) -> None:
    dl = dodo_ledger
    customer, _ = await new_dodo_customer(dl)
    # Dodo's payment.succeeded delivery is lost; the refund arrives first.
    await dl.control("PUT", "/faults", json={"webhooks": {"drop_rate": 1.0}})
    _, paid = await buy_pack(dl, customer)
    await dl.control("DELETE", "/faults")
    assert await balance_of(dl.ledger.pool, customer) == 0
    response = await dl.post_webhook(refund_succeeded(paid["payment_id"], 100))
    assert response.status_code == 200 and response.json()["status"] == "applied"
    assert await balance_of(dl.ledger.pool, customer) == 400 * CENT
    payment = await dl.ledger.pool.fetchrow("SELECT * FROM ledger.payments WHERE payment_id = $1", paid["payment_id"])
    assert payment["source"] == "api" and payment["credited_nanos"] == 500 * CENT


async def test_checkout_for_a_customer_without_dodo_links_it_and_refreshes_its_keys(dodo_ledger: DodoLedger) -> None:
    dl = dodo_ledger
    customer = await dl.new_customer()  # created while Dodo was not used
    async with dl.admin() as admin:
        issued = (await admin.post(f"/customers/{customer}/keys", json={})).json()
    key_hash = hashlib.sha256(issued["key"].encode()).hexdigest()
    assert (await dl.ledger.hot.redis.hget(api_key(key_hash), "dodo_customer_id")) == b""
    _, paid = await buy_pack(dl, customer)
    await eventually(lambda: _is(balance_of(dl.ledger.pool, customer), 500 * CENT))
    cached = await dl.ledger.hot.redis.hget(api_key(key_hash), "dodo_customer_id")
    assert cached == paid["customer_id"].encode()


async def test_scheduled_pass_releases_parked_events_and_compares_with_dodo(dodo_ledger: DodoLedger) -> None:
    dl = dodo_ledger
    customer, dodo_customer = await new_dodo_customer(dl)
    # The payment webhook is lost and Dodo's payment API fails when the refund arrives: parked.
    await dl.control("PUT", "/faults", json={"webhooks": {"drop_rate": 1.0}, "endpoints": [
        {"method": "GET", "path_prefix": "/payments", "error_rate": 1.0, "status": 500},
    ]})
    _, paid = await buy_pack(dl, customer)
    response = await dl.post_webhook(refund_succeeded(paid["payment_id"], 250))
    assert response.json()["status"] == "parked"
    await dl.control("DELETE", "/faults")

    assert await reconciliation.retry_parked(dl.ledger, older_than_s=0) == 1
    assert await balance_of(dl.ledger.pool, customer) == 250 * CENT
    checks = await reconciliation.Reconciler(dl.ledger).run_pass()
    mine = [c for c in checks if c.customer_id == customer]
    # Dodo never saw its own credit.added (dropped): the pass fetched the balance through the SDK.
    assert mine and mine[0].dodo_nanos is not None
    await eventually(lambda: _is(dodo_balance(dl, dodo_customer), 250 * CENT))
    assert (await reconciliation.check_customer(dl.ledger, customer, fetch=True)).status == "ok"
