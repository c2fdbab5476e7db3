"""The balance alert state machine against real Postgres, in orders that replicas and
redeliveries can produce: which crossings alert, which are resolved, which are stale."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from support.servers import Infra, eventually
from tollgate_notifier import alerts, store
from tollgate_notifier.app import MIGRATIONS_DIR
from tollgate_notifier.settings import NotifierSettings
from tollgate_platform.db import create_pool, migrate_async

from .helpers import balance_event, customer


@pytest.fixture(scope="module")
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    await migrate_async(infra.database_url, MIGRATIONS_DIR, "notifier")
    pool = await create_pool(infra.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


class Machine:
    def __init__(self, pool: asyncpg.Pool, notify_on_restore: bool = True) -> None:
        self.pool, self.cid, self.notify = pool, customer(), notify_on_restore

    async def low(self, seq: int, balance: float = 4.0, threshold: float | None = 5.0) -> list[str]:
        event = balance_event(self.cid, seq, "low", balance, threshold)
        async with self.pool.acquire() as conn, conn.transaction():
            outcome = await alerts.balance_crossing(conn, alerts.LOW, event)
        return [a.dedup_key.removeprefix(f"balance.low:{self.cid}:") for a in outcome.alerts] + [
            f"balance={a.context['balance_nanos']}" for a in outcome.alerts
        ]

    async def restored(self, seq: int) -> list[str]:
        event = balance_event(self.cid, seq, "restored", 30.0)
        async with self.pool.acquire() as conn, conn.transaction():
            outcome = await alerts.balance_restored(conn, event, self.notify)
        return [a.kind + f"@{a.context['seq']}" for a in outcome.alerts]


async def test_a_crossing_alerts_once_and_a_topup_resolves_it(pool: asyncpg.Pool) -> None:
    m = Machine(pool)
    assert await m.low(10, 4.0) == ["10", "balance=4000000000"]
    assert await m.low(10, 4.0) == []  # redelivery
    assert await m.low(11, 3.0) == []  # still in alarm: the ledger said "low" again
    assert await m.restored(12) == ["balance.restored@12"]
    assert await m.restored(12) == []
    assert await m.low(20, 2.0) == ["20", "balance=2000000000"]


async def test_a_late_topup_between_two_crossings_reopens_at_the_later_one(pool: asyncpg.Pool) -> None:
    m = Machine(pool)
    assert await m.low(10, 4.0) == ["10", "balance=4000000000"]
    assert await m.low(15, 1.5) == []  # arrived before the top-up at 12
    # The top-up resolves the first alarm; the crossing at 15 happened after it, so it alerts,
    # with its own balance, and no "restored" notice is sent (the customer is low again).
    assert await m.restored(12) == ["balance.low@15"]
    assert await m.low(15, 1.5) == []


async def test_a_crossing_older_than_the_newest_topup_is_stale(pool: asyncpg.Pool) -> None:
    m = Machine(pool)
    assert await m.restored(12) == []  # nothing to resolve, nothing to say
    assert await m.low(10) == []  # it was resolved before we saw it
    assert await m.low(15, 2.5) == ["15", "balance=2500000000"]
    assert await m.restored(8) == []  # an old top-up cannot resolve a newer alarm


async def test_each_threshold_has_its_own_alarm_and_one_topup_resolves_all(pool: asyncpg.Pool) -> None:
    m = Machine(pool, notify_on_restore=False)
    assert await m.low(10, 9.0, threshold=10.0) == ["10", "balance=9000000000"]
    assert await m.low(11, 4.0, threshold=5.0) == ["11", "balance=4000000000"]
    assert await m.restored(12) == []  # resolved silently (notify_on_restore off)
    assert await m.low(13, 8.0, threshold=10.0) == ["13", "balance=8000000000"]


async def test_a_delivery_abandoned_by_a_dead_replica_is_taken_over_after_its_lease(pool: asyncpg.Pool) -> None:
    cid = customer()
    settings = NotifierSettings(slack_default_webhook_url=None, _env_file=None)
    await pool.execute("INSERT INTO notifier.preferences (customer_id, channels, email) VALUES ($1, '{email}', $2)",
                       cid, f"{cid}@x.test")
    alert = alerts.NewAlert(alerts.RECEIPT, f"{alerts.RECEIPT}:pay_{cid}", {"customer_id": cid}, cid)
    async with pool.acquire() as conn, conn.transaction():
        assert len(await store.record_alerts(conn, [alert], "test", {}, settings)) == 1
        assert await store.record_alerts(conn, [alert], "test", {}, settings) == []  # once per dedup key

    def mine(items: list[store.Claimed]) -> list[store.Claimed]:
        return [i for i in items if i.customer_id == cid]

    [first] = mine(await store.claim_due(pool, 100, lease_s=0.3))  # this replica then dies
    assert mine(await store.claim_due(pool, 100, lease_s=30)) == []  # invisible while leased
    second = await eventually(lambda: _claim_mine(pool, cid))
    assert second.id == first.id and second.attempt == 2 and second.claim != first.claim
    started = datetime.now(UTC)
    assert await store.finish(pool, first, started, "sent", None) is False  # the dead claim lost it
    assert await store.finish(pool, second, started, "sent", None) is True
    # The worker retries finish when the connection breaks; a commit whose reply was lost is no lost lease.
    assert await store.finish(pool, second, started, "sent", None) is True
    row = await pool.fetchrow("SELECT status, attempts FROM notifier.deliveries WHERE id = $1", first.id)
    assert row is not None and (row["status"], row["attempts"]) == ("sent", 2)
    assert await pool.fetchval("SELECT count(*) FROM notifier.delivery_attempts WHERE delivery_id = $1", first.id) == 2


async def _claim_mine(pool: asyncpg.Pool, cid: str) -> store.Claimed | None:
    return next((i for i in await store.claim_due(pool, 100, lease_s=30) if i.customer_id == cid), None)
