"""The operator CLI over the admin API: every command works and prints JSON with --json."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from typer.testing import CliRunner

from ledger.support import ADMIN_TOKEN, CENT, RunningLedger
from tollgate_cli.main import app


async def tollgate(ledger: RunningLedger, *args: str, token: str = ADMIN_TOKEN) -> tuple[int, Any]:
    """Run `tollgate ... --json` in a thread (the ledger answers on this test's event loop)."""
    runner = CliRunner()
    env = {"TOLLGATE_LEDGER_URL": ledger.url, "TOLLGATE_ADMIN_TOKEN": token}
    result = await asyncio.to_thread(runner.invoke, app, [*args, "--json"], env=env)
    output = result.stdout if result.exit_code == 0 else result.stderr
    return result.exit_code, json.loads(output)


async def test_operator_workflow_from_the_command_line(ledger: RunningLedger) -> None:
    code, customer = await tollgate(ledger, "customers", "create", "--email", "cli@example.com", "--name", "CLI",
                                    "--no-dodo")
    assert code == 0 and customer["customer_id"].startswith("cus_tg_")
    cid = customer["customer_id"]

    code, issued = await tollgate(ledger, "keys", "issue", cid, "--name", "laptop", "--model", "gpt-4o-mini")
    assert code == 0 and issued["key"].startswith("sk-tg-") and issued["models"] == "gpt-4o-mini"
    code, listed = await tollgate(ledger, "keys", "list", cid)
    assert [k["key_id"] for k in listed] == [issued["key_id"]] and "key" not in listed[0]

    grant = ("credits", "grant", cid, "--cents", "700", "--reason", "pilot", "--idempotency-key", "pilot-1")
    code, first = await tollgate(ledger, *grant)
    code, again = await tollgate(ledger, *grant)
    assert first["created"] is True and again["created"] is False
    code, balance = await tollgate(ledger, "credits", "balance", cid)
    assert balance["balance_nanos"] == 700 * CENT

    code, adjusted = await tollgate(ledger, "credits", "adjust", cid, "--nanos", "-5", "--reason", "rounding fix",
                                    "--idempotency-key", "adj-1")
    assert code == 0 and adjusted["balance_nanos"] == 700 * CENT - 5
    code, threshold = await tollgate(ledger, "credits", "threshold", cid, "--cents", "50")
    assert threshold["low_threshold_nanos"] == 50 * CENT

    code, history = await tollgate(ledger, "ledger", "history", cid)
    assert [e["kind"] for e in history["data"]] == ["adjustment", "grant"]
    code, shown = await tollgate(ledger, "customers", "show", cid)
    assert shown["balance"]["balance_nanos"] == 700 * CENT - 5
    code, found = await tollgate(ledger, "customers", "list", "--email", "cli@example.com")
    assert cid in [c["customer_id"] for c in found["data"]]
    code, rebuilt = await tollgate(ledger, "ledger", "rebuild-hot-state", "--customer", cid)
    assert rebuilt["keys_written"] == 1
    code, drifting = await tollgate(ledger, "drift", "show")
    assert code == 0 and isinstance(drifting, list)
    code, check = await tollgate(ledger, "drift", "check", cid)
    assert check["status"] == "unknown"  # no Dodo customer to compare with

    code, revoked = await tollgate(ledger, "keys", "revoke", issued["key_id"])
    assert code == 0 and revoked["status"] == "revoked"


async def test_cli_reports_errors_as_json(ledger: RunningLedger) -> None:
    code, error = await tollgate(ledger, "credits", "balance", "cus_tg_missing")
    assert code == 1 and "not found" in error["error"]
    code, error = await tollgate(ledger, "customers", "list", token="wrong")
    assert code == 1 and error["error"].startswith("403")
