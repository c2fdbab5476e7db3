"""The notifier as an in-process app (create_app) against its own database: the customer's email
comes from the ledger's customers table when no preference names one, and SMTP auth is used."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from support.servers import AppServer, Infra, create_database, drop_database, eventually
from tollgate_notifier.app import create_app
from tollgate_notifier.settings import NotifierSettings
from tollgate_platform import bus
from tollgate_standins.smtp_sink import SmtpSinkSettings
from tollgate_standins.smtp_sink import create_app as create_smtp_sink

from .helpers import ADMIN_TOKEN, balance_event, balance_subject, customer

SMTP_USER, SMTP_PASSWORD = "notifier", "relay-password-123"


@pytest.fixture
async def ledger_db() -> AsyncIterator[str]:
    """A database where the ledger's customers table exists (the notifier only reads it)."""
    url = await create_database()
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE SCHEMA ledger; "
                       "CREATE TABLE ledger.customers (customer_id text PRIMARY KEY, email text, name text)")
    await conn.close()
    yield url
    await drop_database(url)


@pytest.fixture
async def auth_smtp() -> AsyncIterator[tuple[AppServer, int]]:
    app = create_smtp_sink(SmtpSinkSettings(smtp_port=0, auth_username=SMTP_USER, auth_password=SMTP_PASSWORD,
                                            auth_required=True))
    async with AppServer(app) as server:
        yield server, app.state.smtp_port


async def test_email_goes_to_the_ledger_address_over_authenticated_smtp(
    clean_bus: Infra, ledger_db: str, auth_smtp: tuple[AppServer, int]
) -> None:
    sink, smtp_port = auth_smtp
    cid = customer()
    conn = await asyncpg.connect(ledger_db)
    await conn.execute("INSERT INTO ledger.customers VALUES ($1, $2, 'Ada')", cid, f"ada+{cid}@ledger.test")
    await conn.close()
    settings = NotifierSettings(
        database_url=ledger_db, nats_url=clean_bus.nats_url, smtp_port=smtp_port, smtp_username=SMTP_USER,
        smtp_password=SecretStr(SMTP_PASSWORD), slack_default_webhook_url=None,
        admin_token=SecretStr(ADMIN_TOKEN), retry_base_s=0.2, retry_max_s=0.5, worker_poll_s=0.2,
    )
    async with AppServer(create_app(settings)) as notifier, httpx.AsyncClient(
        base_url=notifier.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    ) as admin, httpx.AsyncClient(base_url=sink.url, timeout=10) as sink_http:
        prefs = (await admin.get(f"/admin/v1/preferences/{cid}")).json()
        assert prefs["email"] is None and prefs["effective_email"] == f"ada+{cid}@ledger.test"

        nc = await bus.connect(clean_bus.nats_url, "tests")
        event = balance_event(cid, seq=5, reason="low", balance_usd=0.42)
        await bus.publish_event(nc.jetstream(), balance_subject("low", cid), event)
        await nc.close()

        async def mails() -> list[dict[str, object]]:
            return list((await sink_http.get("/messages", params={"to": cid})).json())

        [mail] = await eventually(mails)
        assert mail["to"] == [f"ada+{cid}@ledger.test"] and mail["auth_login"] == SMTP_USER
        assert "$0.42" in str(mail["subject"])

        async def logged() -> list[dict[str, object]]:
            rows = (await admin.get("/admin/v1/deliveries", params={"customer_id": cid})).json()["data"]
            return rows if all(r["status"] != "pending" for r in rows) else []

        rows = {r["channel"]: r for r in await eventually(logged)}
        assert rows["email"]["status"] == "sent"
        assert rows["slack"]["status"] == "skipped" and rows["slack"]["last_error"] == "no Slack webhook configured"
