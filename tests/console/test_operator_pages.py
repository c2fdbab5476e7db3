"""The operator's pages: customers at a glance, one customer's ledger page by page, metering lag
and dead letters (replayed for real onto the bus), drift over time, and the webhook inbox."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from standardwebhooks import Webhook

from console.conftest import Stack
from console.support import csrf_of, text_of
from console.test_customer_pages import usage
from support.servers import Infra
from tollgate_contracts import subjects
from tollgate_contracts.events import DeadLetter
from tollgate_ledger.usage import post_usage
from tollgate_platform import bus
from tollgate_standins.dodo_emulator.settings import DEV_WEBHOOK_SECRET


@contextlib.asynccontextmanager
async def operator(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.console.browser() as browser:
        signed_in = await stack.console.sign_in_operator(browser)
        assert signed_in.status_code == 303
        yield browser


async def test_customers_list_balance_plan_and_latest_drift_and_finds_by_email(console_stack: Stack) -> None:
    console = console_stack.console
    customer_id, _, _ = await console.customer(name="Drifting Dora", cents=4200)
    await console_stack.pool.execute(
        "INSERT INTO ledger.drift_checks (check_id, customer_id, tollgate_nanos, in_flight_nanos, dodo_nanos, "
        "drift_nanos, status) VALUES ($1, $2, 42000000000, 0, 41500000000, -500000000, 'drift')",
        f"drc_{uuid.uuid4().hex[:20]}", customer_id,
    )
    email = await console_stack.pool.fetchval("SELECT email FROM ledger.customers WHERE customer_id = $1", customer_id)
    async with operator(console_stack) as browser:
        found = text_of((await browser.get("/console/ops", params={"q": email})).text)
        missing = text_of((await browser.get("/console/ops", params={"q": "nobody-like-this"})).text)
    assert "Drifting Dora" in found and "$42.00" in found and "credits" in found
    assert "drift -$0.50" in found
    assert "No customers match “nobody-like-this”" in missing


async def test_a_customers_ledger_pages_newest_first(console_stack: Stack) -> None:
    console = console_stack.console
    customer_id, _, _ = await console.customer(name="Busy Bee", cents=100)
    await post_usage(console_stack.ledger, [
        usage(customer_id, model="gpt-4o-mini", cost=1_000_000, tokens=(100, i)) for i in range(60)
    ])
    async with operator(console_stack) as browser:
        first = await browser.get(f"/console/ops/customers/{customer_id}")
        older = re.search(r'href="(/console/ops/customers/[^"?]+\?before_seq=(\d+))"', first.text)
        assert older and older.group(2) == "12"  # 61 entries: 61..12 on page one
        second = await browser.get(older.group(1))
        nobody = await browser.get("/console/ops/customers/cus_tg_nobody0000000000")
    assert first.status_code == second.status_code == 200 and nobody.status_code == 404
    first_text, second_text = text_of(first.text), text_of(second.text)
    assert "Busy Bee" in first_text and "$0.94" in first_text  # $1.00 granted, 60 x $0.001 used
    seqs_first = [int(s) for s in re.findall(r"<td class=\"num\">(\d+)</td>\s*<td>", first.text)]
    seqs_second = [int(s) for s in re.findall(r"<td class=\"num\">(\d+)</td>\s*<td>", second.text)]
    assert seqs_first == list(range(61, 11, -1)) and seqs_second == list(range(11, 0, -1))
    assert "grant" in second_text and "welcome credits" in second_text


async def test_metering_lag_and_replaying_a_dead_letter(console_stack: Stack, clean_bus: Infra) -> None:
    customer = "cus_tg_deadletter000001"
    nc = await bus.connect(clean_bus.nats_url, "console-tests-pipeline")
    js = nc.jetstream()
    try:
        subject = subjects.for_customer(subjects.USAGE_RECORDED, customer)
        originals = [usage(customer, model="gpt-4o-mini", cost=5, tokens=(1, 1)) for _ in range(3)]
        for event in originals:
            await bus.publish_event(js, subject, event)
        letter = DeadLetter(
            service="metering", original_subject=subject, original_msg_id=originals[0].event_id,
            reason="unknown_model: gpt-9 is not in the price book", payload=originals[0].model_dump_json(),
        )
        await bus.publish_event(js, subjects.deadletter("metering", subject), letter)

        async with operator(console_stack) as browser:
            page = await browser.get("/console/ops/pipeline")
            text = text_of(page.text)
            assert 'data-testid="pending-metering-usage">3<' in page.text
            assert 'data-testid="pending-ledger-usage">3<' in page.text
            assert "unknown_model: gpt-9 is not in the price book" in text and originals[0].event_id in text
            seq = re.search(r'action="/console/ops/dead-letters/(\d+)/replay"', page.text)
            assert seq
            replayed = await browser.post(seq.group(0).split('"')[1], data={"csrf": csrf_of(page.text)})
            assert replayed.status_code == 303
            after = await browser.get("/console/ops/pipeline")
            assert f"Dead letter {seq.group(1)} replayed to {subject}." in text_of(after.text)
            assert 'data-testid="pending-metering-usage">4<' in after.text
            twice = await browser.post(seq.group(0).split('"')[1], data={"csrf": csrf_of(after.text)})
            assert twice.status_code == 303
            assert "had already been replayed" in text_of((await browser.get("/console/ops/pipeline")).text)

        sub = await js.pull_subscribe(subject, stream="USAGE", config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=5,
        ))
        msgs = await sub.fetch(10, timeout=2)
        ids = [(m.headers or {}).get("Nats-Msg-Id") for m in msgs]
        assert ids[-1] == f"{originals[0].event_id}:replay:{seq.group(1)}" and len(ids) == 4
        assert json.loads(msgs[-1].data)["event_id"] == originals[0].event_id  # the original payload
    finally:
        await nc.close()


async def test_a_customer_cannot_replay_dead_letters(console_stack: Stack) -> None:
    console = console_stack.console
    _, key, _ = await console.customer()
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        token = csrf_of((await browser.get("/console")).text)
        assert (await browser.post("/console/ops/dead-letters/1/replay", data={"csrf": token})).status_code == 403


async def test_drift_over_time_is_a_line_per_customer(console_stack: Stack) -> None:
    console = console_stack.console
    customer_id, _, _ = await console.customer(name="Line Customer")
    now = datetime.now(UTC)
    for hours, drift, status in ((30, 0, "ok"), (20, -2_000_000_000, "suspect"), (19, -2_000_000_000, "drift"),
                                 (2, 0, "ok")):
        await console_stack.pool.execute(
            "INSERT INTO ledger.drift_checks (check_id, customer_id, tollgate_nanos, in_flight_nanos, dodo_nanos, "
            "drift_nanos, status, checked_at) VALUES ($1, $2, 0, 0, $3, $3, $4, $5)",
            f"drc_{uuid.uuid4().hex[:20]}", customer_id, drift, status, now - timedelta(hours=hours),
        )
    async with operator(console_stack) as browser:
        week = await browser.get("/console/ops/drift?window=7d")
        day = await browser.get("/console/ops/drift?window=24h")
        bad = await browser.get("/console/ops/drift?window=1y")
    assert week.status_code == day.status_code == 200 and bad.status_code == 400
    assert re.search(rf"<polyline class=\"l\d\" points=\"[^\"]+\"><title>{customer_id}</title>", week.text)
    assert week.text.count(f"<title>{customer_id} at ") == 5  # four checks, drawn on to now
    assert "-$2.00" in text_of(week.text)
    assert day.text.count(f"<title>{customer_id} at ") == 4  # the 30-hour-old check is outside the day


async def test_webhooks_and_their_outcome(console_stack: Stack) -> None:
    webhook_id = f"msg_{uuid.uuid4().hex}"
    body = json.dumps({"business_id": "bus_x", "type": "license_key.created",
                       "timestamp": datetime.now(UTC).isoformat(), "data": {}})
    at = datetime.now(UTC)
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
               "webhook-signature": Webhook(DEV_WEBHOOK_SECRET).sign(webhook_id, at, body),
               "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=10) as http:
        delivered = await http.post(f"{console_stack.console.url}/webhooks/dodo", content=body, headers=headers)
    assert delivered.status_code == 200
    async with operator(console_stack) as browser:
        everything = text_of((await browser.get("/console/ops/webhooks")).text)
        ignored = text_of((await browser.get("/console/ops/webhooks?outcome=ignored")).text)
        parked = text_of((await browser.get("/console/ops/webhooks?outcome=parked")).text)
    assert "license_key.created ignored" in everything and webhook_id in everything
    assert webhook_id in ignored and webhook_id not in parked


async def test_dead_letters_of_any_shape_are_listed_and_only_real_ones_offer_replay(
    console_stack: Stack, clean_bus: Infra
) -> None:
    nc = await bus.connect(clean_bus.nats_url, "console-tests-odd-letters")
    js = nc.jetstream()
    try:
        await bus.publish_raw(js, "deadletter.tier.billing.payment.succeeded.cus_x", b"\xff not json", "odd-1")
        await bus.publish_event(js, subjects.deadletter("tier", "billing.payment.succeeded.cus_x"), DeadLetter(
            service="tier", original_subject="billing.payment.succeeded.cus_x", original_msg_id="payment:pay_1",
            reason="negative amount", payload="AAEC", payload_encoding="base64",
        ))
    finally:
        await nc.close()
    async with operator(console_stack) as browser:
        page = await browser.get("/console/ops/pipeline")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "not a dead-letter event; not replayable" in text and "negative amount" in text
    assert page.text.count('/replay"') == 1
