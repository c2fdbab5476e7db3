"""Issue 9 through every real piece: spending through the gateway across the low-balance
threshold produces exactly one email and one Slack message, with three notifier replicas running
and the balance.low message delivered twice on the bus."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from nats.js.api import DeliverPolicy

from support.servers import AppServer, Infra, ManagedProcess, eventually, service_process
from system.conftest import ADMIN, ADMIN_TOKEN, Stack
from tollgate_contracts.streams import NOTIFIER_BILLING
from tollgate_platform import bus
from tollgate_standins.slack_sink import SlackSinkSettings
from tollgate_standins.slack_sink import create_app as create_slack_sink
from tollgate_standins.smtp_sink import SmtpSinkSettings
from tollgate_standins.smtp_sink import create_app as create_smtp_sink

EMAIL = "alerts@customer.example"


@pytest.fixture
def tiers_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiers.toml"
    path.write_text('preset = "roomy"\n[[presets.roomy]]\nname = "tier-1"\nmin_spend_usd = "0"\nrpm = 1000\n'
                    'tpm = 10000000\n')
    return path


async def test_crossing_the_threshold_alerts_once_by_email_and_slack(stack: Stack, system_db: Infra) -> None:
    smtp_app = create_smtp_sink(SmtpSinkSettings(smtp_port=0))
    async with (
        AppServer(smtp_app) as smtp,
        AppServer(create_slack_sink(SlackSinkSettings())) as slack,
        httpx.AsyncClient(timeout=10) as http,
        httpx.AsyncClient(base_url=stack.ledger_url + "/admin/v1", headers=ADMIN, timeout=30) as admin,
        contextlib.AsyncExitStack() as replicas,
    ):
        env = {
            "NOTIFIER_SMTP_PORT": str(smtp_app.state.smtp_port),
            "NOTIFIER_SLACK_DEFAULT_WEBHOOK_URL": f"{slack.url}/services/T000/B000/CUSTOMER",
            "NOTIFIER_OPERATOR_SLACK_WEBHOOK_URL": f"{slack.url}/services/T000/B000/OPERATOR",
            "NOTIFIER_WORKER_POLL_S": "0.2",
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        }

        async def replica() -> ManagedProcess:
            return await replicas.enter_async_context(service_process("tollgate_notifier", system_db, env=env))

        first, *_ = await asyncio.gather(replica(), replica(), replica())

        customer_id = (await admin.post("/customers", json={"email": EMAIL, "name": "Alert Me"})).json()[
            "customer_id"]
        key = (await admin.post(f"/customers/{customer_id}/keys", json={"name": "k"})).json()["key"]
        await admin.post(f"/customers/{customer_id}/grants",
                         json={"amount_cents": 100, "reason": "start", "idempotency_key": f"start-{customer_id}"})
        threshold = await admin.put(f"/customers/{customer_id}/low-threshold", json={"threshold_nanos": 500_000_000})
        assert threshold.status_code == 200, threshold.text

        client = openai.AsyncOpenAI(base_url=stack.gateway_url + "/v1", api_key=key, max_retries=0)
        for _ in range(6):  # gpt-4o, 10,000 output tokens: $0.10 each -> $1.00 falls to $0.40
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=10_000,
                extra_body={"mock": {"output_tokens": 10_000}},
            )

        async def customer_slack() -> list[dict[str, Any]]:
            items = (await http.get(f"{slack.url}/messages")).json()
            return [m for m in items if m["path"].endswith("/CUSTOMER")]

        async def emails() -> list[dict[str, Any]]:
            return list((await http.get(f"{smtp.url}/messages", params={"to": EMAIL})).json())

        await eventually(emails, timeout=20)
        await eventually(customer_slack, timeout=20)

        # The same balance.low message, delivered a second time (as after a redelivery).
        nc = await bus.connect(system_db.nats_url, "alert-replay")
        js = nc.jetstream()
        sub = await js.subscribe(f"billing.balance.low.{customer_id}", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
        original = await sub.next_msg(timeout=5)
        await bus.publish_raw(js, original.subject, original.data, msg_id="replayed-" + customer_id)

        async def drained() -> bool:
            info = await js.consumer_info(NOTIFIER_BILLING.stream.name, NOTIFIER_BILLING.durable)
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(drained, timeout=20)
        await nc.close()

        async def deliveries_settled() -> list[dict[str, Any]] | None:
            log = (await http.get(
                f"http://127.0.0.1:{first.port}/admin/v1/deliveries", params={"customer_id": customer_id},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )).json()
            items = log["data"] if isinstance(log, dict) else log
            return items if items and all(d["status"] == "sent" for d in items) else None

        # Deliveries are unique per alert and channel in Postgres: once these are sent, no replica
        # can send the same alert again.
        settled = await eventually(deliveries_settled, timeout=20)
        assert sorted(d["channel"] for d in settled) == ["email", "slack"]
        sent = await emails()
        assert len(sent) == 1, [m["subject"] for m in sent]
        # $1.00 - 6 x ($0.10 of output + a few prompt tokens) is a little under $0.40; balances
        # shown to people round down.
        assert "$0.39" in sent[0]["text"] and "$0.50" in sent[0]["text"], sent[0]["text"]
        assert "top-up" in sent[0]["text"]
        assert len(await customer_slack()) == 1
