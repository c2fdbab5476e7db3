"""One whole Tollgate for the security tests (two gateways, one replica of everything else, the
stand-ins, a database of its own), configured with distinctive secrets so that any place one of
them leaks to (logs, metrics, traces, error bodies) can be found by a plain substring search.
Spans are exported over OTLP/HTTP to a collector in the test process for the same search."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from chaos.cluster import TIERS_TOML
from support.servers import AppServer, Infra, create_database, drop_database, reset_bus
from support.system import System

LEAK_TEST = "test_secrets_never_leak.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The leak search reads everything the other security tests made the services log, so it
    runs last among them (and still inside this package, while its system is up)."""
    here = [i for i, item in enumerate(items) if item.path.parent.name == "security"]
    ordered = sorted((items[i] for i in here), key=lambda item: item.path.name == LEAK_TEST)
    for i, item in zip(here, ordered, strict=True):
        items[i] = item


@dataclass(frozen=True)
class Secrets:
    upstream_key: str
    dodo_key: str
    webhook_key: str  # whsec_<base64>
    smtp_password: str
    admin_token: str

    @property
    def webhook_raw(self) -> str:
        return self.webhook_key.removeprefix("whsec_")

    def named(self) -> dict[str, str]:
        return {
            "upstream API key": self.upstream_key, "Dodo API key": self.dodo_key,
            "webhook secret": self.webhook_key, "webhook secret (base64 part)": self.webhook_raw,
            "SMTP password": self.smtp_password, "admin token": self.admin_token,
        }


class TraceCollector:
    """An OTLP/HTTP endpoint that keeps the raw export requests (protobuf keeps strings as UTF-8)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf")]})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class Customer:
    customer_id: str
    key: str
    key_id: str
    dodo_customer_id: str | None


@dataclass
class Tollgate:
    system: System
    infra: Infra
    secrets: Secrets
    traces: TraceCollector
    customer_keys: list[str] = field(default_factory=list)  # every plaintext key issued here

    @property
    def gateways(self) -> list[str]:
        return [self.system.url("gateway", i) for i in range(len(self.system.replicas["gateway"]))]

    @property
    def ledger(self) -> str:
        return self.system.url("ledger", 0)

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.ledger, timeout=30,
                                 headers={"Authorization": f"Bearer {self.secrets.admin_token}"})

    def dodo(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.system.url("dodo-emulator"), timeout=30,
                                 headers={"Authorization": f"Bearer {self.secrets.dodo_key}"})

    def mock(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.system.url("mock-upstream"), timeout=30)

    async def customer(self, cents: int = 0, name: str = "sec") -> Customer:
        async with self.admin() as admin:
            r = await admin.post("/admin/v1/customers",
                                 json={"email": f"{name}-{secrets.token_hex(4)}@security.example", "name": name})
            r.raise_for_status()
            c = r.json()
            r = await admin.post(f"/admin/v1/customers/{c['customer_id']}/keys", json={"name": name})
            r.raise_for_status()
            k = r.json()
            if cents:
                r = await admin.post(f"/admin/v1/customers/{c['customer_id']}/grants", json={
                    "amount_cents": cents, "reason": "security test", "idempotency_key": secrets.token_hex(8)})
                r.raise_for_status()
        self.customer_keys.append(k["key"])
        return Customer(c["customer_id"], k["key"], k["key_id"], c["dodo_customer_id"])

    async def upstream_calls(self) -> int:
        async with self.mock() as mock:
            return int((await mock.get("/_mock/requests")).json()["count"])

    async def balance(self, customer_id: str) -> dict[str, Any]:
        async with self.admin() as admin:
            r = await admin.get(f"/admin/v1/customers/{customer_id}/balance")
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]


def _secrets() -> Secrets:
    return Secrets(
        upstream_key="sk-proj-" + secrets.token_urlsafe(32),
        dodo_key="dodo_live_" + secrets.token_hex(20),
        webhook_key="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        smtp_password="smtp-" + secrets.token_urlsafe(18),
        admin_token="adm-" + secrets.token_urlsafe(24),
    )


@pytest.fixture(scope="package")
def security_secrets() -> Iterator[Secrets]:
    yield _secrets()


@pytest.fixture(scope="package")
async def tollgate(infra: Infra, security_secrets: Secrets) -> AsyncIterator[Tollgate]:
    s = security_secrets
    workdir = infra.workdir / "security"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tiers.toml").write_text(TIERS_TOML)
    database_url = await create_database()
    own = Infra(nats=infra.nats, redis=infra.redis, database_url=database_url, workdir=workdir)
    await reset_bus(own.nats_url)
    traces = TraceCollector()
    async with AppServer(traces) as collector:
        system = System(own, env={
            "UPSTREAM_API_KEY": s.upstream_key,
            "MOCK_UPSTREAM_API_KEY": s.upstream_key,
            "MOCK_UPSTREAM_LOG_SIZE": "100000",
            "DODO_PAYMENTS_API_KEY": s.dodo_key,
            "DODO_EMULATOR_API_KEY": s.dodo_key,
            "DODO_PAYMENTS_WEBHOOK_KEY": s.webhook_key,
            "DODO_EMULATOR_WEBHOOK_SECRET": s.webhook_key,
            "NOTIFIER_SMTP_USERNAME": "tollgate",
            "NOTIFIER_SMTP_PASSWORD": s.smtp_password,
            "SMTP_SINK_AUTH_USERNAME": "tollgate",
            "SMTP_SINK_AUTH_PASSWORD": s.smtp_password,
            "SMTP_SINK_AUTH_REQUIRED": "true",
            "TOLLGATE_ADMIN_TOKEN": s.admin_token,
            "TOLLGATE_TIERS_FILE": str(workdir / "tiers.toml"),
            "TOLLGATE_DODO_CATALOGUE_FILE": str(workdir / "dodo-catalogue.json"),
            "GATEWAY_SPOOL_DIR": str(workdir / "spool"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "NOTIFIER_RETRY_BASE_S": "0.2",
            "NOTIFIER_RETRY_MAX_S": "1",
            "NOTIFIER_WORKER_POLL_S": "0.2",
            "LOG_LEVEL": "DEBUG",
        })
        try:
            await system.start_all(replicas={"gateway": 2})
            yield Tollgate(system, own, s, traces)
        finally:
            system.stop_all()
            await drop_database(database_url)


@pytest.fixture
def client_address() -> Iterator[str]:
    """A loopback source address of its own per test: the gateway throttles failed
    authentications per client address, and tests must not throttle each other."""
    global _next_address
    _next_address += 1
    yield f"127.0.{_next_address // 250 + 1}.{_next_address % 250 + 2}"


_next_address = 0


def from_address(base_url: str, address: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, transport=httpx.AsyncHTTPTransport(local_address=address),
                             timeout=kwargs.pop("timeout", 30), **kwargs)


def assert_openai_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """OpenAI's error shape, with every one of its four keys, and the gateway's request id."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:300])
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert response.headers.get("x-request-id", "").startswith("req_")
    return body  # type: ignore[no-any-return]
