"""Issue 4's full loop, through every real piece: a customer and key from the admin API, the $5
pack bought in the Dodo emulator's checkout, the signed webhook crediting 500 cents, calls made
with the official `openai` SDK through a real gateway deducting exactly tokens x price, the balance
reaching zero, and the next call refused with 402 `insufficient_quota`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from dodopayments import AsyncDodoPayments

from ledger.support import WEBHOOK_SECRET, balance_of, settings_for
from support.servers import AppServer, Infra, eventually, free_port
from tollgate_dodo.bootstrap import BootstrapSettings, bootstrap
from tollgate_dodo.catalogue import Catalogue
from tollgate_gateway.app import create_app as create_gateway
from tollgate_gateway.settings import GatewaySettings
from tollgate_ledger.app import create_app as create_ledger
from tollgate_money import PriceBook, TokenUsage
from tollgate_platform.settings import REPO_ROOT
from tollgate_standins.dodo_emulator import EmulatorSettings
from tollgate_standins.dodo_emulator import create_app as create_emulator
from tollgate_standins.mock_upstream import MockUpstreamSettings
from tollgate_standins.mock_upstream import create_app as create_mock_upstream

BOOK = PriceBook.load(REPO_ROOT / "config" / "pricing.toml")
ADMIN = {"Authorization": "Bearer test-admin-token"}


@dataclass
class Stack:
    ledger_url: str
    gateway_url: str
    emulator_url: str
    database_url: str
    catalogue: Catalogue


@pytest.fixture
async def stack(provisioned: Infra, clean_bus: Infra, clean_redis: Infra, tmp_path: Path) -> AsyncIterator[Stack]:
    ledger_port = free_port()
    emulator = create_emulator(EmulatorSettings(
        port=0, public_url="http://127.0.0.1", webhook_secret=WEBHOOK_SECRET, deduct_interval_s=3600.0,
        log_level="warning",
    ))
    async with AppServer(emulator) as dodo, AppServer(create_mock_upstream(MockUpstreamSettings())) as upstream:
        catalogue = tmp_path / "dodo-catalogue.json"
        client = AsyncDodoPayments(bearer_token="dodo-test-key", base_url=dodo.url, max_retries=0)
        try:
            await bootstrap(client, BOOK, BootstrapSettings(
                dodo_base_url=dodo.url, dodo_api_key="dodo-test-key", dodo_catalogue_file=catalogue,
                ledger_public_url=f"http://127.0.0.1:{ledger_port}",
            ))
        finally:
            await client.close()
        ledger_settings = settings_for(
            provisioned, catalogue, dodo_base_url=dodo.url, dodo_api_key="dodo-test-key",
            admin_token="test-admin-token", consume_usage=True, usage_batch_timeout_s=0.02,
        )
        # Rate limits are not what this test is about: one roomy tier.
        tiers = tmp_path / "tiers.toml"
        tiers.write_text('preset = "roomy"\n[[presets.roomy]]\nname = "tier-1"\nmin_spend_usd = "0"\n'
                         'rpm = 1000\ntpm = 10000000\n')
        gateway_settings = GatewaySettings(
            tiers_file=tiers,
            nats_url=provisioned.nats_url, redis_url=provisioned.redis_url, database_url=provisioned.database_url,
            upstream_base_url=upstream.url + "/v1", spool_dir=tmp_path / "spool", log_level="WARNING",
        )
        async with (
            AppServer(create_ledger(ledger_settings), port=ledger_port) as ledger,
            AppServer(create_gateway(gateway_settings)) as gateway,
        ):
            found = Catalogue.load(catalogue)
            assert found is not None
            yield Stack(ledger.url, gateway.url, dodo.url, provisioned.database_url, found)


async def test_buy_five_dollars_spend_it_exactly_then_402(stack: Stack) -> None:
    import asyncpg
    import httpx

    async with httpx.AsyncClient(base_url=stack.ledger_url + "/admin/v1", headers=ADMIN, timeout=30) as admin:
        customer = (await admin.post("/customers", json={"email": "loop@example.com", "name": "Loop"})).json()
        customer_id = customer["customer_id"]
        key = (await admin.post(f"/customers/{customer_id}/keys", json={"name": "sdk"})).json()["key"]
        five = next(p for p in stack.catalogue.packs if p.price_cents == 500)
        link = await admin.post(f"/customers/{customer_id}/checkout", json={"pack": five.name})
        assert link.status_code == 200, link.text
        checkout = link.json()
        assert checkout["credits"] == 500
        async with httpx.AsyncClient(base_url=stack.emulator_url, timeout=30) as dodo:
            paid = await dodo.post(f"/_emulator/checkouts/{checkout['session_id']}/pay")
            assert paid.status_code == 200, paid.text

        pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
        assert pool is not None
        five_dollars = 500 * 10_000_000
        await eventually(lambda: _equals(balance_of(pool, customer_id), five_dollars))

        client = openai.AsyncOpenAI(base_url=stack.gateway_url + "/v1", api_key=key, max_retries=0)
        charged = 0
        calls = 0
        price = BOOK.models["o1"]
        while True:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="o1", messages=[{"role": "user", "content": "spend my credits"}],
                    max_completion_tokens=20_000, extra_body={"mock": {"output_tokens": 20_000}},
                )
            except openai.APIStatusError as refused:
                assert refused.status_code == 402
                body = refused.body if isinstance(refused.body, dict) else {}
                assert refused.code == "insufficient_quota" or body.get("code") == "insufficient_quota"
                break
            reply = raw.parse()
            assert reply.usage is not None
            details = reply.usage.prompt_tokens_details
            cost = price.cost(TokenUsage(
                input_tokens=reply.usage.prompt_tokens, output_tokens=reply.usage.completion_tokens,
                cached_input_tokens=(details.cached_tokens or 0) if details else 0,
            ))
            charged += cost
            calls += 1
            assert calls < 20, "the balance never ran out"
        # $5 at o1's $60/1M output buys a little over four full 20k-token answers; the fifth is
        # lowered to what is left, and then not even a minimal request fits.
        assert calls >= 5 and charged <= five_dollars
        remaining = five_dollars - charged
        # The gateway bounds a small prompt by its body's byte length (docs/gateway.md): the 402
        # came when not even that prompt plus the minimal 16 output tokens fitted.
        body = {"model": "o1", "messages": [{"role": "user", "content": "spend my credits"}],
                "max_completion_tokens": 20_000, "mock": {"output_tokens": 20_000}}
        assert remaining < price.worst_case(len(json.dumps(body)) + 64, 16), "refused while still affordable"
        await eventually(lambda: _equals(balance_of(pool, customer_id), remaining))
        history = (await admin.get(f"/customers/{customer_id}/entries", params={"limit": 100})).json()["data"]
        usage = [e for e in history if e["kind"] == "usage"]
        assert len(usage) == calls and -sum(e["amount_nanos"] for e in usage) == charged
        assert len({e["idempotency_key"] for e in usage}) == calls
        await pool.close()


async def _equals(value: object, expected: int) -> bool:
    return bool(await value == expected)  # type: ignore[misc]
