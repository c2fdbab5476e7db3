"""The operator APIs need the admin credential and nothing else opens them (a customer key least
of all); a customer only ever sees and spends its own balance, whatever the request says."""

from __future__ import annotations

import httpx
import pytest

from security.conftest import Tollgate, assert_openai_error, from_address
from support.servers import eventually


async def _admin_get_routes(tollgate: Tollgate) -> list[str]:
    async with httpx.AsyncClient(base_url=tollgate.ledger, timeout=30) as client:
        spec = (await client.get("/openapi.json")).json()
    return [path.replace("{customer_id}", "cus_tg_someone").replace("{key_id}", "key_someone")
            for path, ops in spec["paths"].items() if path.startswith("/admin/") and "get" in ops]


async def test_the_admin_api_requires_its_own_credential(tollgate: Tollgate, client_address: str) -> None:
    customer = await tollgate.customer(cents=10, name="not-an-operator")
    routes = await _admin_get_routes(tollgate)
    assert "/admin/v1/customers" in routes
    wrong_same_length = "x" * len(tollgate.secrets.admin_token)
    async with from_address(tollgate.ledger, client_address) as client:
        for path in routes:
            missing = await client.get(path)
            assert missing.status_code == 401, (path, missing.status_code)
            assert missing.json()["error"]["type"] == "authentication_error"
            for credential in (customer.key, wrong_same_length, tollgate.secrets.admin_token + "x"):
                r = await client.get(path, headers={"Authorization": f"Bearer {credential}"})
                assert r.status_code == 403, (path, r.status_code)
                assert "error" in r.json()
            basic = await client.get(path, headers={"Authorization": f"Basic {tollgate.secrets.admin_token}"})
            assert basic.status_code in (401, 403)
        # The same operations with the operator token work.
        r = await client.get("/admin/v1/customers",
                             headers={"Authorization": f"Bearer {tollgate.secrets.admin_token}"})
        assert r.status_code == 200
        # Writes are refused before anything happens.
        grant = await client.post(f"/admin/v1/customers/{customer.customer_id}/grants",
                                  headers={"Authorization": f"Bearer {customer.key}"},
                                  json={"amount_cents": 100000, "reason": "free money", "idempotency_key": "steal"})
        assert grant.status_code == 403
    assert (await tollgate.balance(customer.customer_id))["balance_nanos"] == 10 * 10_000_000


@pytest.mark.parametrize("service, path", [
    ("tier", "/admin/v1/tiers"), ("notifier", "/admin/v1/deliveries"),
])
async def test_the_other_operator_apis_refuse_customer_keys(
    tollgate: Tollgate, client_address: str, service: str, path: str
) -> None:
    customer = await tollgate.customer(name=f"{service}-probe")
    async with from_address(tollgate.system.url(service), client_address) as client:
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers={"Authorization": f"Bearer {customer.key}"})).status_code in (401, 403)
        ok = await client.get(path, headers={"Authorization": f"Bearer {tollgate.secrets.admin_token}"})
        assert ok.status_code == 200


async def test_the_gateway_has_no_admin_surface(tollgate: Tollgate, client_address: str) -> None:
    """A customer key cannot reach anything operator-like through the gateway either."""
    customer = await tollgate.customer(cents=10, name="gateway-probe")
    headers = {"Authorization": f"Bearer {customer.key}"}
    async with from_address(tollgate.gateways[0], client_address) as client:
        for path in ("/admin/v1/customers", "/v1/admin/customers", "/v1/billing/balance/../../admin/v1/customers",
                     f"/v1/customers/{customer.customer_id}/grants"):
            r = await client.get(path, headers=headers)
            assert r.status_code in (404, 405), (path, r.status_code)


async def test_a_customer_reads_only_its_own_balance(tollgate: Tollgate, client_address: str) -> None:
    alice = await tollgate.customer(cents=7, name="alice")
    bob = await tollgate.customer(cents=300, name="bob")
    attempts = [
        ({}, {}),
        ({"customer_id": bob.customer_id}, {}),
        ({"customer": bob.customer_id, "user": bob.customer_id}, {}),
        ({}, {"X-Customer-Id": bob.customer_id}),
        ({}, {"OpenAI-Organization": bob.customer_id, "OpenAI-Project": bob.customer_id}),
        ({}, {"X-Tollgate-Customer": bob.customer_id}),
    ]
    for gateway in tollgate.gateways:
        async with from_address(gateway, client_address) as client:
            for params, extra in attempts:
                r = await client.get("/v1/billing/balance", params=params,
                                     headers={"Authorization": f"Bearer {alice.key}", **extra})
                assert r.status_code == 200
                body = r.json()
                assert body["customer_id"] == alice.customer_id
                assert body["posted"]["nanos"] == 7 * 10_000_000
                assert bob.customer_id not in r.text
            other = await client.get(f"/v1/billing/balance/{bob.customer_id}",
                                     headers={"Authorization": f"Bearer {alice.key}"})
            assert_openai_error(other, 404)


async def test_a_customer_can_never_spend_another_customers_balance(tollgate: Tollgate, client_address: str) -> None:
    alice = await tollgate.customer(cents=5, name="alice-spends")
    bob = await tollgate.customer(cents=500, name="bob-pays-nothing")
    body = {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "on someone else's tab"}],
        "max_tokens": 20, "user": bob.customer_id, "customer_id": bob.customer_id,
        "metadata": {"customer_id": bob.customer_id}, "mock": {"output_tokens": 10},
    }
    headers = {"Authorization": f"Bearer {alice.key}", "X-Customer-Id": bob.customer_id,
               "OpenAI-Organization": bob.customer_id}
    async with from_address(tollgate.gateways[1], client_address) as client:
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        charged = r.headers["x-tollgate-cost-usd"]
    assert charged != "0"

    async def posted() -> bool:
        a = await tollgate.balance(alice.customer_id)
        return a["balance_nanos"] < 5 * 10_000_000

    await eventually(posted, timeout=20, interval=0.2)
    assert (await tollgate.balance(bob.customer_id))["balance_nanos"] == 500 * 10_000_000
    # With Alice's balance used up, Bob's money does not let her requests through.
    async with from_address(tollgate.gateways[0], client_address) as client:
        big = {**body, "model": "gpt-4o", "max_tokens": 16000, "mock": {"output_tokens": 16000},
               "messages": [{"role": "user", "content": "x " * 20000}]}
        r = await client.post("/v1/chat/completions", json=big, headers=headers)
        assert_openai_error(r, 402)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/admin/v1/customers/cus_tg_a%00b", None),
    ("GET", "/admin/v1/customers?email=a%00b", None),
    ("GET", "/admin/v1/customers?after=%00", None),
    ("POST", "/admin/v1/customers", {"email": "nul\u0000@example.com", "name": "n"}),
    ("POST", "/admin/v1/customers", {"email": "nul@example.com", "name": "a\u0000b"}),
    ("POST", "/admin/v1/customers/{customer}/grants",
     {"amount_cents": 1, "reason": "nul \u0000 reason", "idempotency_key": "k\u0000"}),
], ids=["path id", "query email", "query cursor", "body email", "body name", "grant reason"])
async def test_a_nul_character_in_admin_input_is_a_4xx_not_a_crash(
    tollgate: Tollgate, method: str, path: str, body: dict[str, object] | None
) -> None:
    """Postgres text cannot hold U+0000: the API must refuse it (422/404), not pass it to the
    database and answer 500 (found by the schema fuzzing below)."""
    customer = await tollgate.customer(cents=1, name="nul")
    async with tollgate.admin() as admin:
        r = await admin.request(method, path.replace("{customer}", customer.customer_id), json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "error" in r.json()
    assert (await tollgate.balance(customer.customer_id))["balance_nanos"] == 10_000_000
