"""`make up` runs scripts/seed_demo.py once the services answer: the demo customer it prints can
sign in to the console and sees a month of usage on the charts, with the $5.00 it was given."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from console.conftest import Stack
from console.support import ADMIN_TOKEN, text_of
from support.servers import REPO


async def test_the_demo_customer_has_a_month_of_usage_and_its_five_dollars(console_stack: Stack) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "scripts" / "seed_demo.py"), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TOLLGATE_LEDGER_URL": console_stack.console.url, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().strip().splitlines()
    assert len(lines) == 1, "one JSON line: devstack reads the last line"
    demo = json.loads(lines[0])
    assert demo["api_key"].startswith("sk-tg-") and demo["customer_id"].startswith("cus_tg_")
    assert demo["console_url"] == f"{console_stack.console.url}/console"

    days = await console_stack.pool.fetchval(
        "SELECT count(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date) FROM ledger.console_synthetic_usage "
        "WHERE customer_id = $1", demo["customer_id"],
    )
    assert days == 30
    async with console_stack.console.browser() as browser:
        await console_stack.console.sign_in(browser, demo["api_key"])
        overview = text_of((await browser.get("/console")).text)
        usage = await browser.get("/console/usage")
    assert "$5.00" in overview
    assert usage.text.count("<rect class=") > 60, "bars on most of the 30 days, stacked by model"
    requests = int(text_of(usage.text).split("Requests ")[1].split()[0].replace(",", ""))
    assert requests > 500
