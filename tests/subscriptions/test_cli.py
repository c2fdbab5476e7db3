"""The operator's subscription and team commands: a Team bought from a CLI checkout link, members
added up to the paid seats and refused beyond, a member key, the plan as the CLI shows it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from typer.testing import CliRunner

from ledger.support import ADMIN_TOKEN
from subscriptions.support import World
from tollgate_cli.main import app


async def tollgate(world: World, *args: str, as_json: bool = True) -> tuple[int, Any]:
    """`tollgate ...` in a thread (the ledger answers on this test's event loop)."""
    env = {"TOLLGATE_LEDGER_URL": world.ledger_url, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, *(["--json"] if as_json else [])], env=env)
    output = result.stdout if result.exit_code == 0 else result.stderr
    return result.exit_code, json.loads(output) if as_json else output


async def test_team_from_the_command_line(world: World) -> None:
    customer = await world.new_customer()
    code, link = await tollgate(world, "subscriptions", "checkout", customer, "--plan", "team", "--seats", "2")
    assert code == 0 and link["checkout_url"] and link["monthly_cents"] == 2 * 2500
    await world.control("POST", f"/checkouts/{link['session_id']}/pay")
    await world.wait_plan(customer, plan="team", seats=2)

    for email in ("a@team.example", "b@team.example"):
        code, member = await tollgate(world, "members", "add", customer, "--email", email)
        assert code == 0 and member["status"] == "active"
    code, refused = await tollgate(world, "members", "add", customer, "--email", "c@team.example")
    assert code == 1 and "seats are taken" in refused["error"]
    code, key = await tollgate(world, "members", "key", customer, member["member_id"], "--name", "laptop")
    assert code == 0 and key["key"].startswith("sk-tg-") and key["member_id"] == member["member_id"]
    assert (await world.chat(key["key"], "gpt-4o")).mode == "subscription"

    code, listed = await tollgate(world, "members", "list", customer)
    assert [m["email"] for m in listed] == ["a@team.example", "b@team.example"]
    code, text = await tollgate(world, "subscriptions", "show", customer, as_json=False)
    assert code == 0 and "team" in text and "2 of 2 taken" in text
    code, cancel = await tollgate(world, "subscriptions", "cancel", customer)
    assert code == 0 and cancel["at_period_end"] is True
    await world.wait_plan(customer, plan="team", status="cancelling")
