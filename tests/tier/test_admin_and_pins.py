"""The operator's side: the admin API needs the admin credential, a pin wins over spend and
survives payments, and the `tollgate tier` CLI shows and pins."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from support.servers import eventually
from tier.helpers import ADMIN_TOKEN, TierService, new_customer
from tollgate_cli.main import app as cli


@pytest.mark.parametrize("token", [None, "wrong-token", "sk-tg-a-customer-key"])
async def test_admin_api_needs_the_admin_credential(tier: TierService, token: str | None) -> None:
    customer = new_customer()
    async with tier.admin(token) as http:
        for method, path, body in (
            ("GET", "/admin/v1/tiers", None),
            ("GET", f"/admin/v1/tiers/{customer}", None),
            ("PUT", f"/admin/v1/tiers/{customer}/pin", {"tier": "tier-3"}),
        ):
            response = await http.request(method, path, json=body)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_admin_credential"
    assert await tier.hot_limits(customer) is None  # the refused pin did nothing


async def test_the_table_in_force_and_an_unknown_customer(tier: TierService) -> None:
    async with tier.admin() as http:
        table = (await http.get("/admin/v1/tiers")).json()
        unknown = (await http.get(f"/admin/v1/tiers/{new_customer()}")).json()
    assert table["preset"] == "tollgate"
    assert [(t["name"], t["min_spend_usd"], t["rpm"]) for t in table["tiers"]] == [
        ("tier-1", "$0.00", 3), ("tier-2", "$50.00", 10), ("tier-3", "$250.00", 50)]
    assert unknown["tier"] == "tier-1" and unknown["recorded"] is False
    assert unknown["next_tier"]["tier"] == "tier-2" and unknown["next_tier"]["spend_to_go_usd"] == "$50.00"


async def test_operator_pin_wins_and_survives_payments(tier: TierService) -> None:
    customer = new_customer()
    await tier.load_hot_state(customer)
    async with tier.admin() as http:
        pinned = (await http.put(f"/admin/v1/tiers/{customer}/pin", json={"tier": "tier-3"})).json()
        assert (pinned["tier"], pinned["pinned"], pinned["limits"]["rpm"]) == ("tier-3", True, 50)
        await eventually(lambda: _rpm(tier, customer, "50"))

        await tier.pay(customer, 60_00)
        await tier.pay(customer, 300_00)
        await tier.settled()
        shown = (await http.get(f"/admin/v1/tiers/{customer}")).json()
        assert (shown["tier"], shown["earned_tier"], shown["lifetime_spend_usd"]) == ("tier-3", "tier-3", "$360.00")
        refund_all = await tier.refund(customer, "pay_any", 360_00)
        assert refund_all.amount_cents == 360_00
        await tier.settled()
        shown = (await http.get(f"/admin/v1/tiers/{customer}")).json()
        assert (shown["tier"], shown["earned_tier"]) == ("tier-3", "tier-1")
        assert (await tier.hot.snapshot(customer))["rpm"] == "50"

        unpinned = (await http.put(f"/admin/v1/tiers/{customer}/pin", json={"tier": None})).json()
        assert (unpinned["tier"], unpinned["pinned"], unpinned["limits"]["rpm"]) == ("tier-1", False, 3)
        await eventually(lambda: _rpm(tier, customer, "3"))

    await tier.settled()
    events = await tier.tier_events(customer)
    assert [(e.old_tier, e.new_tier, e.cause, e.pinned) for e in events] == [
        ("tier-1", "tier-3", "operator", True), ("tier-3", "tier-1", "operator", False)]


async def test_pin_again_after_unpin_is_a_new_event(tier: TierService) -> None:
    customer = new_customer()
    async with tier.admin() as http:
        for name in ("tier-2", None, "tier-2"):
            assert (await http.put(f"/admin/v1/tiers/{customer}/pin", json={"tier": name})).status_code == 200
    await tier.settled()
    assert [e.new_tier for e in await tier.tier_events(customer)] == ["tier-2", "tier-1", "tier-2"]


async def test_pinning_to_an_unknown_tier_is_refused(tier: TierService) -> None:
    customer = new_customer()
    async with tier.admin() as http:
        response = await http.put(f"/admin/v1/tiers/{customer}/pin", json={"tier": "platinum"})
        missing = await http.put(f"/admin/v1/tiers/{customer}/pin", json={})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_tier" and "tier-3" in response.json()["error"]["message"]
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "tier"
    assert await tier.hot_limits(customer) is None


async def test_cli_shows_pins_and_lists_the_table(tier: TierService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_TIER_URL", tier.url)
    monkeypatch.setenv("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
    customer = new_customer()
    await tier.pay(customer, 60_00)
    await eventually(lambda: tier.hot_limits(customer))

    async def run(*args: str) -> tuple[int, str]:
        # the CLI is synchronous; the service runs in this loop, so the CLI gets a thread
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["tier", *args])
        return result.exit_code, result.output

    code, out = await run("show", customer, "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert (shown["tier"], shown["lifetime_spend_usd"], shown["next_tier"]["spend_to_go_usd"]) == (
        "tier-2", "$60.00", "$190.00")

    code, out = await run("show", customer)
    assert code == 0 and "tier-2" in out and "$190.00 more spend" in out

    code, out = await run("pin", customer, "tier-3", "--json")
    assert code == 0 and json.loads(out)["tier"] == "tier-3"
    code, out = await run("pin", customer, "--unpin")
    assert code == 0 and f"{customer}: tier-2" in out

    code, out = await run("table", "--json")
    assert code == 0 and [t["rpm"] for t in json.loads(out)["tiers"]] == [3, 10, 50]

    code, out = await run("pin", customer, "platinum")
    assert code == 1 and "unknown tier" in out


async def _rpm(tier: TierService, customer: str, rpm: str) -> bool:
    return bool((await tier.hot.snapshot(customer)).get("rpm") == rpm)
