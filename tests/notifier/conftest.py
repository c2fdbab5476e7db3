"""Notifier tests: real NATS/Postgres (session fixtures), the real SMTP and Slack sinks running in
the test loop, and notifier replicas as real processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from support.servers import AppServer, Infra, ManagedProcess, reset_bus, service_process
from tollgate_contracts.streams import NOTIFIER_BILLING, NOTIFIER_DEADLETTERS, NOTIFIER_TIERS
from tollgate_platform import bus
from tollgate_standins.slack_sink import SlackSinkSettings
from tollgate_standins.slack_sink import create_app as create_slack_sink
from tollgate_standins.smtp_sink import SmtpSinkSettings
from tollgate_standins.smtp_sink import create_app as create_smtp_sink

from .helpers import ADMIN_TOKEN, HOOK_SECRET, Cluster, Sinks

NOTIFIER_CONSUMERS = (NOTIFIER_BILLING, NOTIFIER_TIERS, NOTIFIER_DEADLETTERS)


@pytest.fixture(scope="module")
async def sinks() -> AsyncIterator[Sinks]:
    smtp_app = create_smtp_sink(SmtpSinkSettings(smtp_port=0))
    slack_app = create_slack_sink(SlackSinkSettings(hook_secret=HOOK_SECRET))
    async with AppServer(smtp_app) as smtp, AppServer(slack_app) as slack, httpx.AsyncClient(timeout=10) as http:
        yield Sinks(smtp_url=smtp.url, smtp_port=smtp_app.state.smtp_port, slack_url=slack.url, http=http)


@pytest.fixture(scope="module")
async def notifier_bus(infra: Infra) -> Infra:
    """The notifier's consumers as provisioning makes them, fresh for this module (replicas bind to
    them for the whole module, so the per-test clean_bus, which deletes consumers, is not used)."""
    await reset_bus(infra.nats_url, NOTIFIER_CONSUMERS)
    return infra


def notifier_env(sinks: Sinks) -> dict[str, str]:
    """Production retries over minutes to days; compressed here to fractions of a second."""
    return {
        "NOTIFIER_SMTP_PORT": str(sinks.smtp_port),
        "NOTIFIER_SLACK_DEFAULT_WEBHOOK_URL": f"{sinks.slack_url}/services/T000/B000/XXXX",
        "NOTIFIER_OPERATOR_SLACK_WEBHOOK_URL": f"{sinks.slack_url}/services/T000/B000/OPERATOR",
        "NOTIFIER_OPERATOR_EMAIL": "ops@tollgate.test",
        "NOTIFIER_TOPUP_URL": "https://billing.example.test/top-up?customer={customer_id}",
        "NOTIFIER_RETRY_BASE_S": "0.2",
        "NOTIFIER_RETRY_MAX_S": "0.8",
        "NOTIFIER_WORKER_POLL_S": "0.2",
        "NOTIFIER_NAK_DELAY_S": "0.5",
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
async def cluster(notifier_bus: Infra, sinks: Sinks) -> AsyncIterator[Cluster]:
    """Three notifier replicas sharing each durable consumer and the database."""
    env = notifier_env(sinks)
    async with contextlib.AsyncExitStack() as stack:
        async def replica() -> ManagedProcess:
            return await stack.enter_async_context(service_process("tollgate_notifier", notifier_bus, env=env))

        # All three start at once, as a deployment would (migrations race; yoyo's lock decides).
        first, *others = await asyncio.gather(replica(), replica(), replica())
        nc = await bus.connect(notifier_bus.nats_url, "tests-notifier")
        stack.push_async_callback(nc.close)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{first.port}", timeout=10,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as admin:
            yield Cluster(replicas=[first, *others], js=nc.jetstream(), admin=admin, sinks=sinks)
