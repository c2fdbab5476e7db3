"""Keeping plans current without a webhook: the price book's plans are written to
`ledger.plan_definitions` at start-up (customers on a changed plan get the new definition pushed),
and a periodic sweep ends subscriptions cancelled at a period end that has passed, in case Dodo's
own cancelled/expired event is late. Every replica may run both: the writes are conditional, so a
second replica finds nothing left to do."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from tollgate_ledger import planstate, subscriptions
from tollgate_ledger.context import Ledger
from tollgate_ledger.effects import Effects
from tollgate_ledger.plans import Definition, load_book
from tollgate_money import PriceBook
from tollgate_platform.logging import get_logger

log = get_logger(__name__)


async def sync_definitions(conn: asyncpg.Connection, effects: Effects, book: PriceBook) -> list[str]:
    """Upsert the book's plans; customers on a changed plan get a new plan version (pushed after
    commit). Returns the changed plan names. A plan that left the book is kept (a customer may
    still be on it) but no longer updated."""
    stored = {
        r["plan"]: (r["plan"], r["models"], r["fallback"], r["soft_cap_nanos"], r["soft_cap_per_seat_nanos"],
                    r["daily_hard_cap_nanos"])
        for r in await conn.fetch("SELECT * FROM ledger.plan_definitions FOR UPDATE")
    }
    changed: list[str] = []
    for plan in book.plans.values():
        definition = Definition.of(plan)
        if stored.get(plan.name) == definition.row():
            continue
        await conn.execute(
            "INSERT INTO ledger.plan_definitions (plan, models, fallback, soft_cap_nanos, soft_cap_per_seat_nanos, "
            "daily_hard_cap_nanos, price_book_version) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (plan) DO UPDATE SET models = EXCLUDED.models, fallback = EXCLUDED.fallback, "
            "soft_cap_nanos = EXCLUDED.soft_cap_nanos, soft_cap_per_seat_nanos = EXCLUDED.soft_cap_per_seat_nanos, "
            "daily_hard_cap_nanos = EXCLUDED.daily_hard_cap_nanos, price_book_version = EXCLUDED.price_book_version, "
            "updated_at = now()",
            *definition.row(), book.version,
        )
        changed.append(plan.name)
    if changed:
        customers = await conn.fetch(
            "SELECT customer_id FROM ledger.customer_plans WHERE plan = ANY($1::text[]) ORDER BY customer_id "
            "FOR UPDATE",
            changed,
        )
        for row in customers:
            await planstate.bump(conn, effects, row["customer_id"], counters=False)
    return changed


async def sync_from_book(ledger: Ledger) -> list[str]:
    book = load_book(ledger.settings.pricing_file)
    if book is None:
        return []

    async def work(conn: asyncpg.Connection, effects: Effects) -> list[str]:
        return await sync_definitions(conn, effects, book)

    changed, effects = await ledger.transaction(work)
    await ledger.after_commit(effects)
    if changed:
        log.info("plan definitions updated from the price book", plans=changed, version=book.version)
    return changed


async def sweep_once(ledger: Ledger, limit: int = 500) -> int:
    """End every subscription whose scheduled cancellation is due. Returns how many ended."""
    due = await ledger.pool.fetch(
        "SELECT customer_id, subscription_id FROM ledger.subscriptions WHERE ended_at IS NULL "
        "AND cancel_at_period_end AND period_end <= now() ORDER BY period_end LIMIT $1",
        limit,
    )
    ended = 0
    for row in due:
        async def work(conn: asyncpg.Connection, effects: Effects, row: asyncpg.Record = row) -> bool:
            return await subscriptions.end_due(conn, effects, row["customer_id"], row["subscription_id"])

        done, effects = await ledger.transaction(work)
        await ledger.after_commit(effects)
        ended += int(done)
    return ended


class PlanSweeper:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-plan-sweeper")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        interval = self.ledger.settings.plan_sweep_interval_s
        while not self._stopping.is_set():
            try:
                await sweep_once(self.ledger)
            except Exception as exc:  # Postgres or Redis trouble: the next pass retries
                log.warning("plan sweep failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
