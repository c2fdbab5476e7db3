"""`tollgate dodo bootstrap`: creates the catalogue once, finds it on every later run, records the
ids, and links the meters to the credit entitlement at GPT-4o's list price."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from metering.emulator import API_KEY, RunningEmulator, run_bootstrap
from tollgate_dodo.catalogue import Catalogue

COUNTED = ("products", "addons", "meters", "credit_entitlements", "webhook_endpoints")


def counts(emulator: RunningEmulator) -> dict[str, int]:
    stats = emulator.stats()
    return {k: stats[k] for k in COUNTED}


async def test_a_second_run_creates_nothing(emulator: RunningEmulator, tmp_path: Path) -> None:
    catalogue_file = tmp_path / "catalogue.json"
    first = await _cli(emulator, catalogue_file, "bootstrap", "--json")
    after_first = counts(emulator)
    second = await _cli(emulator, catalogue_file, "bootstrap", "--json")

    assert counts(emulator) == after_first
    assert second["created"] == [] and second["updated"] == []
    assert len(first["created"]) == len(second["found"])
    assert after_first == {"products": 7, "addons": 1, "meters": 4, "credit_entitlements": 1, "webhook_endpoints": 1}
    assert second["catalogue"] == first["catalogue"]
    assert Catalogue.load(catalogue_file) == Catalogue.model_validate(first["catalogue"])


async def test_the_catalogue_is_what_an_openai_style_billing_needs(emulator: RunningEmulator, tmp_path: Path) -> None:
    report = await run_bootstrap(emulator, tmp_path / "catalogue.json")
    catalogue = report.catalogue
    client = emulator.sdk()
    try:
        ce = await client.credit_entitlements.retrieve(catalogue.credit_entitlement_id)
        assert (ce.overage_enabled, ce.rollover_enabled, ce.expires_after_days, ce.precision) == (False, False, None, 7)
        assert [(p.price_cents, p.credits) for p in catalogue.packs] == [
            (500, 500), (1000, 1000), (5000, 5000), (10000, 10000)
        ]
        for pack in catalogue.packs:
            product = await client.products.retrieve(pack.product_id)
            (attached,) = product.credit_entitlements
            assert attached.credit_entitlement_id == ce.id and Decimal(attached.credits_amount) == pack.credits
            assert catalogue.pack(pack.product_id) == pack

        usage_product = await client.products.retrieve(catalogue.usage_product_id or "")
        linked = {m.meter_id: m for m in usage_product.price.meters or []}  # type: ignore[union-attr]
        input_meter = catalogue.meters["llm.input_tokens"]
        output_meter = catalogue.meters["llm.output_tokens"]
        # GPT-4o: $2.50 and $10.00 per 1M tokens = 4,000 input and 1,000 output tokens per cent.
        assert Decimal(linked[input_meter].meter_units_per_credit or "0") == 4000
        assert Decimal(linked[output_meter].meter_units_per_credit or "0") == 1000
        assert {m.credit_entitlement_id for m in linked.values()} == {ce.id}
        # Plan usage is metered on meters no product links to credits.
        assert catalogue.meters["llm.subscription.input_tokens"] not in linked
        meter = await client.meters.retrieve(input_meter)
        aggregation = meter.aggregation
        assert (meter.event_name, aggregation.type, aggregation.key) == ("llm.input_tokens", "sum", "tokens")

        plus = catalogue.plan_for(catalogue.plans[0].product_id)
        team = catalogue.plans[1]
        assert plus is not None and (plus.plan, plus.price_cents) == ("plus", 2000)
        assert (team.plan, team.price_cents) == ("team", 2500)
        team_product = await client.products.retrieve(team.product_id)
        assert team_product.addons == [catalogue.seat_addon_id]
        seat = await client.addons.retrieve(catalogue.seat_addon_id or "")
        assert seat.price == 2500

        webhook = await client.webhooks.retrieve(catalogue.webhook_endpoint_id or "")
        assert webhook.url == "http://127.0.0.1:9/ledger/webhooks/dodo"
    finally:
        await client.close()


async def test_per_model_meters_and_switching_strategies(emulator: RunningEmulator, tmp_path: Path) -> None:
    catalogue_file = tmp_path / "catalogue.json"
    weighted = (await run_bootstrap(emulator, catalogue_file)).catalogue
    per_model = (await run_bootstrap(emulator, catalogue_file, "per_model_meters")).catalogue
    again = await run_bootstrap(emulator, catalogue_file, "per_model_meters")
    assert again.created == [] and again.updated == []

    assert per_model.meter_strategy == "per_model_meters"
    upc = {k: Decimal(v) for k, v in per_model.units_per_credit.items()}
    assert upc["llm.gpt-4o.input_tokens"] == 4000 and upc["llm.gpt-4o.cached_input_tokens"] == 8000
    assert upc["llm.o1.output_tokens"] == Decimal("166.666666666666")  # 10^13 / 6e10, rounded down
    assert "llm.text-embedding-3-small.output_tokens" not in per_model.meters  # free: nothing to meter
    client = emulator.sdk()
    try:
        # The weighted pair's product no longer deducts (it would count a second time).
        old = await client.products.list(archived=True, page_number=0, page_size=100)
        assert weighted.usage_product_id in {p.product_id for p in old.items}
    finally:
        await client.close()
    back = await run_bootstrap(emulator, catalogue_file)
    assert back.catalogue.usage_product_id == weighted.usage_product_id  # found again, not re-created
    assert not [c for c in back.created if "product" in c]


async def _cli(emulator: RunningEmulator, catalogue: Path, *args: str) -> Any:
    env = {
        **os.environ, "DODO_PAYMENTS_BASE_URL": emulator.url, "DODO_PAYMENTS_API_KEY": API_KEY,
        "TOLLGATE_DODO_CATALOGUE_FILE": str(catalogue), "TOLLGATE_LEDGER_PUBLIC_URL": "http://127.0.0.1:9/ledger",
    }
    command = [str(Path(sys.executable).with_name("tollgate")), "dodo", *args]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
