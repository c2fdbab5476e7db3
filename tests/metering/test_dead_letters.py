"""What cannot be metered is dead-lettered with its reason and payload, never dropped; one bad
event in a batch costs only itself; an operator replay after the fix reaches Dodo exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from metering.emulator import usage
from metering.harness import Dodo, metering, publish
from support.servers import Infra, eventually
from tollgate_cli.metering_cmds import read_dead_letters, replay


def reasons(entries: list[Any]) -> dict[str, str]:
    return {json.loads(e.letter.payload)["event_id"]: e.letter.reason.split(":")[0] for e in entries}


async def test_unmeterable_usage_is_dead_lettered_with_its_reason(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    cus = dodo.customers[0]
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    async with metering(clean_bus, dodo):
        await publish(nats_js, usage("dl1_ok", "acme", cus))
        await publish(nats_js, usage("dl1_model", "acme", cus, model="gpt-9-ultra"))
        await publish(nats_js, usage("dl1_nocus", "acme", None))
        await publish(nats_js, usage("dl1_old", "acme", cus, occurred_at=two_hours_ago))
        entries = await eventually(lambda: _dead_letters(nats_js, 3), timeout=10)
        await eventually(lambda: len(dodo.emulator.events()) == 2)
    assert reasons(entries) == {"dl1_model": "unknown_model", "dl1_nocus": "no_dodo_customer", "dl1_old": "too_old"}
    assert {e.letter.original_subject for e in entries} == {"usage.recorded.acme"}
    assert all(json.loads(e.letter.payload)["customer_id"] == "acme" for e in entries)
    assert {e["event_id"].split(":")[0] for e in dodo.emulator.events()} == {"dl1_ok"}


async def test_one_rejected_event_is_split_out_of_its_batch(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    # Dodo refuses the whole request (400) for one unknown customer; the other 39 must still land.
    for i in range(40):
        customer = "cus_unknown_to_dodo" if i == 17 else dodo.customers[i % 3]
        await publish(nats_js, usage(f"dl2_{i}", "acme", customer))
    async with metering(clean_bus, dodo, flush_interval_ms=500):
        entries = await eventually(lambda: _dead_letters(nats_js, 1), timeout=10)
        await eventually(lambda: len(dodo.emulator.events()) == 78)
    assert reasons(entries) == {"dl2_17": "dodo_rejected"}
    assert "cus_unknown_to_dodo" in entries[0].letter.reason
    assert "dl2_17:llm.input_tokens" not in {e["event_id"] for e in dodo.emulator.events()}


async def test_plan_usage_without_dodo_customer_may_be_skipped_by_policy(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    async with metering(clean_bus, dodo, missing_customer_policy="skip_plan_usage"):
        await publish(nats_js, usage("dl3_free", "newbie", None, model="gpt-4o-mini", billing_mode="free"))
        await publish(nats_js, usage("dl3_paid", "newbie", None))  # credits: money, always dead-lettered
        await publish(nats_js, usage("dl3_ok", "acme", dodo.customers[0]))
        entries = await eventually(lambda: _dead_letters(nats_js, 1), timeout=10)
        await eventually(lambda: len(dodo.emulator.events()) == 2)
        await asyncio.sleep(0.3)  # nothing else may show up (the skip is not a delay)
    assert reasons(await read_dead_letters(nats_js)) == {"dl3_paid": "no_dodo_customer"}
    assert len(entries) == 1


async def test_replay_after_the_fix_reaches_dodo_exactly_once(
    clean_bus: Infra, nats_js: JetStreamContext, dodo: Dodo
) -> None:
    cus = dodo.customers[2]
    stale = datetime.now(UTC) - timedelta(hours=3)
    async with metering(clean_bus, dodo):
        await publish(nats_js, usage("dl4_nocus", "acme", None, input_tokens=111, output_tokens=22))
        await publish(nats_js, usage("dl4_old", "acme", cus, input_tokens=333, output_tokens=44, occurred_at=stale))
        entries = await eventually(lambda: _dead_letters(nats_js, 2), timeout=10)
        by_request = {json.loads(e.letter.payload)["event_id"]: e for e in entries}

        # The operator's view and replay, through the real CLI.
        listed = await _cli(clean_bus, "dead-letters", "list", "--json")
        assert {row["request_id"] for row in listed["dead_letters"]} == {"dl4_nocus", "dl4_old"}
        fixed = await _cli(clean_bus, "dead-letters", "replay", "--id", str(by_request["dl4_nocus"].seq),
                           "--dodo-customer-id", cus, "--json")
        assert fixed["replayed"][0]["msg_id"].startswith("dl4_nocus:replay:")
        await replay(nats_js, [by_request["dl4_old"]])
        await eventually(lambda: len(dodo.emulator.events()) == 4)

        again = await replay(nats_js, [by_request["dl4_old"]])  # a second replay within the window
        assert again[0]["already_replayed"] is True
    events = {e["event_id"]: e for e in dodo.emulator.events()}
    assert sorted(events) == [
        "dl4_nocus:llm.input_tokens", "dl4_nocus:llm.output_tokens", "dl4_old:llm.input_tokens",
        "dl4_old:llm.output_tokens",
    ]
    assert events["dl4_nocus:llm.input_tokens"]["customer_id"] == cus
    # Too old for Dodo's window at its own time: stamped at replay, its own time kept in metadata.
    replayed = events["dl4_old:llm.output_tokens"]
    assert replayed["metadata"]["occurred_at"] == stale.isoformat()
    assert replayed["metadata"]["replayed"] is True
    assert replayed["metadata"]["tokens"] == 44
    assert len(await read_dead_letters(nats_js)) == 2  # nothing new was refused


async def _dead_letters(js: JetStreamContext, at_least: int) -> list[Any] | None:
    entries = await read_dead_letters(js)
    return entries if len(entries) >= at_least else None


async def _cli(infra: Infra, *args: str) -> Any:
    env = {**os.environ, "NATS_URL": infra.nats_url}
    command = [str(Path(sys.executable).with_name("tollgate")), "metering", *args]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
