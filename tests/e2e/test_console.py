"""A customer signs in with a key, buys a pack on Dodo's checkout page and comes back to the new
balance and its ledger row, creates a key, uses it through the gateway, revokes it and sees it
refused; an operator walks through customers, a ledger, dead letters (replayed), drift and
webhooks. Every page is photographed into artifacts/screenshots/."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import openai
import pytest
from openai import AsyncOpenAI
from playwright.async_api import Page, expect

from e2e.conftest import ADMIN_TOKEN, Stack, shot
from support.servers import eventually
from tollgate_contracts import subjects
from tollgate_contracts.events import DeadLetter
from tollgate_platform import bus

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello from the console test"}]


async def nav(page: Page, section: str) -> None:
    await page.get_by_role("navigation", name="Console sections").get_by_role("link", name=section, exact=True).click()


def gateway(stack: Stack, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key=key, max_retries=0, timeout=10)


async def test_a_customer_buys_credits_uses_a_new_key_and_revokes_it(stack: Stack, page: Page) -> None:
    async with stack.admin() as admin:
        created = await admin.post("/customers", json={"email": "ada@example.com", "name": "Ada Lovelace"})
        assert created.status_code == 201 and created.json()["dodo_customer_id"]
        customer_id = created.json()["customer_id"]
        sign_in_key = (await admin.post(f"/customers/{customer_id}/keys", json={"name": "laptop"})).json()["key"]

    await page.goto(f"{stack.ledger_url}/console")
    await expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
    await shot(page, "01-sign-in")
    await page.get_by_label("API key", exact=True).fill(sign_in_key)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(page.get_by_role("heading", name=re.compile("^Overview"))).to_be_visible()
    await expect(page.get_by_test_id("balance")).to_have_text("$0.00")
    await shot(page, "02-overview-before-payment")

    await page.get_by_role("button", name="Buy $5.00 of credits for $5.00").click()
    await expect(page).to_have_url(re.compile(rf"^{re.escape(stack.dodo_url)}/checkout/cks_"))
    await expect(page.get_by_role("heading", name="Checkout")).to_be_visible()
    await shot(page, "03-dodo-checkout")
    await page.get_by_role("button", name="Pay USD 5.00").click()

    # Back on the console: it waits for the payment webhook, then shows the new balance.
    await expect(page.get_by_test_id("balance")).to_have_text("$5.00", timeout=30_000)
    received = page.get_by_role("status").filter(has_text="Payment received: $5.00 of credits added.")
    await expect(received).to_be_visible()
    history = page.get_by_role("table").filter(has_text="Top-up")
    await expect(history.get_by_role("row").filter(has_text=re.compile(r"Top-up pay_\w+"))).to_contain_text("+$5.00")
    await shot(page, "04-overview-after-payment")

    # The sign-in key works through the gateway; a month of demo history fills the charts.
    answer = await gateway(stack, sign_in_key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert answer.usage is not None and answer.usage.total_tokens > 0
    async with stack.admin() as admin:
        assert (await admin.post(f"/customers/{customer_id}/synthetic-usage", json={})).status_code == 200
    await nav(page, "Usage")
    await expect(page.get_by_role("img", name=re.compile("^Spend per day"))).to_be_visible()

    async def request_listed() -> bool:
        await page.reload()
        return await page.get_by_role("row").filter(has_text="laptop").count() > 0

    await eventually(request_listed, timeout=15, interval=0.3)
    await shot(page, "05-usage")

    await nav(page, "API keys")
    await page.get_by_label("Name", exact=True).fill("ci key")
    await page.get_by_role("button", name="Create key").click()
    new_key = await page.get_by_test_id("new-key").input_value()
    assert new_key.startswith("sk-tg-")
    await shot(page, "06-keys-new-key-shown-once", mask=[page.get_by_test_id("new-key")])
    works = await gateway(stack, new_key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert works.choices[0].message.content

    await page.get_by_role("button", name="Revoke key ci key").click()
    await expect(page.get_by_role("status").filter(has_text="is revoked")).to_be_visible()
    await expect(page.get_by_role("row").filter(has_text="ci key")).to_contain_text("revoked")
    await shot(page, "07-keys-after-revoke")

    async def refused() -> bool:
        try:
            await gateway(stack, new_key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        except openai.AuthenticationError as exc:
            return exc.status_code == 401
        except openai.RateLimitError:
            return False
        return False

    await eventually(refused, timeout=1.0, interval=0.1)

    await nav(page, "Alerts")
    await page.get_by_label("Threshold in US dollars", exact=True).fill("1.50")
    await page.get_by_role("button", name="Save threshold").click()
    await expect(page.get_by_test_id("threshold")).to_have_text("$1.50")
    await expect(page.get_by_text("cannot be shown right now")).to_be_visible()  # no notifier in this stack
    await shot(page, "08-alerts")

    await page.set_viewport_size({"width": 390, "height": 844})
    await nav(page, "Overview")
    await expect(page.get_by_test_id("balance")).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the overview fits a phone's width without sideways scrolling"
    await shot(page, "09-overview-phone")


async def test_an_operator_sees_customers_a_ledger_dead_letters_drift_and_webhooks(stack: Stack, page: Page) -> None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        customer_id = await conn.fetchval("SELECT customer_id FROM ledger.customers ORDER BY created_at LIMIT 1")
        assert customer_id, "the customer test ran first"
        now = datetime.now(UTC)
        for hours, drift in ((40, 0), (30, 150_000_000), (29, 150_000_000), (6, 0)):
            await conn.execute(
                "INSERT INTO ledger.drift_checks (check_id, customer_id, tollgate_nanos, in_flight_nanos, dodo_nanos, "
                "drift_nanos, status, checked_at) VALUES ($1, $2, 0, 0, $3, $3, $4, $5)",
                f"drc_{uuid.uuid4().hex[:20]}", customer_id, drift, "ok" if drift == 0 else "drift",
                now - timedelta(hours=hours),
            )
    finally:
        await conn.close()
    nc = await bus.connect(stack.nats_url, "e2e-deadletter")
    try:
        original = subjects.for_customer(subjects.USAGE_RECORDED, customer_id)
        await bus.publish_event(nc.jetstream(), subjects.deadletter("metering", original), DeadLetter(
            service="metering", original_subject=original, original_msg_id=f"req_e2e_{uuid.uuid4().hex[:8]}",
            reason="no_dodo_customer: usage without a Dodo customer", payload='{"event_id": "req_e2e"}',
        ))
    finally:
        await nc.close()

    await page.goto(f"{stack.ledger_url}/console/sign-in")
    await page.get_by_text("Operator sign-in").click()
    await page.get_by_label("Admin token", exact=True).fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in as operator").click()
    await expect(page.get_by_role("heading", name="Customers")).to_be_visible()
    # $5.00 bought, two small requests spent.
    await expect(page.get_by_role("row").filter(has_text="Ada Lovelace")).to_contain_text(re.compile(r"\$4\.9\d"))
    await shot(page, "10-ops-customers")

    await page.get_by_role("link", name="Ada Lovelace").click()
    ledger_table = page.get_by_role("table").filter(has_text="Balance after")
    await expect(ledger_table.get_by_role("row").filter(has_text="topup")).to_contain_text("+$5.00")
    await expect(ledger_table.get_by_role("row").filter(has_text="usage").first).to_be_visible()
    await shot(page, "11-ops-customer-ledger")

    await nav(page, "Metering & dead letters")
    await expect(page.get_by_text("no_dodo_customer: usage without a Dodo customer")).to_be_visible()
    await expect(page.get_by_role("row").filter(has_text="ledger-usage")).to_be_visible()
    await shot(page, "12-ops-pipeline")
    await page.get_by_role("button", name=re.compile(r"^Replay dead letter \d+")).first.click()
    replayed = page.get_by_role("status").filter(has_text=re.compile(r"replayed to usage\.recorded\."))
    await expect(replayed).to_be_visible()

    await nav(page, "Drift")
    await expect(page.get_by_role("img", name=re.compile("^Drift"))).to_be_visible()
    await shot(page, "13-ops-drift")

    await nav(page, "Webhooks")
    await expect(page.get_by_role("row").filter(has_text="payment.succeeded")).to_contain_text("applied")
    await shot(page, "14-ops-webhooks")
