"""Sends the credit movements Dodo cannot know about by itself (operator grants; refunds and lost
disputes when configured) to the customer's Dodo credit entitlement, after commit, with the
ledger entry's idempotency key. Rows are leased (next_attempt_at pushed forward) in a short
transaction, so no lock is held across the network call and several replicas can share the work;
Dodo answers a repeated idempotency key with 409, which counts as done."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import asyncpg
import dodopayments

from tollgate_ledger import metrics
from tollgate_ledger.context import Ledger
from tollgate_money import NANOS_PER_CENT
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

LEASE_S = 60
BATCH = 20
MAX_ATTEMPTS = 12


def credits_amount(amount_nanos: int, entry_type: str, precision: int | None) -> str:
    """Credits (cents) at the entitlement's precision (bootstrap uses 7 places: exactly one nano).
    At a coarser precision debits round down, so Dodo never takes more than Tollgate did, and the
    remainder stays within the drift tolerance."""
    places = max(precision or 0, 0)
    quantum = Decimal(1).scaleb(-places)
    cents = Decimal(amount_nanos) / NANOS_PER_CENT
    rounding = ROUND_FLOOR if entry_type == "debit" else ROUND_CEILING
    return format(cents.quantize(quantum, rounding=rounding), "f")


class DodoSyncWorker:
    def __init__(self, ledger: Ledger, poll_interval_s: float = 5.0) -> None:
        self.ledger = ledger
        self.poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-dodo-sync")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                done = await self.run_once()
            except Exception as exc:
                log.warning("dodo sync pass failed", error=type(exc).__name__)
                done = 0
            if done >= BATCH:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def run_once(self) -> int:
        ledger = self.ledger
        entitlement = ledger.catalogue.credit_entitlement_id
        if ledger.dodo is None or entitlement is None:
            return 0
        async with ledger.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "WITH due AS (SELECT id FROM ledger.dodo_sync WHERE status = 'pending' AND next_attempt_at <= now() "
                "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) "
                "UPDATE ledger.dodo_sync s SET next_attempt_at = now() + make_interval(secs => $2), "
                "attempts = attempts + 1 FROM due WHERE s.id = due.id "
                "RETURNING s.id, s.idempotency_key, s.customer_id, s.entry_type, s.amount_nanos, s.reason, s.attempts",
                BATCH, LEASE_S,
            )
        for row in rows:
            await self._send(row, entitlement)
        return len(rows)

    async def _send(self, row: asyncpg.Record, entitlement: str) -> None:
        ledger = self.ledger
        assert ledger.dodo is not None
        dodo_customer = await ledger.pool.fetchval(
            "SELECT dodo_customer_id FROM ledger.customers WHERE customer_id = $1", row["customer_id"]
        )
        catalogue = ledger.catalogue.get()
        amount = credits_amount(row["amount_nanos"], row["entry_type"], catalogue.credit_precision if catalogue else 0)
        if not dodo_customer or Decimal(amount) <= 0:
            await self._finish(row["id"], "skipped", "no Dodo customer" if not dodo_customer else "below one credit")
            return
        client = ledger.dodo.with_options(max_retries=0, timeout=ledger.settings.dodo_timeout_s)
        try:
            await client.credit_entitlements.balances.create_ledger_entry(
                dodo_customer, credit_entitlement_id=entitlement, amount=amount, entry_type=row["entry_type"],
                idempotency_key=row["idempotency_key"], reason=row["reason"][:500],
                metadata={"tollgate_customer_id": row["customer_id"], "tollgate_key": row["idempotency_key"][:500]},
            )
        except dodopayments.ConflictError:
            await self._finish(row["id"], "done", "already recorded in Dodo (409)")
        except (dodopayments.BadRequestError, dodopayments.NotFoundError, dodopayments.UnprocessableEntityError) as exc:
            # Dodo refuses it for good (e.g. a debit above its balance): reconciliation shows the drift.
            await self._finish(row["id"], "failed", f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:
            status = "failed" if row["attempts"] >= MAX_ATTEMPTS else "pending"
            await ledger.pool.execute(
                "UPDATE ledger.dodo_sync SET status = $2, last_error = $3, "
                "next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                row["id"], status, f"{type(exc).__name__}: {exc}"[:500], min(2 ** row["attempts"], 600),
            )
            metrics.DODO_SYNC.labels("retry").inc()
        else:
            await self._finish(row["id"], "done", None)

    async def _finish(self, row_id: int, status: str, detail: str | None) -> None:
        await self.ledger.pool.execute(
            "UPDATE ledger.dodo_sync SET status = $2, last_error = $3, done_at = now() WHERE id = $1",
            row_id, status, detail,
        )
        metrics.DODO_SYNC.labels(status).inc()
