"""The world the subscription tests drive: admin API, Dodo emulator control, the real gateway
through the official OpenAI SDK, the mock upstream's request log, the hot state and the bus."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from dodopayments import AsyncDodoPayments
from openai import AsyncOpenAI

from ledger.support import ADMIN_TOKEN, billing_events
from support.servers import AppServer, Infra, eventually
from tollgate_hotstate import HotState, create_redis
from tollgate_ledger.settings import LedgerSettings
from tollgate_money import PriceBook, TokenUsage
from tollgate_platform.settings import REPO_ROOT

# Tiny caps so a handful of requests crosses them (list price, nanos; 1 USD = 10^9).
PLUS_CAP = 500_000  # $0.0005: about three small gpt-4o calls
TEAM_CAP_PER_SEAT = 400_000
FREE_DAILY_CAP = 200_000

TEST_PLANS = f"""
[plans.free]
models = ["gpt-4o-mini"]
daily_hard_cap_usd = "{FREE_DAILY_CAP / 10**9:.4f}"

[plans.plus]
models = ["gpt-4o", "gpt-4o-mini", "o1"]
soft_cap_usd = "{PLUS_CAP / 10**9:.4f}"
fallback = {{ "gpt-4o" = "gpt-4o-mini", "o1" = "gpt-4o-mini" }}

[plans.team]
models = ["gpt-4o", "gpt-4o-mini", "o1"]
soft_cap_usd_per_seat = "{TEAM_CAP_PER_SEAT / 10**9:.4f}"
fallback = {{ "gpt-4o" = "gpt-4o-mini", "o1" = "gpt-4o-mini" }}

[plans.enterprise]
models = ["gpt-4o", "gpt-4o-mini", "o1"]
"""


def write_pricing(path: Path) -> Path:
    """The real price book's models with the plans above (and its own version)."""
    models = (REPO_ROOT / "config" / "pricing.toml").read_text().split("# Flat plans")[0]
    path.write_text(models.replace('version = "', 'version = "subscriptions-test-', 1) + TEST_PLANS)
    return path


def write_tiers(path: Path) -> Path:
    """Rate limits out of the way: these tests are about who pays, not how fast."""
    path.write_text('preset = "test"\n[[presets.test]]\nname = "tier-1"\nmin_spend_usd = "0"\n'
                    "rpm = 100000\ntpm = 100000000\n")
    return path


@dataclass
class Reply:
    """One gateway answer, as the client sees it."""

    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def mode(self) -> str | None:
        return _optional(self.headers.get("x-tollgate-billing-mode"))

    @property
    def downgraded_from(self) -> str | None:
        return _optional(self.headers.get("x-tollgate-downgraded-from"))

    @property
    def request_id(self) -> str:
        return str(self.headers.get("x-request-id"))

    @property
    def error_code(self) -> str | None:
        error = self.body.get("error")
        return _optional(error.get("code")) if isinstance(error, dict) else None

    def list_price(self, book: PriceBook) -> int:
        """What the call's tokens cost at list price, computed here from the usage it returned."""
        usage = self.body["usage"]
        price = book.price(self.model)
        assert price is not None
        tokens = TokenUsage(input_tokens=usage.get("prompt_tokens", 0), output_tokens=usage.get("completion_tokens", 0))
        return price.cost(tokens)


def _optional(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass
class World:
    infra: Infra
    settings: LedgerSettings
    ledger_server: AppServer
    dodo_url: str
    upstream_url: str
    gateway_url: str
    book: PriceBook
    _hot: HotState | None = field(default=None, repr=False)

    @property
    def ledger_url(self) -> str:
        return str(self.ledger_server.url)

    @property
    def hot(self) -> HotState:
        if self._hot is None:
            self._hot = HotState(create_redis(self.infra.redis_url))
        return self._hot

    async def close(self) -> None:
        if self._hot is not None:
            await self._hot.redis.aclose()

    # -- the ledger's admin API and the emulator ---------------------------------------------------

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"{self.ledger_url}/admin/v1",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=15)

    async def call(self, method: str, path: str, expect: int | None = 200, **kwargs: Any) -> Any:
        async with self.admin() as admin:
            response = await admin.request(method, path, **kwargs)
        if expect is not None:
            assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(timeout=15) as client:
            response = await client.request(method, f"{self.dodo_url}/_emulator{path}", **kwargs)
            response.raise_for_status()
            return response.json()

    def sdk(self) -> AsyncDodoPayments:
        return AsyncDodoPayments(bearer_token="dodo-subscriptions-test-key", base_url=self.dodo_url, max_retries=0)

    async def new_customer(self) -> str:
        created = await self.call("POST", "/customers", expect=201, json={
            "email": f"{uuid.uuid4().hex[:12]}@example.com", "name": "Subscriber",
        })
        assert created["dodo_customer_id"], "the Dodo customer is created through the SDK"
        return str(created["customer_id"])

    async def plan(self, customer_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/customers/{customer_id}/subscription"))

    async def wait_plan(self, customer_id: str, **expected: Any) -> dict[str, Any]:
        async def matches() -> dict[str, Any] | None:
            current = await self.plan(customer_id)
            return current if all(current.get(k) == v for k, v in expected.items()) else None

        return dict(await eventually(matches, timeout=20))

    async def subscribe(self, customer_id: str, plan: str, seats: int = 1) -> str:
        """Check out through the ledger's link and pay on the emulator; returns when the ledger
        has applied Dodo's subscription.active webhook."""
        link = await self.call("POST", f"/customers/{customer_id}/subscriptions/checkout",
                               json={"plan": plan, "seats": seats})
        assert link["checkout_url"]
        paid = await self.control("POST", f"/checkouts/{link['session_id']}/pay")
        await self.wait_plan(customer_id, plan=plan, status="active", seats=seats)
        return str(paid["subscription_id"])

    async def issue_key(self, customer_id: str, member_id: str | None = None) -> str:
        path = f"/customers/{customer_id}/members/{member_id}/keys" if member_id else f"/customers/{customer_id}/keys"
        issued = await self.call("POST", path, expect=201, json={"name": "test"})
        return str(issued["key"])

    async def grant(self, customer_id: str, cents: int) -> None:
        await self.call("POST", f"/customers/{customer_id}/grants", json={
            "amount_cents": cents, "reason": "test credits", "idempotency_key": uuid.uuid4().hex,
        })

    async def balance(self, customer_id: str) -> int:
        return int((await self.call("GET", f"/customers/{customer_id}/balance"))["balance_nanos"])

    async def usage_entries(self, customer_id: str) -> list[dict[str, Any]]:
        history = await self.call("GET", f"/customers/{customer_id}/entries", params={"limit": 1000})
        return [e for e in history["data"] if e["kind"] == "usage"]

    async def events(self, customer_id: str, kind: str) -> list[dict[str, Any]]:
        """BILLING events of one kind (e.g. `softcap.reached`) for the customer, in order."""
        found = await billing_events(self.infra.nats_url, customer_id)
        return [payload | {"_msg_id": msg_id} for subject, payload, msg_id in found
                if subject.startswith(f"billing.{kind}.")]

    # -- the gateway -------------------------------------------------------------------------------

    def client(self, key: str) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.gateway_url}/v1", api_key=key, max_retries=0)

    async def chat(self, key: str, model: str, **kwargs: Any) -> Reply:
        async with self.client(key) as client:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": "Say something short."}],
                    max_completion_tokens=16, **kwargs,
                )
            except openai.APIStatusError as exc:
                return Reply(exc.status_code, exc.response.headers, exc.response.json())
            return Reply(raw.status_code, raw.headers, raw.parse().model_dump())

    async def stream(self, key: str, model: str) -> tuple[Mapping[str, str], list[str], dict[str, Any]]:
        """A streamed chat: (headers, the model named by each chunk, the gateway's billing facts)."""
        async with self.client(key) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "Say something short."}],
                max_completion_tokens=16, stream=True, stream_options={"include_usage": True},
            )
            models, billing = [], {}
            async for chunk in raw.parse():
                models.append(chunk.model)
                if chunk.usage is not None:
                    billing = dict((chunk.usage.model_extra or {}).get("tollgate") or {})
            return raw.headers, models, billing

    async def embed(self, key: str) -> Reply:
        async with self.client(key) as client:
            try:
                raw = await client.embeddings.with_raw_response.create(
                    model="text-embedding-3-small", input="a few words", encoding_format="float",
                )
            except openai.APIStatusError as exc:
                return Reply(exc.status_code, exc.response.headers, exc.response.json())
            return Reply(raw.status_code, raw.headers, raw.parse().model_dump())

    async def upstream_model(self, reply: Reply) -> str:
        """The model the upstream was actually asked for (the mock's request log)."""
        async with httpx.AsyncClient(timeout=10) as client:
            log = (await client.get(f"{self.upstream_url}/_mock/requests")).json()["requests"]
        sent = [r for r in log if r["headers"].get("x-client-request-id") == reply.request_id]
        assert len(sent) == 1, f"the upstream saw {len(sent)} requests for {reply.request_id}"
        return str(sent[0]["body"]["model"])

    async def hot_fields(self, customer_id: str) -> dict[str, str]:
        return await self.hot.snapshot(customer_id)

    async def wait_hot(self, customer_id: str, **expected: int | str) -> dict[str, str]:
        """Until the gateway's hot copy shows these values (e.g. pused after a settle)."""
        async def matches() -> dict[str, str] | None:
            snap = await self.hot_fields(customer_id)
            return snap if all(snap.get(k) == str(v) for k, v in expected.items()) else None

        return dict(await eventually(matches, timeout=20))
