"""The operator API: only the admin token opens it; keys are shown once, cached for the gateway
and revoked everywhere at once; money movements are idempotent; errors have one JSON shape."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import asyncpg
import httpx
import pytest

from ledger.support import ADMIN_TOKEN, CENT, RunningLedger, balance_of, usage_event
from tollgate_hotstate import AdmitRequest, api_key
from tollgate_hotstate.loader import load_customer
from tollgate_ledger.usage import post_usage
from tollgate_platform import bus


async def test_admin_api_needs_the_admin_token_not_a_customer_key(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    async with ledger.admin() as admin:
        key = (await admin.post(f"/customers/{customer}/keys", json={"name": "ci"})).json()["key"]
    async with httpx.AsyncClient(base_url=f"{ledger.url}/admin/v1") as client:
        anonymous = await client.get("/customers")
        with_key = await client.get("/customers", headers={"Authorization": f"Bearer {key}"})
        wrong = await client.get("/customers", headers={"Authorization": "Bearer not-the-token"})
        basic = await client.get("/customers", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        grant = await client.post(f"/customers/{customer}/grants", headers={"Authorization": f"Bearer {key}"},
                                  json={"amount_cents": 100, "reason": "free money", "idempotency_key": "x"})
    assert anonymous.status_code == 401 and basic.status_code == 401
    assert with_key.status_code == 403 and wrong.status_code == 403 and grant.status_code == 403
    assert with_key.json()["error"]["type"] == "permission_error"
    assert await balance_of(ledger.ledger.pool, customer) == 0


async def test_key_is_shown_once_cached_for_the_gateway_and_revoked_everywhere(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    redis = ledger.ledger.hot.redis
    async with ledger.admin() as admin:
        issued = (await admin.post(f"/customers/{customer}/keys",
                                   json={"name": "prod", "models": ["gpt-4o-mini", " o1", "gpt-4o-mini"]})).json()
        key = issued["key"]
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        assert key.startswith("sk-tg-") and len(key) == 46 and issued["prefix"] == key[:12]
        cached = await redis.hgetall(api_key(key_hash))
        assert {k.decode(): v.decode() for k, v in cached.items()} == {
            "customer_id": customer, "key_id": issued["key_id"], "status": "active",
            "models": "gpt-4o-mini,o1", "dodo_customer_id": "",
        }
        listed = (await admin.get(f"/customers/{customer}/keys")).json()
        assert [k["key_id"] for k in listed] == [issued["key_id"]]
        assert "key" not in listed[0] and key not in str(listed) and key_hash not in str(listed)
        stored = await ledger.ledger.pool.fetchval("SELECT count(*) FROM ledger.api_keys WHERE key_hash = $1 "
                                                   "OR prefix = $2 AND name = 'prod'", key, key)
        assert stored == 0  # the plaintext is stored nowhere

        nc = await bus.connect(ledger.settings.nats_url, "ledger-tests-invalidate")
        heard: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_msg(msg: object) -> None:
            await heard.put(msg.data)  # type: ignore[attr-defined]

        await nc.subscribe("cache.invalidate.key", cb=on_msg)
        await nc.flush()
        try:
            revoked = await admin.post(f"/keys/{issued['key_id']}/revoke")
            assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
            assert await asyncio.wait_for(heard.get(), 5) == key_hash.encode()
        finally:
            await nc.close()
        assert await redis.exists(api_key(key_hash)) == 0
        view = await ledger.ledger.pool.fetchrow("SELECT * FROM ledger.gateway_keys WHERE key_hash = $1", key_hash)
        assert view["status"] == "revoked" and view["customer_id"] == customer
        assert (await admin.post("/keys/key_doesnotexist/revoke")).status_code == 404


async def test_grant_with_the_same_idempotency_key_credits_once(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    body = {"amount_cents": 250, "reason": "support goodwill", "idempotency_key": f"ticket-{customer}"}
    async with ledger.admin() as admin:
        first, second = await asyncio.gather(
            admin.post(f"/customers/{customer}/grants", json=body),
            admin.post(f"/customers/{customer}/grants", json=body),
        )
        third = await admin.post(f"/customers/{customer}/grants", json=body)
        conflict = await admin.post(f"/customers/{customer}/grants", json={**body, "amount_cents": 999})
    assert sorted([first.json()["created"], second.json()["created"], third.json()["created"]]) == [
        False, False, True,
    ]
    assert third.json()["entry"]["seq"] == 1 and third.json()["balance_nanos"] == 250 * CENT
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
    assert await balance_of(ledger.ledger.pool, customer) == 250 * CENT


async def test_balance_shows_reservations_and_unposted_usage_from_the_hot_copy(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    core = ledger.ledger
    async with ledger.admin() as admin:
        await admin.post(f"/customers/{customer}/grants",
                         json={"amount_cents": 1000, "reason": "trial", "idempotency_key": f"t-{customer}"})
        not_loaded = (await admin.get(f"/customers/{customer}/balance")).json()
        assert not_loaded["hot"] is None and not_loaded["balance_cents"] == 1000
        await load_customer(core.pool, core.hot, customer, 0, 0)
        await core.hot.admit(customer, AdmitRequest("r1", "m", 10, 3 * CENT, 0, 0, 0, 60_000, 0, check_rate=False))
        await core.hot.settle(customer, "r2", cost=2 * CENT, mode="credits", list_price=2 * CENT, tokens_refund=0,
                              event_json=b"{}")
        shown = (await admin.get(f"/customers/{customer}/balance")).json()
    assert shown["balance_nanos"] == 1000 * CENT
    assert shown["hot"]["reserved_nanos"] == 3 * CENT and shown["hot"]["unposted_nanos"] == 2 * CENT
    assert shown["hot"]["available_nanos"] == 995 * CENT
    assert shown["low_threshold_nanos"] == 200 * CENT and shown["last_topup_nanos"] == 1000 * CENT


async def test_history_is_paged_newest_first(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    async with ledger.admin() as admin:
        for i in range(5):
            await admin.post(f"/customers/{customer}/grants",
                             json={"amount_cents": 10 + i, "reason": "step", "idempotency_key": f"h{i}-{customer}"})
        page = (await admin.get(f"/customers/{customer}/entries", params={"limit": 3})).json()
        rest = (await admin.get(f"/customers/{customer}/entries",
                                params={"limit": 3, "before_seq": page["next_before_seq"]})).json()
    assert [e["seq"] for e in page["data"]] == [5, 4, 3] and [e["seq"] for e in rest["data"]] == [2, 1]
    assert rest["next_before_seq"] is None
    assert page["data"][0]["balance_after"] == sum(10 + i for i in range(5)) * CENT


async def test_adjustment_needs_a_reason_and_is_idempotent(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    async with ledger.admin() as admin:
        missing = await admin.post(f"/customers/{customer}/adjustments",
                                   json={"amount_nanos": 5, "idempotency_key": "a"})
        body = {"amount_nanos": -1234, "reason": "drift fix #12", "idempotency_key": f"adj-{customer}"}
        first = await admin.post(f"/customers/{customer}/adjustments", json=body)
        again = await admin.post(f"/customers/{customer}/adjustments", json=body)
    assert missing.status_code == 422 and missing.json()["error"]["type"] == "invalid_request_error"
    assert first.json()["created"] is True and again.json()["created"] is False
    assert first.json()["entry"]["reason"] == "drift fix #12"
    assert await balance_of(ledger.ledger.pool, customer) == -1234


async def test_errors_have_one_json_shape(ledger: RunningLedger) -> None:
    async with ledger.admin() as admin:
        missing = await admin.get("/customers/cus_tg_missing")
        invalid = await admin.post("/customers", json={"email": "not-an-email", "name": "x"})
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "customer cus_tg_missing not found", "type": "not_found_error",
                                        "code": "customer_not_found"}}
    assert invalid.status_code == 422 and set(invalid.json()["error"]) == {"message", "type", "code"}


@pytest.mark.parametrize("blank", ["", " ", "\t\n  "], ids=["empty", "space", "whitespace"])
async def test_blank_dodo_customer_id_is_refused_and_nothing_is_stored(ledger: RunningLedger, blank: str) -> None:
    email = f"blank-dodo-{uuid.uuid4().hex[:10]}@example.com"
    async with ledger.admin() as admin:
        refused = await admin.post("/customers", json={
            "email": email, "name": "Blank Dodo", "dodo_customer_id": blank, "create_in_dodo": False,
        })
        listed = (await admin.get("/customers", params={"email": email})).json()
    assert refused.status_code == 422, refused.text
    assert refused.json() == {"error": {
        "message": "dodo_customer_id: must not be empty or blank; omit it or send null to leave it unlinked",
        "type": "invalid_request_error", "code": "invalid_request",
    }}
    assert listed["data"] == []
    pool = ledger.ledger.pool
    assert await pool.fetchval("SELECT count(*) FROM ledger.customers WHERE email = $1", email) == 0
    assert await pool.fetchval(r"SELECT count(*) FROM ledger.customers WHERE dodo_customer_id ~ '^\s*$'") == 0
    # null (not linked) and a real id are still accepted
    assert await ledger.new_customer()
    assert await ledger.new_customer(dodo_customer_id=f"cus_dodo_{uuid.uuid4().hex[:8]}")


async def test_openapi_documents_the_admin_api_with_bearer_auth(ledger: RunningLedger) -> None:
    async with httpx.AsyncClient() as client:
        schema = (await client.get(f"{ledger.url}/openapi.json")).json()
    paths = schema["paths"]
    for path in ("/admin/v1/customers", "/admin/v1/customers/{customer_id}/keys", "/admin/v1/keys/{key_id}/revoke",
                 "/admin/v1/customers/{customer_id}/grants", "/admin/v1/customers/{customer_id}/checkout",
                 "/admin/v1/customers/{customer_id}/balance", "/admin/v1/customers/{customer_id}/entries",
                 "/admin/v1/drift", "/admin/v1/hotstate/rebuild", "/webhooks/dodo"):
        assert path in paths, path
    assert any(s.get("scheme") == "bearer" for s in schema["components"]["securitySchemes"].values())


async def test_rebuild_restores_keys_and_never_changes_a_balance(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    core = ledger.ledger
    async with ledger.admin() as admin:
        await admin.post(f"/customers/{customer}/grants",
                         json={"amount_cents": 300, "reason": "trial", "idempotency_key": f"rb-{customer}"})
        issued = (await admin.post(f"/customers/{customer}/keys", json={})).json()
        await load_customer(core.pool, core.hot, customer, 0, 0)
        await post_usage(core, [usage_event(customer, 40 * CENT)])
        before = await core.hot.snapshot(customer)
        key_hash = hashlib.sha256(issued["key"].encode()).hexdigest()
        await core.hot.redis.delete(api_key(key_hash))
        rebuilt = await admin.post("/hotstate/rebuild", json={"customer_id": customer})
        assert rebuilt.status_code == 200 and rebuilt.json()["keys_written"] == 1
        await admin.post("/hotstate/rebuild")
    after = await core.hot.snapshot(customer)
    assert after["bal"] == before["bal"] == str(260 * CENT) and after["seq"] == before["seq"]
    assert await core.hot.redis.exists(api_key(key_hash)) == 1
    assert await balance_of(core.pool, customer) == 260 * CENT


async def test_health_readiness_and_metrics(ledger: RunningLedger) -> None:
    async with httpx.AsyncClient(base_url=ledger.url) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "nats": "ok"}
    assert "tollgate_ledger_webhooks_total" in metrics.text


async def test_ledger_entries_cannot_be_edited_or_deleted(ledger: RunningLedger) -> None:
    customer = await ledger.new_customer()
    await post_usage(ledger.ledger, [usage_event(customer, 10)])
    for statement in ("UPDATE ledger.entries SET amount_nanos = 0 WHERE customer_id = $1",
                      "DELETE FROM ledger.entries WHERE customer_id = $1"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await ledger.ledger.pool.execute(statement, customer)
    assert await balance_of(ledger.ledger.pool, customer) == -10
