"""Issue 4's full loop, through every real piece: a customer and key from the admin API, the $5
pack bought in the Dodo emulator's checkout, the signed webhook crediting 500 cents, calls made
with the official `openai` SDK through a real gateway deducting exactly tokens x price, the balance
reaching zero, and the next call refused with 402 `insufficient_quota`."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from ledger.support import balance_of
from support.servers import eventually
from system.conftest import ADMIN, BOOK, Stack
from tollgate_money import TokenUsage


@pytest.fixture
def tiers_file(tmp_path: Path) -> Path:
    """Rate limits are not what this test is about: one roomy tier."""
    path = tmp_path / "tiers.toml"
    path.write_text('preset = "roomy"\n[[presets.roomy]]\nname = "tier-1"\nmin_spend_usd = "0"\nrpm = 1000\n'
                    'tpm = 10000000\n')
    return path


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
