"""Gateway tests: a real gateway (in the test loop, real sockets) in front of the real mock
upstream (own thread and loop), with the session's real Redis, NATS and Postgres. Customers and
keys are seeded the way the ledger leaves them: `apikey:<hash>` + the hot state in Redis, and/or
rows behind the ledger's views in a database of our own (so no other suite's schema collides)."""

from __future__ import annotations

import contextlib
import secrets
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from openai import AsyncOpenAI

from support.servers import AppServer, Infra, create_database, drop_database
from support.threaded_server import ThreadedServer
from tollgate_gateway.app import create_app
from tollgate_gateway.auth import key_hash
from tollgate_gateway.settings import GatewaySettings
from tollgate_hotstate import HotState, create_redis
from tollgate_money import PriceBook
from tollgate_platform import bus
from tollgate_platform.settings import REPO_ROOT
from tollgate_standins.mock_upstream import MockUpstreamSettings
from tollgate_standins.mock_upstream import create_app as create_mock_upstream

UPSTREAM_KEY = "sk-upstream-gateway-tests-0123456789"
BOOK = PriceBook.load(REPO_ROOT / "config" / "pricing.toml")
BASE62 = string.ascii_letters + string.digits

LEDGER_VIEWS = """
CREATE SCHEMA IF NOT EXISTS ledger;
CREATE TABLE IF NOT EXISTS ledger.gateway_keys (
    key_hash text PRIMARY KEY, key_id text NOT NULL, customer_id text NOT NULL,
    dodo_customer_id text, status text NOT NULL, models text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS ledger.hot_account (
    customer_id text PRIMARY KEY, bal bigint NOT NULL, seq bigint NOT NULL, plan text NOT NULL DEFAULT '',
    plan_models text NOT NULL DEFAULT '', fallback text NOT NULL DEFAULT '', cap bigint NOT NULL DEFAULT -1,
    pused bigint NOT NULL DEFAULT 0, plan_v bigint NOT NULL DEFAULT 0, status text NOT NULL DEFAULT 'active',
    free_models text NOT NULL DEFAULT '', daily_cap bigint NOT NULL DEFAULT 0, dused bigint NOT NULL DEFAULT 0,
    dday bigint NOT NULL DEFAULT 0
);
"""


def tollgate_of(usage: Any) -> dict[str, Any]:
    """The gateway's billing facts the SDK keeps as an extra field of a stream's usage."""
    extra = usage.model_extra or {}
    assert isinstance(extra.get("tollgate"), dict), "no billing facts in the usage"
    return dict(extra["tollgate"])


def usd(nanos: int) -> str:
    """How the gateway writes exact dollars: all significant decimals, at least two."""
    text = f"{Decimal(nanos).scaleb(-9):f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def expected_cost(model: str, input_tokens: int, output_tokens: int, cached: int = 0) -> int:
    """tokens x price, computed independently of the gateway (integer nanos, per-1M prices)."""
    price = BOOK.models[model]
    scaled = (input_tokens - cached) * price.input_per_m + cached * price.cached_input_per_m
    scaled += output_tokens * price.output_per_m
    assert scaled % 1_000_000 == 0, "the default price book makes every request a whole number of nanos"
    return scaled // 1_000_000


# ---------------------------------------------------------------------------- the mock upstream


# The name the gateway tests import: uvicorn in a daemon thread with its own loop, so the
# upstream never shares the test's loop.
ThreadServer = ThreadedServer


@dataclass
class Upstream:
    url: str
    http: httpx.AsyncClient

    async def configure(self, **knobs: Any) -> None:
        (await self.http.put("/_mock/config", json=knobs)).raise_for_status()

    async def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        params = {"path": path} if path else None
        return list((await self.http.get("/_mock/requests", params=params)).json()["requests"])

    async def last(self, path: str = "/v1/chat/completions") -> dict[str, Any]:
        entries = await self.requests(path)
        assert entries, f"the upstream saw no {path} request"
        return entries[-1]


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[ThreadServer]:
    with ThreadServer(create_mock_upstream(MockUpstreamSettings(api_key=UPSTREAM_KEY, log_size=1000))) as server:
        yield server


@pytest.fixture
async def upstream(upstream_server: ThreadServer) -> AsyncIterator[Upstream]:
    async with httpx.AsyncClient(base_url=upstream_server.url, timeout=10) as http:
        await http.delete("/_mock/config")
        await http.delete("/_mock/requests")
        yield Upstream(upstream_server.url, http)
        await http.delete("/_mock/config")


# ---------------------------------------------------------------------------- Postgres views


@pytest.fixture(scope="session")
async def gateway_db(infra: Infra) -> AsyncIterator[str]:
    url = await create_database()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(LEDGER_VIEWS)
    finally:
        await conn.close()
    try:
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def pg(gateway_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(gateway_db)
    try:
        yield conn
    finally:
        await conn.close()


# ---------------------------------------------------------------------------- gateways


@dataclass
class Gateway:
    url: str
    settings: GatewaySettings
    app: Any

    def client(self, key: str, **kwargs: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kwargs)


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture(scope="session")
def gateway_factory(
    infra: Infra, upstream_server: ThreadServer, gateway_db: str, workdir: Path
) -> GatewayFactory:
    counter = iter(range(1_000_000))

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Gateway]:
        values: dict[str, Any] = {
            "nats_url": infra.nats_url,
            "redis_url": infra.redis_url,
            "database_url": gateway_db,
            "upstream_base_url": upstream_server.url + "/v1",
            "upstream_api_key": UPSTREAM_KEY,
            "upstream_timeout_s": 10.0,
            "spool_dir": workdir / f"gateway-spool-{next(counter)}",
            "spool_drain_interval_s": 0.2,
            "log_json": True,
            "log_level": "WARNING",
            **overrides,
        }
        tracer_provider = values.pop("tracer_provider", None)
        settings = GatewaySettings(**values)
        app = create_app(settings, tracer_provider=tracer_provider)
        async with AppServer(app) as server:
            yield Gateway(server.url, settings, app)

    return start


@pytest.fixture(scope="session")
async def shared_gateway(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    async with gateway_factory() as gw:
        yield gw


@pytest.fixture
async def gateway(shared_gateway: Gateway, clean_bus: Infra, clean_redis: Infra, upstream: Upstream) -> Gateway:
    """The session's gateway, with streams, Redis and the mock's knobs reset for this test."""
    return shared_gateway


# ---------------------------------------------------------------------------- customers


@dataclass
class Customer:
    id: str
    key: str
    key_hash: str
    key_id: str
    dodo_id: str


def new_key() -> str:
    return "sk-tg-" + "".join(secrets.choice(BASE62) for _ in range(40))


@pytest.fixture
async def hot(infra: Infra) -> AsyncIterator[HotState]:
    client = create_redis(infra.redis_url)
    yield HotState(client)
    await client.aclose()


Seeder = Callable[..., Awaitable[Customer]]


@pytest.fixture
def seed(hot: HotState) -> Seeder:
    """A customer as the ledger leaves it in Redis: key hash + loaded hot state."""

    async def make(balance: int = 10**9, *, rpm: int = 0, tpm: int = 0, models: str = "", status: str = "active",
                   key_status: str = "active", **account: Any) -> Customer:
        customer = Customer(
            id="cus_" + secrets.token_hex(6), key=new_key(), key_hash="", key_id="key_" + secrets.token_hex(4),
            dodo_id="dodo_" + secrets.token_hex(4),
        )
        customer.key_hash = key_hash(customer.key)
        await hot.redis.hset(
            f"apikey:{customer.key_hash}",
            mapping={"customer_id": customer.id, "key_id": customer.key_id, "status": key_status,
                     "models": models, "dodo_customer_id": customer.dodo_id},
        )
        fields: dict[str, str | int] = {"bal": balance, "seq": 1, "rpm": rpm, "tpm": tpm, "plan": "",
                                        "status": status, "tier": "tier-1", **account}
        await hot.load(customer.id, fields)
        return customer

    return make


# ---------------------------------------------------------------------------- usage events


@dataclass
class UsageTap:
    """Every usage.recorded event of one customer, read from the USAGE stream itself."""

    events: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def _on(self, msg: Msg) -> None:
        self.events.append(orjson.loads(msg.data))
        self.headers.append(dict(msg.headers or {}))

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {e["event_id"]: e for e in self.events}


TapFactory = Callable[[str], Awaitable[UsageTap]]


@pytest.fixture
async def usage_tap(infra: Infra) -> AsyncIterator[TapFactory]:
    nc = await bus.connect(infra.nats_url, "gateway-tests")
    js = nc.jetstream()

    async def tap(customer_id: str) -> UsageTap:
        collector = UsageTap()
        await js.subscribe(
            f"usage.recorded.{customer_id}", cb=collector._on, ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        return collector

    try:
        yield tap
    finally:
        await nc.close()
