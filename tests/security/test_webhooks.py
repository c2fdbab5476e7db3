"""Dodo webhooks at the ledger: anything not signed with the endpoint's secret, signed too long
ago or for the future, not JSON, of an unknown type, or too big gets the right status, moves no
money, is not applied, and the ledger keeps serving."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook

from security.conftest import Customer, Tollgate
from support.servers import eventually

PACK_CENTS = 500


@dataclass
class Paid:
    customer: Customer
    payload: str  # the real payment.succeeded body Dodo sent
    webhook_id: str


@pytest.fixture(scope="module")
async def paid(tollgate: Tollgate) -> Paid:
    """A customer who bought a pack through the emulator's checkout, and the real webhook body."""
    customer = await tollgate.customer(name="webhook-buyer")
    async with tollgate.admin() as admin:
        r = await admin.post(f"/admin/v1/customers/{customer.customer_id}/checkout",
                             json={"pack": "Tollgate credits $5"})
        r.raise_for_status()
        session_id = r.json()["session_id"]
    async with tollgate.dodo() as dodo:
        (await dodo.post(f"/_emulator/checkouts/{session_id}/pay")).raise_for_status()

    async def applied() -> asyncpg.Record | None:
        conn = await asyncpg.connect(tollgate.infra.database_url)
        try:
            return await conn.fetchrow(
                "SELECT webhook_id, payload FROM ledger.webhook_inbox WHERE type = 'payment.succeeded' "
                "AND customer_id = $1 AND outcome = 'applied'", customer.customer_id,
            )
        finally:
            await conn.close()

    row = await eventually(applied, timeout=30, interval=0.2)
    return Paid(customer, row["payload"], row["webhook_id"])


@pytest.fixture
async def ledger(tollgate: Tollgate) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tollgate.ledger, timeout=30) as client:
        yield client


def _forged(payload: str) -> str:
    """The same payment under a new id: applying it would credit another pack."""
    body = json.loads(payload)
    body["data"]["payment_id"] = "pay_forged" + secrets.token_hex(6)
    return json.dumps(body)


def _signed(secret: str, body: str, *, at: datetime | None = None, webhook_id: str | None = None) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_sec{secrets.token_hex(8)}"
    at = at or datetime.now(UTC)
    return {
        "webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body), "content-type": "application/json",
    }


def _signed_bytes(secret: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks over raw bytes (the library signs str only): HMAC-SHA256 of id.ts.body."""
    webhook_id, ts = f"msg_sec{secrets.token_hex(8)}", str(int(datetime.now(UTC).timestamp()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(), "content-type": "application/json"}


async def _stored(tollgate: Tollgate, webhook_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(tollgate.infra.database_url)
    try:
        return await conn.fetchrow("SELECT outcome FROM ledger.webhook_inbox WHERE webhook_id = $1", webhook_id)
    finally:
        await conn.close()


async def _balance(tollgate: Tollgate, paid: Paid) -> int:
    return int((await tollgate.balance(paid.customer.customer_id))["balance_nanos"])


async def test_a_real_webhook_applies_once_and_a_replay_moves_nothing(
    tollgate: Tollgate, paid: Paid, ledger: httpx.AsyncClient
) -> None:
    assert await _balance(tollgate, paid) == PACK_CENTS * 10_000_000
    r = await ledger.post("/webhooks/dodo", content=paid.payload,
                          headers=_signed(tollgate.secrets.webhook_key, paid.payload, webhook_id=paid.webhook_id))
    assert r.status_code == 200 and r.json()["status"] == "duplicate"
    assert await _balance(tollgate, paid) == PACK_CENTS * 10_000_000


@pytest.mark.parametrize("case", ["wrong secret", "no signature", "no headers", "tampered body", "stale", "future",
                                  "signature of another id"])
async def test_unverifiable_webhooks_are_refused_with_401(
    tollgate: Tollgate, paid: Paid, ledger: httpx.AsyncClient, case: str
) -> None:
    body = _forged(paid.payload)
    key = tollgate.secrets.webhook_key
    other_key = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    now = datetime.now(UTC)
    headers = {
        "wrong secret": lambda: _signed(other_key, body),
        "no signature": lambda: {k: v for k, v in _signed(key, body).items() if k != "webhook-signature"},
        "no headers": lambda: {"content-type": "application/json"},
        "tampered body": lambda: _signed(key, body.replace("payment.succeeded", "payment.succeeded ")),
        "stale": lambda: _signed(key, body, at=now - timedelta(minutes=10)),
        "future": lambda: _signed(key, body, at=now + timedelta(minutes=10)),
        "signature of another id": lambda: {**_signed(key, body), "webhook-id": "msg_other"},
    }[case]()
    r = await ledger.post("/webhooks/dodo", content=body, headers=headers)
    assert r.status_code == 401, (case, r.status_code, r.text)
    assert "error" in r.json()
    if "webhook-id" in headers:
        assert await _stored(tollgate, headers["webhook-id"]) is None
    assert await _balance(tollgate, paid) == PACK_CENTS * 10_000_000


async def test_an_unknown_event_type_is_kept_but_moves_nothing(
    tollgate: Tollgate, paid: Paid, ledger: httpx.AsyncClient
) -> None:
    body = json.loads(_forged(paid.payload))
    body["type"] = "payment.teleported"
    text = json.dumps(body)
    headers = _signed(tollgate.secrets.webhook_key, text)
    r = await ledger.post("/webhooks/dodo", content=text, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "ignored", r.text
    stored = await _stored(tollgate, headers["webhook-id"])
    assert stored is not None and stored["outcome"] == "ignored"
    assert await _balance(tollgate, paid) == PACK_CENTS * 10_000_000


@pytest.mark.parametrize("body", [
    b'{"type": "payment.succeeded", "data": ', b"not json at all", b"[]", b'{"data": {}}', b'"payment.succeeded"',
    b'{"type": "payment.succeeded", "data": {"payment_id": "\xed\xa0\x80"}}',  # not UTF-8 (an encoded surrogate)
    b'{"type": "payment.succeeded\x00", "data": \x00}', b"",
], ids=["truncated", "text", "array", "no type", "string", "invalid utf-8", "NUL", "empty"])
async def test_signed_but_malformed_bodies_are_refused_with_400(
    tollgate: Tollgate, paid: Paid, ledger: httpx.AsyncClient, body: bytes
) -> None:
    headers = _signed_bytes(tollgate.secrets.webhook_key, body)
    r = await ledger.post("/webhooks/dodo", content=body, headers=headers)
    assert r.status_code == 400, (body, r.status_code, r.text)
    assert await _stored(tollgate, headers["webhook-id"]) is None
    assert await _balance(tollgate, paid) == PACK_CENTS * 10_000_000


async def test_huge_bodies_are_refused_with_413(tollgate: Tollgate, paid: Paid, ledger: httpx.AsyncClient) -> None:
    body = json.dumps({"type": "payment.succeeded", "padding": "x" * (2 * 1024 * 1024)})
    headers = _signed(tollgate.secrets.webhook_key, body)
    r = await ledger.post("/webhooks/dodo", content=body, headers=headers)
    assert r.status_code == 413, r.status_code

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536].encode()

    chunked = _signed(tollgate.secrets.webhook_key, body)
    r = await ledger.post("/webhooks/dodo", content=chunks(), headers=chunked)
    assert r.status_code == 413, r.status_code
    assert await _stored(tollgate, headers["webhook-id"]) is None
    assert await _stored(tollgate, chunked["webhook-id"]) is None
    assert (await ledger.get("/healthz")).status_code == 200
    assert await _balance(tollgate, paid) == PACK_CENTS * 10_000_000
