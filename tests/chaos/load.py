"""The customers of a chaos run and the load they send: chat completions, streamed and not,
through both gateways, with bounded concurrency and a bounded rate. Every request's outcome is
recorded exactly as the client saw it; the audit compares that with what was billed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import httpx
import orjson

from support.system import System
from tollgate_money import NANOS_PER_CENT, usd_to_nanos

PACK_NAME = "Tollgate credits $5"
PACK_CENTS = 500
PACK_CREDITS = 500

OutcomeKind = Literal[
    "ok",  # 200 and a complete answer (stream: [DONE] with no in-band error)
    "refused",  # the gateway answered an error before any upstream call could have been made
    "upstream_failed",  # 502/504, or a stream that ended with an in-band error: must cost nothing
    "aborted",  # the client hung up mid-stream on purpose: billed for what was generated, or nothing
    "unknown",  # connection broke after the request was sent (a killed gateway): at most one charge
    "gateway_error",  # 500: the gateway's own failure, outcome unknown to the client: at most one charge
    "not_sent",  # could not connect: nothing can have happened
]
# Statuses the gateway answers before it calls the upstream (docs/gateway.md, Errors).
REFUSED_STATUSES = {400, 401, 402, 403, 404, 405, 413, 429, 503}
UPSTREAM_FAILED_STATUSES = {502, 504}


@dataclass
class Customer:
    index: int
    customer_id: str
    dodo_customer_id: str | None
    key: str
    kind: Literal["grant", "pack"]
    grants_nanos: int = 0
    payments: list[dict[str, Any]] = field(default_factory=list)  # {payment_id, total_cents, credits}
    refunds: list[dict[str, Any]] = field(default_factory=list)  # {refund_id, payment_id, amount_cents}


@dataclass
class Outcome:
    customer_id: str
    gateway: int
    stream: bool
    kind: OutcomeKind
    status: int | None = None
    request_id: str | None = None
    cost_nanos: int | None = None  # what the gateway told the client it charged, when it did
    detail: str | None = None


def _cost_nanos(usd: str | None) -> int | None:
    return usd_to_nanos(Decimal(usd)) if usd else None


@dataclass
class Load:
    system: System
    customers: list[Customer]
    rng: random.Random
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def counts(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    async def run(self, *, concurrency: int, max_requests: int, max_s: float) -> None:
        """Send until `stop` is set, max_requests were sent, or max_s elapsed; paced so the
        requests spread over the whole time (the faults need load while they happen)."""
        interval = max_s / max_requests
        started = time.monotonic()
        issued = 0
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        clients = [
            httpx.AsyncClient(base_url=self.system.url("gateway", i), timeout=httpx.Timeout(30, connect=2),
                              limits=limits)
            for i in range(len(self.system.replicas["gateway"]))
        ]

        async def worker() -> None:
            nonlocal issued
            while not self.stop.is_set():
                now = time.monotonic()
                if issued >= max_requests or now - started >= max_s:
                    return
                slot = started + issued * interval
                issued += 1
                if slot > now:
                    await asyncio.sleep(slot - now)
                gateway = self.rng.randrange(len(clients))
                self.outcomes.append(await self._one(clients[gateway], gateway))

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            for client in clients:
                await client.aclose()

    def _body(self, customer: Customer, stream: bool) -> tuple[dict[str, Any], str]:
        rng = self.rng
        model = "gpt-4o" if rng.random() < 0.8 else "gpt-4o-mini"
        mock: dict[str, Any] = {"output_tokens": rng.randint(5, 250)}
        prompt = f"chaos {customer.index}: " + "tell me more " * rng.randint(1, 20)
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
            "mock": mock,
        }
        if rng.random() < 0.8:
            body["max_tokens"] = rng.randint(16, 300)  # else the model's maximum is reserved (and lowered)
        if stream:
            mock["chunk_delay_ms"] = rng.choice((0, 1, 3))
            if rng.random() < 0.85:
                body["stream_options"] = {"include_usage": True}
        roll = rng.random()
        behaviour = "normal"
        if roll < 0.03:
            mock["fail"] = rng.choice(("500", "mid_stream", "mid_stream_error") if stream else ("500", "503"))
            mock["fail_after_chunks"] = 2
            behaviour = "fail"
        elif roll < 0.05:
            body["model"] = "no-such-model"
            behaviour = "bad"
        elif stream and roll < 0.10:
            behaviour = "abort"
        return body, behaviour

    async def _one(self, client: httpx.AsyncClient, gateway: int) -> Outcome:
        customer = self.rng.choice(self.customers)
        stream = self.rng.random() < 0.5
        body, behaviour = self._body(customer, stream)
        headers = {"Authorization": f"Bearer {customer.key}", "Content-Type": "application/json"}
        content = orjson.dumps(body)
        out = Outcome(customer.customer_id, gateway, stream, "unknown")
        try:
            if stream:
                await self._stream(client, content, headers, behaviour, out)
            else:
                response = await client.post("/v1/chat/completions", content=content, headers=headers)
                out.status = response.status_code
                out.request_id = response.headers.get("x-request-id")
                if response.status_code == 200:
                    response.json()  # a complete body, not one cut short
                    out.kind = "ok"
                    out.cost_nanos = _cost_nanos(response.headers.get("x-tollgate-cost-usd"))
                else:
                    out.kind = _error_kind(response.status_code)
                    out.detail = response.text[:200]
        except httpx.ConnectError as exc:
            out.kind, out.detail = "not_sent", type(exc).__name__
        except (httpx.TransportError, ValueError) as exc:
            out.kind, out.detail = "unknown", type(exc).__name__
        return out

    async def _stream(
        self, client: httpx.AsyncClient, content: bytes, headers: dict[str, str], behaviour: str, out: Outcome
    ) -> None:
        async with client.stream("POST", "/v1/chat/completions", content=content, headers=headers) as response:
            out.status = response.status_code
            out.request_id = response.headers.get("x-request-id")
            if response.status_code != 200:
                await response.aread()
                out.kind = _error_kind(response.status_code)
                out.detail = response.text[:200]
                return
            chunks = 0
            done = errored = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                event = orjson.loads(data)
                if "error" in event:
                    errored = True
                    continue
                if event.get("choices"):
                    chunks += 1
                usage = event.get("usage") or {}
                if "tollgate" in usage:
                    out.cost_nanos = _cost_nanos(usage["tollgate"].get("cost_usd"))
                if behaviour == "abort" and chunks >= 3:
                    out.kind = "aborted"
                    return  # leaving the block closes the connection mid-stream
            if errored:
                out.kind = "upstream_failed"
            elif done:
                out.kind = "ok"
            else:
                out.kind, out.detail = "unknown", "stream ended without [DONE]"


def _error_kind(status: int) -> OutcomeKind:
    if status in REFUSED_STATUSES:
        return "refused"
    if status in UPSTREAM_FAILED_STATUSES:
        return "upstream_failed"
    return "gateway_error" if status == 500 else "unknown"


# -- customers and their money ---------------------------------------------------------------

async def create_customers(system: System, rng: random.Random, *, grants: int, packs: int, run: str) -> list[Customer]:
    customers: list[Customer] = []
    async with system.admin() as admin:
        for i in range(grants + packs):
            kind: Literal["grant", "pack"] = "grant" if i < grants else "pack"
            r = await admin.post("/admin/v1/customers", json={"email": f"c{i}-{run}@chaos.example", "name": f"C{i}"})
            r.raise_for_status()
            c = r.json()
            r = await admin.post(f"/admin/v1/customers/{c['customer_id']}/keys", json={"name": "chaos"})
            r.raise_for_status()
            customers.append(Customer(i, c["customer_id"], c["dodo_customer_id"], r.json()["key"], kind))
    return customers


async def grant(system: System, customer: Customer, cents: int, key: str) -> None:
    async with system.admin() as admin:
        for _ in range(2):  # the second call is a replay: it must move nothing
            r = await admin.post(f"/admin/v1/customers/{customer.customer_id}/grants",
                                 json={"amount_cents": cents, "reason": "chaos grant", "idempotency_key": key})
            r.raise_for_status()
    customer.grants_nanos += cents * NANOS_PER_CENT


async def buy_pack(system: System, customer: Customer) -> None:
    async with system.admin() as admin:
        r = await admin.post(f"/admin/v1/customers/{customer.customer_id}/checkout", json={"pack": PACK_NAME})
        r.raise_for_status()
        session_id = r.json()["session_id"]
    async with httpx.AsyncClient(base_url=system.url("dodo-emulator"), timeout=30) as emulator:
        r = await emulator.post(f"/_emulator/checkouts/{session_id}/pay")
        r.raise_for_status()
        paid = r.json()
    assert paid["status"] == "succeeded", paid
    customer.payments.append({"payment_id": paid["payment_id"], "total_cents": PACK_CENTS, "credits": PACK_CREDITS})
    if customer.dodo_customer_id is None:
        customer.dodo_customer_id = paid["customer_id"]


async def refund(system: System, customer: Customer, product_id: str, amount_cents: int) -> None:
    payment = customer.payments[0]
    async with httpx.AsyncClient(base_url=system.url("dodo-emulator"), timeout=30,
                                 headers={"Authorization": "Bearer dodo-test-key"}) as emulator:
        r = await emulator.post("/refunds", json={
            "payment_id": payment["payment_id"], "items": [{"item_id": product_id, "amount": amount_cents}],
            "reason": "chaos refund",
        })
        r.raise_for_status()
        customer.refunds.append({"refund_id": r.json()["refund_id"], "payment_id": payment["payment_id"],
                                 "amount_cents": amount_cents})


async def slack_per_customer(system: System, customers: list[Customer]) -> None:
    """Each customer's Slack alerts go to a path of their own, so the sink can be counted per customer."""
    sink = system.url("slack-sink")
    async with httpx.AsyncClient(base_url=system.url("notifier", 0), timeout=30,
                                 headers={"Authorization": "Bearer test-admin-token"}) as notifier:
        for c in customers:
            r = await notifier.put(f"/admin/v1/preferences/{c.customer_id}",
                                   json={"slack_webhook_url": f"{sink}/services/T0/{c.customer_id}/X"})
            r.raise_for_status()


async def pause(seconds: float) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(seconds)
