"""The ledger's runtime: pools and clients shared by the HTTP routes, the usage consumer and the
background workers, plus what every committed transaction does afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import asyncpg
from dodopayments import AsyncDodoPayments
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from tollgate_hotstate import HotState
from tollgate_ledger import hot, metrics
from tollgate_ledger.catalogue import CatalogueSource
from tollgate_ledger.effects import Effects
from tollgate_ledger.settings import LedgerSettings
from tollgate_platform.db import retry_serializable
from tollgate_platform.logging import get_logger

if TYPE_CHECKING:
    from tollgate_ledger.dodo_sync import DodoSyncWorker
    from tollgate_ledger.outbox import OutboxRelay

log = get_logger(__name__)
T = TypeVar("T")


@dataclass
class Ledger:
    settings: LedgerSettings
    pool: asyncpg.Pool
    hot: HotState
    catalogue: CatalogueSource
    nc: NatsClient | None = None
    dodo: AsyncDodoPayments | None = None
    relay: OutboxRelay | None = None
    dodo_worker: DodoSyncWorker | None = None
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def js(self) -> JetStreamContext:
        if self.nc is None:
            raise RuntimeError("NATS is not connected")
        return self.nc.jetstream()

    async def transaction(self, work: Callable[[asyncpg.Connection, Effects], Awaitable[T]]) -> tuple[T, Effects]:
        """Run `work` in one transaction, retried whole on serialization failure or deadlock,
        with fresh effects per attempt so a rolled-back attempt leaves nothing behind."""

        async def attempt() -> tuple[T, Effects]:
            effects = Effects()
            async with self.pool.acquire() as conn, conn.transaction():
                result = await work(conn, effects)
            return result, effects

        return await retry_serializable(attempt)

    def _schedule_remirror(self, customer_ids: set[str]) -> None:
        async def later() -> None:
            await asyncio.sleep(self.settings.remirror_delay_s)
            try:
                await hot.remirror(self.pool, self.hot, sorted(customer_ids))
            except Exception as exc:  # the periodic refresh and the next posting repair it too
                log.info("delayed re-mirror failed", error=type(exc).__name__)

        task = asyncio.get_running_loop().create_task(later())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def after_commit(self, effects: Effects, *, strict: bool = False) -> bool:
        """Mirror into Redis and wake the workers. With strict, a Redis failure raises (the
        caller redelivers); otherwise it is logged and False returned."""
        if effects.outbox and self.relay is not None:
            self.relay.wake()
        if effects.dodo_sync and self.dodo_worker is not None:
            self.dodo_worker.wake()
        ok = True
        try:
            skipped = await hot.apply(self.hot, effects)
            if skipped:
                self._schedule_remirror(skipped)
        except Exception as exc:
            metrics.MIRROR_FAILURES.inc()
            if strict:
                raise
            log.warning("hot state mirror failed after commit", error=type(exc).__name__)
            ok = False
        for customer_id in sorted(effects.keys):
            try:
                await hot.write_customer_keys(self.pool, self.hot, customer_id)
            except Exception as exc:  # the gateway falls back to Postgres for keys it cannot find
                log.warning("key cache not refreshed", customer_id=customer_id, error=type(exc).__name__)
        if effects.reconcile:
            from tollgate_ledger.reconcile import check_customer

            for customer_id in sorted(effects.reconcile):
                try:
                    await check_customer(self, customer_id, fetch=False)
                except Exception as exc:  # reconciliation is advisory; the money already moved
                    log.warning("reconciliation after webhook failed", customer_id=customer_id,
                                error=type(exc).__name__)
        return ok
