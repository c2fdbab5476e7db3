"""Found by the chaos run: after `pg_terminate_backend`, asyncpg can raise InternalClientError
("cannot switch to state 12; another operation is in progress") from a pooled connection. The
notifier's delivery worker loop catches only PostgresError/OSError/InterfaceError, so that
exception ends the loop for good: the replica keeps consuming events and creating alerts, /readyz
stays green, and no alert is ever sent again (the chaos drain found deliveries pending forever).

The behaviour a user would notice: an alert created after a database hiccup still arrives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from support.servers import AppServer, create_database, drop_database, eventually
from tollgate_notifier.app import MIGRATIONS_DIR
from tollgate_notifier.settings import NotifierSettings
from tollgate_notifier.worker import DeliveryWorker
from tollgate_platform.db import create_pool, migrate_async
from tollgate_standins.slack_sink import SlackSinkSettings
from tollgate_standins.slack_sink import create_app as create_slack_sink


class _BrokenConnection:
    async def __aenter__(self) -> None:
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    async def __aexit__(self, *exc: object) -> None:
        return None


class _PoolThatHiccups:
    """A real pool whose first query (fetch) or first checkout (acquire) fails the way asyncpg
    does on a connection `pg_terminate_backend` broke under it."""

    def __init__(self, pool: asyncpg.Pool, *, fetch: int = 1, acquire: int = 0) -> None:
        self._pool = pool
        self.hiccups = fetch
        self.acquire_hiccups = acquire

    def acquire(self) -> Any:
        if self.acquire_hiccups:
            self.acquire_hiccups -= 1
            return _BrokenConnection()
        return self._pool.acquire()

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        if self.hiccups:
            self.hiccups -= 1
            raise asyncpg.exceptions._base.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )
        return await self._pool.fetch(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


@pytest.fixture
async def notifier_db() -> AsyncIterator[str]:
    url = await create_database()
    try:
        await migrate_async(url, MIGRATIONS_DIR, "notifier")
        yield url
    finally:
        await drop_database(url)


async def _one_alert(pool: asyncpg.Pool, slack_url: str) -> None:
    context = {"customer_id": "cus_hiccup", "payment_id": "pay_1", "amount_cents": 500,
               "credited_nanos": 5_000_000_000, "occurred_at": "2026-01-01T00:00:00+00:00"}
    alert_id = await pool.fetchval(
        "INSERT INTO notifier.alerts (kind, audience, customer_id, dedup_key, context, source_subject) "
        "VALUES ('payment.receipt', 'customer', 'cus_hiccup', 'payment.receipt:pay_1', $1, 'test') "
        "RETURNING id", json.dumps(context),
    )
    await pool.execute(
        "INSERT INTO notifier.deliveries (alert_id, channel, target, status) VALUES ($1, 'slack', $2, 'pending')",
        alert_id, f"{slack_url}/services/T0/B0/X",
    )


async def test_an_alert_after_a_database_hiccup_is_still_delivered(notifier_db: str) -> None:
    async with AppServer(create_slack_sink(SlackSinkSettings())) as slack, httpx.AsyncClient(timeout=10) as http:
        settings = NotifierSettings(database_url=notifier_db, worker_poll_s=0.1, retry_base_s=0.1, retry_max_s=0.2)
        pool = await create_pool(notifier_db)
        worker = DeliveryWorker(_PoolThatHiccups(pool), http, settings, TracerProvider())  # type: ignore[arg-type]
        worker.start()
        try:
            await _one_alert(pool, slack.url)
            worker.wake()

            async def delivered() -> bool:
                return bool((await http.get(f"{slack.url}/messages")).json())

            await eventually(delivered, timeout=10)
        finally:
            try:
                await worker.stop()
            finally:
                await pool.close()


@pytest.mark.parametrize("failed_checkouts", [
    1,  # a terminated backend: the next connection works
    6,  # recording fails for longer than the lease (1.3-2.5 s of retries against a 1 s lease)
])
async def test_an_alert_sent_once_is_not_sent_again_when_recording_it_hiccups(
    notifier_db: str, failed_checkouts: int,
) -> None:
    """Found by the full chaos run (an ops.drift Slack alert arrived twice): the send succeeded,
    `pg_terminate_backend` broke the connection that was to record it, the worker gave up on
    recording ("could not record delivery outcome"), the claim lease ran out and the alert was sent
    again. A terminated backend is transient: recording is retried on a fresh connection, and
    while it is, this replica does not claim the delivery back even after the lease ran out."""
    async with AppServer(create_slack_sink(SlackSinkSettings())) as slack, httpx.AsyncClient(timeout=10) as http:
        settings = NotifierSettings(database_url=notifier_db, worker_poll_s=0.1, retry_base_s=0.1, retry_max_s=0.2,
                                    claim_lease_s=1.0, smtp_timeout_s=0.4, http_timeout_s=0.4)
        pool = await create_pool(notifier_db)
        hiccups = _PoolThatHiccups(pool, fetch=0, acquire=failed_checkouts)
        worker = DeliveryWorker(hiccups, http, settings, TracerProvider())  # type: ignore[arg-type]
        worker.start()
        try:
            await _one_alert(pool, slack.url)
            worker.wake()

            async def recorded() -> bool:
                status = await pool.fetchval("SELECT status FROM notifier.deliveries")
                return status == "sent"

            await eventually(recorded, timeout=10)
            await asyncio.sleep(1.5)  # past the lease: a delivery left unrecorded would be sent again by now
            messages = (await http.get(f"{slack.url}/messages")).json()
            assert len(messages) == 1, f"the alert reached Slack {len(messages)} times"
        finally:
            try:
                await worker.stop()
            finally:
                await pool.close()
