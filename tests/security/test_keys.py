"""API keys: stored hashed, compared in constant time, guessing throttled per client address,
and a revoked key refused by every gateway replica within a second."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import string
import time

import asyncpg
import redis.asyncio as redis

from security.conftest import Tollgate, assert_openai_error, from_address
from tollgate_gateway import auth as gateway_auth
from tollgate_ledger import admin as ledger_admin


async def test_keys_are_stored_hashed_and_never_in_clear(tollgate: Tollgate) -> None:
    c = await tollgate.customer(cents=10, name="hashed")
    digest = hashlib.sha256(c.key.encode()).hexdigest()
    conn = await asyncpg.connect(tollgate.infra.database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM ledger.api_keys WHERE key_id = $1", c.key_id)
        assert row is not None
        assert row["key_hash"] == digest
        assert row["prefix"] == c.key[:12]  # a visible prefix for support, too short to use
        # Nowhere in any table of any schema: every row of every table, as text.
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        for t in tables:
            hits = await conn.fetchval(
                f'SELECT count(*) FROM "{t["table_schema"]}"."{t["table_name"]}" AS r WHERE r::text LIKE $1',
                f"%{c.key[12:]}%",
            )
            assert hits == 0, f"the plaintext key is stored in {t['table_schema']}.{t['table_name']}"
    finally:
        await conn.close()
    r = redis.Redis.from_url(tollgate.infra.redis_url)
    try:
        assert await r.hget(f"apikey:{digest}", "customer_id") == c.customer_id.encode()
        async for name in r.scan_iter(count=1000):
            assert c.key[12:].encode() not in name
            if await r.type(name) == b"hash":
                assert not any(c.key[12:].encode() in v for v in (await r.hgetall(name)).values())
    finally:
        await r.aclose()


async def test_wrong_keys_of_equal_length_are_rejected(tollgate: Tollgate, client_address: str) -> None:
    c = await tollgate.customer(cents=10, name="equal-length")
    alphabet = string.ascii_letters + string.digits

    def other(ch: str) -> str:
        return alphabet[(alphabet.index(ch) + 1) % len(alphabet)]

    # Same length as the real key, differing only in the first, a middle, or the last character.
    near_misses = [c.key[:i] + other(c.key[i]) + c.key[i + 1:] for i in (6, len(c.key) // 2, len(c.key) - 1)]
    for gateway in tollgate.gateways:
        async with from_address(gateway, client_address) as client:
            for wrong in near_misses:
                assert len(wrong) == len(c.key)
                r = await client.get("/v1/models", headers={"Authorization": f"Bearer {wrong}"})
                body = assert_openai_error(r, 401)
                assert body["error"]["code"] == "invalid_api_key"
                assert wrong not in r.text and c.key not in r.text  # at most a masked hint
            ok = await client.get("/v1/models", headers={"Authorization": f"Bearer {c.key}"})
            assert ok.status_code == 200


def test_secrets_are_compared_in_constant_time() -> None:
    """Code review as a test: the gateway looks keys up by their SHA-256 (a lookup by digest
    reveals nothing about how close a guess was) and confirms with hmac.compare_digest; the admin
    token is compared with hmac.compare_digest too. No `==` on a secret."""
    gateway_source = inspect.getsource(gateway_auth.Authenticator.authenticate)
    assert "key_hash(presented)" in gateway_source and "hmac.compare_digest" in gateway_source
    admin_source = inspect.getsource(ledger_admin.require_admin)
    assert "hmac.compare_digest" in admin_source
    assert "== expected" not in admin_source and "!= expected" not in admin_source


async def test_repeated_failures_from_one_address_are_slowed_down(tollgate: Tollgate, client_address: str) -> None:
    c = await tollgate.customer(cents=10, name="throttle")
    gateway = tollgate.gateways[0]
    async with from_address(gateway, client_address) as guesser:
        statuses = []
        for i in range(40):
            r = await guesser.get("/v1/models", headers={"Authorization": f"Bearer sk-tg-guess{i:035d}"})
            statuses.append(r.status_code)
        assert statuses[0] == 401
        assert statuses[-1] == 429, statuses
        first_429 = statuses.index(429)
        assert 1 <= first_429 <= 31, statuses  # GATEWAY_AUTH_FAILURES_PER_MINUTE = 30
        throttled = await guesser.get("/v1/models", headers={"Authorization": f"Bearer {c.key}"})
        body = assert_openai_error(throttled, 429)
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
        # A spoofed X-Forwarded-For from an untrusted address does not escape the throttle.
        spoofed = await guesser.get("/v1/models", headers={"Authorization": f"Bearer {c.key}",
                                                          "X-Forwarded-For": "203.0.113.7"})
        assert spoofed.status_code == 429
    # Other addresses are not punished for it.
    async with from_address(gateway, client_address.rsplit(".", 1)[0] + ".251") as honest:
        assert (await honest.get("/v1/models", headers={"Authorization": f"Bearer {c.key}"})).status_code == 200


async def test_a_revoked_key_stops_working_within_a_second_on_every_gateway(
    tollgate: Tollgate, client_address: str
) -> None:
    c = await tollgate.customer(cents=10, name="revoked")
    headers = {"Authorization": f"Bearer {c.key}"}
    clients = [from_address(g, client_address) for g in tollgate.gateways]
    try:
        for client in clients:  # every replica has the key cached
            for _ in range(3):
                assert (await client.get("/v1/billing/balance", headers=headers)).status_code == 200
        async with tollgate.admin() as admin:
            r = await admin.post(f"/admin/v1/keys/{c.key_id}/revoke")
            assert r.status_code == 200 and r.json()["status"] == "revoked"
        revoked_at = time.monotonic()

        async def refused_within_a_second(client: object) -> float:
            assert hasattr(client, "get")
            while True:
                r = await client.get("/v1/billing/balance", headers=headers)
                elapsed = time.monotonic() - revoked_at
                if r.status_code == 401:
                    assert_openai_error(r, 401)
                    return elapsed
                assert r.status_code == 200
                assert elapsed < 1.0, "the revoked key still worked after a second"
                await asyncio.sleep(0.02)

        took = await asyncio.gather(*(refused_within_a_second(client) for client in clients))
        assert all(t < 1.0 for t in took), took
        for client in clients:  # and it stays refused
            assert (await client.get("/v1/models", headers=headers)).status_code == 401
    finally:
        for client in clients:
            await client.aclose()
