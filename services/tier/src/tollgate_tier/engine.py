"""The tier service's operations, each one Postgres transaction followed by a nudge to the
outbox relay: apply a spend event, pin or unpin, and sweep for tiers that time or a new table
changed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
from prometheus_client import Counter

from tollgate_money import TierTable
from tollgate_platform.db import retry_serializable
from tollgate_platform.logging import get_logger
from tollgate_tier import store
from tollgate_tier.outbox import OutboxRelay
from tollgate_tier.store import Change, CustomerTier, SpendEvent

log = get_logger(__name__)

CHANGES = Counter("tier_changes_total", "Tier changes", ["cause"])


class TierEngine:
    def __init__(self, pool: asyncpg.Pool, table: TierTable, relay: OutboxRelay) -> None:
        self.pool = pool
        self.table = table
        self.relay = relay
        # What a sweep names as the cause of the changes it makes: the first sweep after the
        # table changed is catching up with the config, later ones with accounts growing older.
        self._sweep_cause = "account-age"

    async def apply_spend(self, ev: SpendEvent, now: datetime) -> bool:
        async def run() -> tuple[bool, Change | None]:
            async with self.pool.acquire() as conn, conn.transaction():
                return await store.record_spend(conn, self.table, ev, now)

        applied, change = await retry_serializable(run)
        self._after(change, ev.kind)
        return applied

    async def pin(self, customer_id: str, tier_name: str | None) -> Change | None:
        async def run() -> Change | None:
            async with self.pool.acquire() as conn, conn.transaction():
                return await store.set_pin(conn, self.table, customer_id, tier_name, datetime.now(UTC))

        change = await retry_serializable(run)
        self._after(change, "operator")
        return change

    async def get(self, customer_id: str) -> CustomerTier:
        async with self.pool.acquire() as conn:
            return await store.get_customer(conn, self.table, customer_id)

    async def sync_table(self) -> bool:
        async with self.pool.acquire() as conn:
            changed = await store.sync_levels(conn, self.table)
        if changed:
            self._sweep_cause = "config"
            log.info("tier table in force written", preset=self.table.preset, tiers=[t.name for t in self.table.tiers])
        return changed

    async def sweep(self, now: datetime | None = None, page: int = 500) -> int:
        """Re-evaluates every customer whose tier may have moved without a billing event. One
        replica at a time sweeps; the others skip this round. Returns the number of changes."""
        changes = 0
        async with self.pool.acquire() as lock_conn:
            if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", store.SWEEP_LOCK):
                return 0
            try:
                after = ""
                while True:
                    at = now or datetime.now(UTC)
                    batch = await store.sweep_candidates(lock_conn, at, after, page)
                    for customer_id in batch:
                        change = await self._reevaluate(customer_id, at, self._sweep_cause)
                        changes += change is not None
                    if len(batch) < page:
                        break
                    after = batch[-1]
                self._sweep_cause = "account-age"
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", store.SWEEP_LOCK)
        return changes

    async def _reevaluate(self, customer_id: str, now: datetime, cause: str) -> Change | None:
        async def run() -> Change | None:
            async with self.pool.acquire() as conn, conn.transaction():
                return await store.reevaluate(conn, self.table, customer_id, cause, now)

        change = await retry_serializable(run)
        self._after(change, "sweep")
        return change

    def _after(self, change: Change | None, cause: str) -> None:
        if change is None:
            return
        if change.published:
            CHANGES.labels(cause=cause).inc()
            log.info("tier changed", customer_id=change.customer_id, old_tier=change.old_tier,
                     new_tier=change.new_tier, version=change.version)
        self.relay.wake()


async def run_sweeper(engine: TierEngine, interval_s: float, stop: asyncio.Event) -> None:
    """At start (the table may have changed) and then every interval, until stop is set."""
    while not stop.is_set():
        try:
            await engine.sweep()
            await engine.relay.prune()
        except Exception as exc:  # Postgres away: try again next round
            log.warning("tier sweep failed", error=type(exc).__name__)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
