"""Helpers for the ledger tests: settings pointed at the session's servers, signed Dodo webhooks,
usage events and direct reads of the ledger's tables."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from dodopayments import AsyncDodoPayments
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from standardwebhooks import Webhook

from support.servers import AppServer, Infra
from tollgate_contracts import subjects
from tollgate_contracts.events import UsageRecorded
from tollgate_dodo.catalogue import Catalogue, Pack
from tollgate_hotstate import HotState
from tollgate_ledger.context import Ledger
from tollgate_ledger.settings import LedgerSettings
from tollgate_money import NANOS_PER_CENT
from tollgate_platform import bus

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"tollgate-ledger-test-webhook-secret").decode()
ADMIN_TOKEN = "ledger-test-admin-token"
ENTITLEMENT = "cde_ledger_test"
PACK_5 = Pack(product_id="pdt_pack_5", name="$5 pack", price_cents=500, credits=500)
PACK_20 = Pack(product_id="pdt_pack_20", name="$20 pack", price_cents=2000, credits=2000)
CENT = NANOS_PER_CENT


def write_catalogue(path: Path) -> Path:
    Catalogue(credit_entitlement_id=ENTITLEMENT, packs=[PACK_5, PACK_20], credit_precision=7).save(path)
    return path


def settings_for(infra: Infra, catalogue: Path, **overrides: Any) -> LedgerSettings:
    options: dict[str, Any] = {
        "database_url": infra.database_url,
        "nats_url": infra.nats_url,
        "redis_url": infra.redis_url,
        "dodo_base_url": None,
        "dodo_environment": None,
        "dodo_webhook_key": WEBHOOK_SECRET,
        "admin_token": ADMIN_TOKEN,
        "dodo_catalogue_file": catalogue,
        "consume_usage": False,
        "run_reconciler": False,
        "outbox_poll_interval_s": 0.2,
        "drift_confirm_s": 0,
        "log_json": True,
        "log_level": "WARNING",
    }
    options.update(overrides)
    return LedgerSettings(**options)


@dataclass
class RunningLedger:
    server: AppServer
    settings: LedgerSettings

    @property
    def url(self) -> str:
        return str(self.server.url)

    @property
    def ledger(self) -> Ledger:
        ledger: Ledger = self.server.server.config.app.state.ledger  # type: ignore[attr-defined]
        return ledger

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.url}/admin/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )

    async def post_webhook(
        self, event: dict[str, Any] | str | bytes, webhook_id: str | None = None, **kw: Any
    ) -> httpx.Response:
        body, headers = signed(event, webhook_id, **kw)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(f"{self.url}/webhooks/dodo", content=body, headers=headers)

    async def new_customer(self, *, dodo_customer_id: str | None = None, email: str | None = None) -> str:
        async with self.admin() as client:
            response = await client.post("/customers", json={
                "email": email or f"{uuid.uuid4().hex[:10]}@example.com", "name": "Test Customer",
                "dodo_customer_id": dodo_customer_id, "create_in_dodo": False,
            })
            assert response.status_code == 201, response.text
            return str(response.json()["customer_id"])


@dataclass
class DodoLedger(RunningLedger):
    """A ledger wired to a running Dodo emulator."""

    dodo_url: str
    emulator_app: Any

    def sdk(self) -> AsyncDodoPayments:
        return AsyncDodoPayments(bearer_token="dodo-test-key", base_url=self.dodo_url, max_retries=0)

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.request(method, f"{self.dodo_url}/_emulator{path}", **kwargs)
            response.raise_for_status()
            return response.json()

    @property
    def catalogue(self) -> Catalogue:
        found = Catalogue.load(self.settings.dodo_catalogue_file)
        assert found is not None
        return found


def signed(
    event: dict[str, Any] | str | bytes, webhook_id: str | None = None, *, secret: str = WEBHOOK_SECRET,
    timestamp: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A body and its Standard Webhooks headers. Text is signed by the `standardwebhooks` library;
    raw bytes (which need not be UTF-8: the library signs text only) by `sign_bytes`."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = timestamp or datetime.now(UTC)
    if isinstance(event, bytes):
        body, signature = event, sign_bytes(secret, webhook_id, timestamp, event)
    else:
        raw = event if isinstance(event, str) else json.dumps(event)
        body, signature = raw.encode(), Webhook(secret).sign(webhook_id, timestamp, raw)
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }
    return body, headers


def sign_bytes(secret: str, webhook_id: str, timestamp: datetime, body: bytes) -> str:
    """The Standard Webhooks v1 signature of raw bytes: base64 HMAC-SHA256, keyed by the base64
    secret after `whsec_`, of `{id}.{unix seconds}.` + the body."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{int(timestamp.timestamp())}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def envelope(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"business_id": "bus_test", "type": event_type, "timestamp": datetime.now(UTC).isoformat(), "data": data}


def payment_succeeded(
    customer_id: str, payment_id: str | None = None, *, packs: list[tuple[Pack, int]] | None = None,
    tax: int = 0, dodo_customer_id: str = "cus_dodo_unknown", metadata: bool = True,
) -> dict[str, Any]:
    packs = packs if packs is not None else [(PACK_5, 1)]
    subtotal = sum(p.price_cents * q for p, q in packs)
    return envelope("payment.succeeded", {
        "payment_id": payment_id or f"pay_{uuid.uuid4().hex[:12]}",
        "total_amount": subtotal + tax,
        "tax": tax,
        "currency": "USD",
        "status": "succeeded",
        "customer": {"customer_id": dodo_customer_id, "email": "x@example.com", "name": "X"},
        "metadata": {"tollgate_customer_id": customer_id} if metadata else {},
        "product_cart": [{"product_id": p.product_id, "quantity": q} for p, q in packs],
        "created_at": datetime.now(UTC).isoformat(),
    })


def refund_succeeded(payment_id: str, amount: int, refund_id: str | None = None) -> dict[str, Any]:
    return envelope("refund.succeeded", {
        "refund_id": refund_id or f"ref_{uuid.uuid4().hex[:12]}",
        "payment_id": payment_id,
        "amount": amount,
        "currency": "USD",
        "status": "succeeded",
        "is_partial": True,
        "customer": {"customer_id": "cus_dodo_unknown", "email": "x@example.com", "name": "X"},
        "created_at": datetime.now(UTC).isoformat(),
    })


def dispute(event_type: str, payment_id: str, dispute_id: str, amount: int) -> dict[str, Any]:
    return envelope(event_type, {
        "dispute_id": dispute_id, "payment_id": payment_id, "amount": str(amount), "currency": "USD",
        "dispute_stage": "dispute", "dispute_status": "dispute_" + event_type.split(".")[1],
        "created_at": datetime.now(UTC).isoformat(),
    })


def credit_event(dodo_customer_id: str, balance_after_credits: str, *, deducted: bool = False,
                 entitlement: str = ENTITLEMENT, at: datetime | None = None) -> dict[str, Any]:
    event_type = "credit.deducted" if deducted else "credit.added"
    return envelope(event_type, {
        "id": f"cle_{uuid.uuid4().hex[:12]}", "amount": "1", "balance_before": "0",
        "balance_after": balance_after_credits, "overage_before": "0", "overage_after": "0",
        "credit_entitlement_id": entitlement, "customer_id": dodo_customer_id, "is_credit": not deducted,
        "metadata": {}, "transaction_type": "credit_deducted" if deducted else "credit_added",
        "created_at": (at or datetime.now(UTC)).isoformat(),
    })


def usage_event(customer_id: str, cost: int, request_id: str | None = None, *, mode: str = "credits",
                key_id: str = "key_test") -> UsageRecorded:
    now = datetime.now(UTC)
    return UsageRecorded(
        event_id=request_id or f"req_{uuid.uuid4().hex}", customer_id=customer_id, key_id=key_id,
        endpoint="/v1/chat/completions", model="gpt-4o-mini", requested_model="gpt-4o-mini",
        input_tokens=100, output_tokens=50, cost_nanos=cost if mode == "credits" else 0, list_price_nanos=cost,
        price_book_version="test", billing_mode=mode, started_at=now,  # type: ignore[arg-type]
    )


async def balance_of(pool: asyncpg.Pool, customer_id: str) -> int:
    return int(await pool.fetchval("SELECT balance_nanos FROM ledger.accounts WHERE customer_id = $1", customer_id))


async def entries_of(pool: asyncpg.Pool, customer_id: str) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM ledger.entries WHERE customer_id = $1 ORDER BY seq", customer_id))


async def billing_events(nats_url: str, customer_id: str) -> list[tuple[str, dict[str, Any], str]]:
    """Every BILLING message for one customer: (subject, payload, Nats-Msg-Id), in stream order."""
    nc = await bus.connect(nats_url, "ledger-tests")
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            f"billing.*.*.{customer_id}", stream="BILLING",
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=5),
        )
        found: list[tuple[str, dict[str, Any], str]] = []
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.3)
            except TimeoutError:
                break
            for m in msgs:
                found.append((m.subject, json.loads(m.data), (m.headers or {}).get("Nats-Msg-Id", "")))
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def publish(nats_url: str, events: list[UsageRecorded], *, duplicate_ids: bool = False) -> None:
    """Publish as the gateway does. With duplicate_ids the Nats-Msg-Id differs, as it would for a
    redelivery outside JetStream's dedup window, so the consumer really sees the event twice."""
    nc = await bus.connect(nats_url, "ledger-tests-usage")
    try:
        js = nc.jetstream()
        for i in range(0, len(events), 200):
            chunk = events[i : i + 200]
            await asyncio.gather(*(
                bus.publish_raw(
                    js, subjects.for_customer(subjects.USAGE_RECORDED, e.customer_id), e.model_dump_json().encode(),
                    f"{e.event_id}:again" if duplicate_ids else e.event_id,
                ) for e in chunk
            ))
    finally:
        await nc.close()


async def funded_customer(ledger: RunningLedger, credits: int) -> str:
    customer = await ledger.new_customer()
    async with ledger.admin() as admin:
        response = await admin.post(f"/customers/{customer}/grants", json={
            "amount_cents": credits, "reason": "test funds", "idempotency_key": f"fund-{customer}",
        })
        assert response.status_code == 200, response.text
    return customer


async def settle_in_gateway(hot: HotState, event: UsageRecorded) -> None:
    await hot.settle(event.customer_id, event.event_id, cost=event.cost_nanos, mode=event.billing_mode,
                     list_price=event.list_price_nanos, tokens_refund=0, event_json=event.model_dump_json().encode())
