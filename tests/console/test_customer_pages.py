"""The customer's pages with real data behind them: usage charts and requests, keys (created,
shown once, revoked everywhere), alert settings, buying credits through Dodo's checkout, tier
and plan, and never another customer's rows."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx

from console.conftest import Stack
from console.support import csrf_of, text_of
from support.servers import AppServer, eventually
from tollgate_contracts import subjects
from tollgate_contracts.events import UsageRecorded
from tollgate_hotstate import api_key
from tollgate_ledger import ids
from tollgate_ledger.usage import post_usage
from tollgate_platform import bus


def usage(customer_id: str, *, model: str, cost: int, tokens: tuple[int, int], estimated: bool = False,
          days_ago: int = 0, key_id: str = "key_unknown") -> UsageRecorded:
    at = datetime.now(UTC) - timedelta(days=days_ago, minutes=1)
    return UsageRecorded(
        event_id=f"req_{uuid.uuid4().hex}", customer_id=customer_id, key_id=key_id, endpoint="/v1/chat/completions",
        model=model, requested_model=model, input_tokens=tokens[0], output_tokens=tokens[1], cost_nanos=cost,
        list_price_nanos=cost, price_book_version="test", estimated=estimated, started_at=at, occurred_at=at,
    )


async def test_usage_shows_a_month_by_model_and_each_request_with_its_cost(console_stack: Stack) -> None:
    console = console_stack.console
    customer_id, key, key_id = await console.customer(cents=1000)
    await post_usage(console_stack.ledger, [
        usage(customer_id, model="gpt-4o", cost=12_500_000, tokens=(1000, 1000), days_ago=3, key_id=key_id),
        usage(customer_id, model="gpt-4o-mini", cost=750, tokens=(1000, 1000), estimated=True, key_id=key_id),
    ])
    async with console.admin() as admin:
        month = {"days": 30, "requests_per_day": 5}
        imported = await admin.post(f"/customers/{customer_id}/synthetic-usage", json=month)
        again = await admin.post(f"/customers/{customer_id}/synthetic-usage", json=month)
        balance = (await admin.get(f"/customers/{customer_id}/balance")).json()
    assert imported.status_code == 200 and imported.json()["inserted"] == imported.json()["generated"] > 30
    assert again.json()["inserted"] == 0  # the history is the same on a second import
    assert balance["balance_nanos"] == 1000 * 10_000_000 - 12_500_000 - 750  # demo history is not money

    async with console.browser() as browser:
        await console.sign_in(browser, key)
        page = await browser.get("/console/usage")
    assert page.status_code == 200
    html = page.text
    assert html.count('<svg class="chart"') == 2
    assert re.search(r"<rect class=\"s\d\"[^>]*><title>[A-Z][a-z]{2} \d+ · gpt-4o: \$", html)
    assert '<title id="spend-chart-t">Spend per day (UTC), last 30 days, by model</title>' in html
    text = text_of(html)
    row = re.search(r"gpt-4o-mini (\S+ )?1,000 1,000 \$0\.00000075 estimated sign-in key", text)
    assert row, "the estimated request is listed with its exact cost and the key's name"
    assert "gpt-4o 1,000 1,000 $0.0125 exact sign-in key" in text
    assert "demo data" in text  # synthetic rows are labelled as such


async def test_usage_pages_through_older_requests(console_stack: Stack) -> None:
    console = console_stack.console
    customer_id, key, _ = await console.customer(cents=100)
    await post_usage(console_stack.ledger, [
        usage(customer_id, model="gpt-4o-mini", cost=1_000 + i, tokens=(10, i), days_ago=i % 20) for i in range(60)
    ])
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        first = await browser.get("/console/usage")
        older = re.search(r'href="(/console/usage\?before=[^"]+)"', first.text)
        assert older
        second = await browser.get(older.group(1).replace("&amp;", "&"))
    assert second.status_code == 200
    rows_first = re.findall(r"gpt-4o-mini 10 (\d+) ", text_of(first.text))
    rows_second = re.findall(r"gpt-4o-mini 10 (\d+) ", text_of(second.text))
    assert len(rows_first) == 50 and len(rows_second) == 10
    assert sorted(map(int, rows_first + rows_second)) == list(range(60)), "every request once, none twice"


async def test_a_key_created_in_the_console_is_shown_once_and_revoking_it_reaches_every_gateway(
    console_stack: Stack,
) -> None:
    console = console_stack.console
    _, key, _ = await console.customer()
    nc = await bus.connect(console_stack.infra.nats_url, "console-tests-invalidation")
    invalidated: list[str] = []

    async def collect(msg: object) -> None:
        invalidated.append(msg.data.decode())  # type: ignore[attr-defined]

    await nc.subscribe(subjects.CACHE_INVALIDATE_KEY, cb=collect)
    redis = console_stack.ledger.hot.redis
    try:
        async with console.browser() as browser:
            await console.sign_in(browser, key)
            created = await console.post_form(browser, "/console/keys", {"name": "batch jobs"}, page="/console/keys")
            assert created.status_code == 200
            plaintext = re.search(r'value="(sk-tg-[A-Za-z0-9]{40})"', created.text)
            assert plaintext, "the new key is on the page once"
            new_key = plaintext.group(1)
            assert created.headers["cache-control"] == "no-store"
            assert new_key not in (await browser.get("/console/keys")).text  # and never again
            key_hash = ids.hash_key(new_key)
            assert await redis.exists(api_key(key_hash)), "the gateway can use the key at once"

            key_id = await console_stack.pool.fetchval(
                "SELECT key_id FROM ledger.api_keys WHERE key_hash = $1", key_hash
            )
            listing = text_of((await browser.get("/console/keys")).text)
            assert "batch jobs" in listing and new_key[:12] in listing and "never" in listing
            revoked = await console.post_form(browser, f"/console/keys/{key_id}/revoke", {}, page="/console/keys")
            assert revoked.status_code == 303
            assert "is revoked" in text_of((await browser.get("/console/keys")).text)
        assert not await redis.exists(api_key(key_hash))
        await eventually(lambda: key_hash in invalidated, timeout=5)
        status = await console_stack.pool.fetchval("SELECT status FROM ledger.api_keys WHERE key_id = $1", key_id)
        assert status == "revoked"
    finally:
        await nc.close()


async def test_a_customer_sees_and_touches_only_their_own_account(console_stack: Stack) -> None:
    console = console_stack.console
    _, my_key, _ = await console.customer(name="Mine Customer", cents=300)
    theirs, their_key, their_key_id = await console.customer(name="Their Customer", cents=900)
    await post_usage(console_stack.ledger, [usage(theirs, model="o1", cost=55_555_555, tokens=(7777, 8888))])
    async with console.browser() as browser:
        await console.sign_in(browser, my_key)
        pages = [text_of((await browser.get(p)).text) for p in ("/console", "/console/usage", "/console/keys",
                                                                  "/console/alerts")]
        for page in pages:
            assert "Their Customer" not in page and theirs not in page and their_key[:12] not in page
            assert "7,777" not in page and "$9.00" not in page
        assert "$3.00" in pages[0]
        attempt = await console.post_form(browser, f"/console/keys/{their_key_id}/revoke", {}, page="/console/keys")
        assert attempt.status_code == 404
        # Nothing in a URL or form picks the account: the session does.
        sneaky = await browser.get(f"/console/usage?customer_id={theirs}")
        assert "7,777" not in text_of(sneaky.text)
    status = await console_stack.pool.fetchval("SELECT status FROM ledger.api_keys WHERE key_id = $1", their_key_id)
    assert status == "active"


async def test_alerts_set_the_ledger_threshold_and_the_notifier_channels(console_stack: Stack) -> None:
    from tollgate_notifier.app import create_app as create_notifier
    from tollgate_notifier.settings import NotifierSettings

    console = console_stack.console
    customer_id, key, _ = await console.customer(cents=2000)
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        down = await browser.get("/console/alerts")
        assert down.status_code == 200
        assert "cannot be shown right now" in text_of(down.text)

        saved = await console.post_form(browser, "/console/alerts/threshold", {"threshold_usd": "2.50"},
                                        page="/console/alerts")
        assert saved.status_code == 303
        page = text_of((await browser.get("/console/alerts")).text)
        assert "Low-balance alerts now fire below $2.50." in page and "below $2.50" in page
        bad = await console.post_form(browser, "/console/alerts/threshold", {"threshold_usd": "lots"},
                                      page="/console/alerts")
        assert bad.status_code == 303
        assert "Enter an amount" in text_of((await browser.get("/console/alerts")).text)
        async with console.admin() as admin:
            balance = (await admin.get(f"/customers/{customer_id}/balance")).json()
        assert balance["low_threshold_nanos"] == 2_500_000_000 and balance["low_threshold_explicit"]

        notifier = create_notifier(NotifierSettings(
            database_url=console_stack.settings.database_url, nats_url=console_stack.infra.nats_url,
            admin_token=console_stack.settings.admin_token, log_level="WARNING",
        ))
        async with AppServer(notifier, port=console_stack.notifier_port):
            shown = await browser.get("/console/alerts")
            assert 'name="channels" value="email"' in shown.text
            changed = await console.post_form(browser, "/console/alerts/channels", {
                "channels": ["slack"], "email": "alerts@example.com",
                "slack_webhook_url": "https://hooks.slack.example/services/T1/B2/secret-part",
            }, page="/console/alerts")
            assert changed.status_code == 303
            page_html = (await browser.get("/console/alerts")).text
            assert "Alert channels saved." in text_of(page_html)
            assert "secret-part" not in page_html  # the Slack URL is a credential: masked
            invalid = await console.post_form(browser, "/console/alerts/channels", {
                "channels": ["email"], "email": "not-an-email",
            }, page="/console/alerts")
            assert invalid.status_code == 303
            assert "not an email address" in text_of((await browser.get("/console/alerts")).text)
            async with httpx.AsyncClient(timeout=5) as http:
                prefs = (await http.get(
                    f"http://127.0.0.1:{console_stack.notifier_port}/admin/v1/preferences/{customer_id}",
                    headers={"Authorization": f"Bearer {console_stack.settings.admin_token.get_secret_value()}"},
                )).json()
        assert prefs["channels"] == ["slack"] and prefs["email"] == "alerts@example.com"
        assert prefs["slack_webhook_url"].startswith("https://hooks.slack.example/services/")


async def test_buying_a_pack_goes_through_dodo_checkout_and_comes_back_to_the_new_balance(
    console_stack: Stack,
) -> None:
    console = console_stack.console
    async with console.admin() as admin:
        created = await admin.post("/customers", json={"email": "buyer@example.com", "name": "Buyer"})
        customer_id = created.json()["customer_id"]
        key = (await admin.post(f"/customers/{customer_id}/keys", json={"name": "k"})).json()["key"]
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        overview = await browser.get("/console")
        packs = re.findall(r'name="pack" value="([^"]+)"', overview.text)
        labels = re.findall(r'aria-label="Buy (\$[\d.]+) of credits', overview.text)
        assert labels == ["$5.00", "$10.00", "$50.00", "$100.00"]
        bought = await browser.post("/console/buy", data={"csrf": csrf_of(overview.text), "pack": packs[1]})
        assert bought.status_code == 303
        checkout_path = urlsplit(bought.headers["location"]).path  # the in-test emulator's public URL has no port
        assert checkout_path.startswith("/checkout/cks_")
        async with httpx.AsyncClient(follow_redirects=False, timeout=10) as payer:
            paid = await payer.post(f"{console_stack.emulator_url}{checkout_path}/pay")
        assert paid.status_code == 303
        back = paid.headers["location"]
        assert back.startswith(f"{console.url}/console/checkout/return?payment_id=")

        async def credited() -> str | None:
            answer = await browser.get(back.removeprefix(console.url))
            return answer.headers.get("location") if answer.status_code == 303 else None

        assert await eventually(credited, timeout=15) == "/console"
        page = text_of((await browser.get("/console")).text)
        assert "Payment received: $10.00 of credits added." in page
        assert re.search(r"Top-up pay_\S+ \+\$10\.00 \$10\.00", page), "the ledger row is on the overview"
        declined = await browser.get("/console/checkout/return?payment_id=pay_x&status=failed")
        assert declined.status_code == 303
        assert "declined" in text_of((await browser.get("/console")).text)


async def test_tier_and_plan_show_what_the_other_services_published(console_stack: Stack) -> None:
    from tollgate_platform.db import migrate_async
    from tollgate_tier.app import MIGRATIONS_DIR as TIER_MIGRATIONS

    console = console_stack.console
    customer_id, key, _ = await console.customer(cents=100)
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        without = text_of((await browser.get("/console")).text)
        assert "Pay as you go with credits." in without
        if "tier" not in {r["nspname"] for r in await console_stack.pool.fetch("SELECT nspname FROM pg_namespace")}:
            assert "Tier information is not available right now." in without
        await migrate_async(console_stack.settings.database_url, TIER_MIGRATIONS, "tier")
        await console_stack.pool.execute(
            "INSERT INTO tier.levels (rank, name, preset, min_spend_nanos, rpm, tpm) VALUES "
            "(0, 'tier-1', 'tollgate', 0, 3, 40000), (1, 'tier-2', 'tollgate', 50000000000, 10, 200000), "
            "(2, 'tier-3', 'tollgate', 250000000000, 50, 1000000) ON CONFLICT DO NOTHING"
        )
        default = text_of((await browser.get("/console")).text)
        assert "tier-1" in default and "Next: tier-2 (10 RPM, 200,000 TPM) after $50.00 more" in default
        await console_stack.pool.execute(
            "INSERT INTO tier.customers (customer_id, lifetime_spend_nanos, first_payment_at, tier, rpm, tpm, version) "
            "VALUES ($1, 60000000000, now() - interval '3 days', 'tier-2', 10, 200000, 2)", customer_id,
        )
        promoted = text_of((await browser.get("/console")).text)
        assert "tier-2" in promoted and "Paid so far $60.00" in promoted
        assert "Next: tier-3 (50 RPM, 1,000,000 TPM) after $190.00 more" in promoted


async def test_top_up_links_printed_by_other_services_lead_to_the_console(console_stack: Stack) -> None:
    async with console_stack.console.browser() as browser:
        for path in ("/billing/topup", "/billing/top-up?customer_id=cus_x"):
            answer = await browser.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/console"
        css = await browser.get("/console/static/console.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


async def test_concurrent_page_loads_of_one_session_all_render(console_stack: Stack) -> None:
    console = console_stack.console
    _, key, _ = await console.customer(cents=100)
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        answers = await asyncio.gather(*(browser.get(p) for p in ["/console", "/console/usage", "/console/keys"] * 3))
    assert [a.status_code for a in answers] == [200] * 9


async def test_a_subscribed_customer_sees_the_plan_and_its_soft_cap(console_stack: Stack) -> None:
    console = console_stack.console
    customer_id, key, _ = await console.customer()
    async with console.admin() as admin:
        changed = await admin.put(f"/customers/{customer_id}/plan", json={"plan": "plus"})
    assert changed.status_code == 200, changed.text
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        page = text_of((await browser.get("/console")).text)
    assert "Plus" in page and "Pay as you go" not in page
    assert "Soft cap this period: $0.00 of $20.00" in page
