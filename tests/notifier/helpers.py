"""What the notifier tests share: event builders, sink readers, and a quiescence check (every
notifier consumer drained and nothing left to send), so "exactly once" is asserted after the
system has finished, never after a sleep."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from nats.js import JetStreamContext

from support.servers import ManagedProcess, eventually
from tollgate_contracts import streams, subjects
from tollgate_contracts.events import BalanceChanged, Event
from tollgate_platform import bus

ADMIN_TOKEN = "notifier-test-admin-token"
HOOK_SECRET = "whsec_" + "bm90aWZpZXItdGVzdC1ob29rLXNlY3JldA=="  # base64("notifier-test-hook-secret")
USD = 1_000_000_000


@dataclass
class Sinks:
    smtp_url: str
    smtp_port: int
    slack_url: str
    http: httpx.AsyncClient

    async def emails(self, to: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.smtp_url}/messages", params={"to": to})
        return list(response.json())

    async def slack_messages(self, containing: str, path: str | None = None) -> list[dict[str, Any]]:
        items = (await self.http.get(f"{self.slack_url}/messages")).json()
        return [m for m in items if containing in (m["text"] or "") and (path is None or m["path"] == path)]

    async def hooks(self, name: str) -> list[dict[str, Any]]:
        return list((await self.http.get(f"{self.slack_url}/hooks/{name}")).json())

    async def refuse_smtp(self, seconds: float) -> None:
        (await self.http.post(f"{self.smtp_url}/_sink/refuse", json={"seconds": seconds})).raise_for_status()

    async def smtp_refused_count(self) -> int:
        return int((await self.http.get(f"{self.smtp_url}/_sink/refuse")).json()["refused"])


@dataclass
class Cluster:
    replicas: list[ManagedProcess]
    js: JetStreamContext
    admin: httpx.AsyncClient
    sinks: Sinks

    async def publish(self, subject: str, event: Event, msg_id: str | None = None) -> None:
        """msg_id differing from event.msg_id makes JetStream store a second copy (no dedup), so
        the consumers really see the event twice, like a redelivery after a lost ack."""
        await bus.publish_raw(self.js, subject, event.model_dump_json().encode(), msg_id or event.msg_id)

    async def deliveries(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.admin.get("/admin/v1/deliveries", params={"limit": 500, **params})
        response.raise_for_status()
        return list(response.json()["data"])

    async def set_prefs(self, customer_id: str, **prefs: Any) -> dict[str, Any]:
        response = await self.admin.put(f"/admin/v1/preferences/{customer_id}", json=prefs)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def settled(self, customer_id: str | None = None) -> None:
        """Wait until every notifier consumer has acked everything and no delivery is pending."""

        async def drained() -> bool:
            for spec in (streams.NOTIFIER_BILLING, streams.NOTIFIER_TIERS, streams.NOTIFIER_DEADLETTERS):
                info = await self.js.consumer_info(spec.stream.name, spec.durable)
                if info.num_pending or info.num_ack_pending:
                    return False
            params = {"customer_id": customer_id} if customer_id else {}
            return not await self.deliveries(status="pending", **params)

        await eventually(drained, timeout=30)


def customer() -> str:
    return f"cus_{uuid.uuid4().hex[:10]}"


def balance_event(customer_id: str, seq: int, reason: str, balance_usd: float,
                  threshold_usd: float | None = 5.0) -> BalanceChanged:
    return BalanceChanged(
        customer_id=customer_id,
        balance_nanos=round(balance_usd * USD),
        seq=seq,
        threshold_nanos=None if threshold_usd is None else round(threshold_usd * USD),
        last_topup_nanos=20 * USD,
        reason=reason,
        occurred_at=datetime.now(UTC),
    )


def balance_subject(reason: str, customer_id: str) -> str:
    base = {"low": subjects.BALANCE_LOW, "depleted": subjects.BALANCE_DEPLETED,
            "restored": subjects.BALANCE_RESTORED, "updated": subjects.BALANCE_UPDATED}[reason]
    return subjects.for_customer(base, customer_id)
