"""Reconciliation with Dodo's credit balance, per customer, on a schedule and on every credit.*
webhook. Dodo should hold what Tollgate holds plus what has not reached Dodo yet:

    expected_dodo = tollgate_balance + in_flight
    in_flight     = usage posted after Dodo's last meter deduction (Dodo deducts in a background
                    worker, so that usage is not in its balance yet)
                  + Tollgate debits still queued for Dodo - Tollgate credits still queued for Dodo
    drift         = dodo_balance - expected_dodo

A check beyond the tolerance is `suspect`; if the difference is still there `drift_confirm_s`
later it is `drift`: recorded, exposed as a gauge and published once as DriftDetected (again only
if the amount moves by more than the tolerance). Transient differences (a top-up webhook arriving
before Dodo's credit.added, usage ingested just before a deduction) clear themselves meanwhile. Nothing is ever
overwritten: an operator corrects real drift with an adjustment entry and a reason."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tollgate_contracts import subjects
from tollgate_contracts.events import DriftDetected
from tollgate_ledger import dodo_events, hot, ids, metrics, outbox
from tollgate_ledger.context import Ledger
from tollgate_ledger.effects import Effects
from tollgate_money import credits_to_nanos
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

_drifting: set[str] = set()
_LOCK_KEY = 0x7011_6A7E  # pg advisory lock: one replica runs the scheduled pass


@dataclass(frozen=True, slots=True)
class Check:
    customer_id: str
    status: str  # ok | suspect | drift | unknown
    tollgate_nanos: int
    in_flight_nanos: int
    dodo_nanos: int | None
    drift_nanos: int | None
    check_id: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _fetch_dodo_balance(ledger: Ledger, dodo_customer: str, entitlement: str) -> None:
    assert ledger.dodo is not None
    client = ledger.dodo.with_options(max_retries=0, timeout=ledger.settings.dodo_timeout_s)
    balance = await client.credit_entitlements.balances.retrieve(dodo_customer, credit_entitlement_id=entitlement)
    as_of = datetime.now(UTC)
    await ledger.pool.execute(
        "INSERT INTO ledger.dodo_credit_balances (dodo_customer_id, credit_entitlement_id, balance, balance_nanos, "
        "overage, as_of, source) VALUES ($1, $2, $3, $4, $5, $6, 'api') "
        "ON CONFLICT (dodo_customer_id, credit_entitlement_id) DO UPDATE SET balance = EXCLUDED.balance, "
        "balance_nanos = EXCLUDED.balance_nanos, overage = EXCLUDED.overage, as_of = EXCLUDED.as_of, "
        "source = 'api', updated_at = now() WHERE ledger.dodo_credit_balances.as_of <= EXCLUDED.as_of",
        dodo_customer, entitlement, str(balance.balance), credits_to_nanos(str(balance.balance)),
        str(balance.overage), as_of,
    )


async def check_customer(ledger: Ledger, customer_id: str, *, fetch: bool) -> Check:
    entitlement = ledger.catalogue.credit_entitlement_id
    dodo_customer = await ledger.pool.fetchval(
        "SELECT dodo_customer_id FROM ledger.customers WHERE customer_id = $1", customer_id
    )
    if entitlement is None or dodo_customer is None:
        return Check(customer_id, "unknown", 0, 0, None, None,
                     detail="no Dodo customer" if entitlement else "no Dodo catalogue")
    if fetch and ledger.dodo is not None:
        stored_at = await ledger.pool.fetchval(
            "SELECT updated_at FROM ledger.dodo_credit_balances WHERE dodo_customer_id = $1 "
            "AND credit_entitlement_id = $2", dodo_customer, entitlement,
        )
        if stored_at is None or stored_at < datetime.now(UTC) - timedelta(seconds=ledger.settings.reconcile_interval_s):
            try:
                await _fetch_dodo_balance(ledger, dodo_customer, entitlement)
            except Exception as exc:  # Dodo unreachable: compare with the copy we have
                log.info("Dodo balance fetch failed", customer_id=customer_id, error=type(exc).__name__)

    async def work(conn: asyncpg.Connection, effects: Effects) -> Check:
        return await _check_in_transaction(ledger, conn, effects, customer_id, dodo_customer, entitlement)

    check, effects = await ledger.transaction(work)
    await ledger.after_commit(effects)
    _update_gauges(check)
    metrics.RECONCILE_RUNS.labels(check.status).inc()
    return check


async def _check_in_transaction(
    ledger: Ledger, conn: asyncpg.Connection, effects: Effects, customer_id: str, dodo_customer: str,
    entitlement: str,
) -> Check:
    # The account lock orders this check after any posting in progress for the customer.
    tollgate = await conn.fetchval(
        "SELECT balance_nanos FROM ledger.accounts WHERE customer_id = $1 FOR UPDATE", customer_id
    )
    dodo = await conn.fetchrow(
        "SELECT balance_nanos, last_deduction_at FROM ledger.dodo_credit_balances WHERE dodo_customer_id = $1 "
        "AND credit_entitlement_id = $2", dodo_customer, entitlement,
    )
    if tollgate is None or dodo is None:
        return Check(customer_id, "unknown", tollgate or 0, 0, None, None, detail="no Dodo balance known yet")
    usage_in_flight = await conn.fetchval(
        "SELECT COALESCE(-sum(amount_nanos), 0) FROM ledger.entries WHERE customer_id = $1 AND kind = 'usage' "
        "AND created_at > COALESCE($2, '-infinity'::timestamptz)",
        customer_id, dodo["last_deduction_at"],
    )
    queued = await conn.fetchval(
        "SELECT COALESCE(sum(CASE WHEN entry_type = 'debit' THEN amount_nanos ELSE -amount_nanos END), 0) "
        "FROM ledger.dodo_sync WHERE customer_id = $1 AND status = 'pending'",
        customer_id,
    )
    in_flight = int(usage_in_flight) + int(queued)
    drift = dodo["balance_nanos"] - (tollgate + in_flight)
    previous = await conn.fetchrow(
        "SELECT status, drift_nanos, checked_at FROM ledger.drift_checks WHERE customer_id = $1 "
        "ORDER BY checked_at DESC LIMIT 1",
        customer_id,
    )
    prev_status = previous["status"] if previous else "ok"
    confirm_before = datetime.now(UTC) - timedelta(seconds=ledger.settings.drift_confirm_s)
    if abs(drift) <= ledger.settings.drift_tolerance_nanos:
        status = "ok"
    elif prev_status == "drift" or (prev_status == "suspect" and previous["checked_at"] <= confirm_before):
        status = "drift"
    else:
        status = "suspect"
    check = Check(customer_id, status, tollgate, in_flight, dodo["balance_nanos"], drift)
    if (status == "ok" and prev_status == "ok") or (status == "suspect" and prev_status == "suspect"):
        # History keeps departures from agreement and their resolution, not every tick; a
        # suspicion keeps its first row, which is when the confirmation clock started.
        return check
    check_id = ids.new_check_id()
    check = Check(customer_id, status, tollgate, in_flight, dodo["balance_nanos"], drift, check_id)
    await conn.execute(
        "INSERT INTO ledger.drift_checks (check_id, customer_id, tollgate_nanos, in_flight_nanos, dodo_nanos, "
        "drift_nanos, status) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        check_id, customer_id, tollgate, in_flight, dodo["balance_nanos"], drift, status,
    )
    moved = previous is None or previous["drift_nanos"] is None or (
        abs(drift - previous["drift_nanos"]) > ledger.settings.drift_tolerance_nanos
    )
    if status == "drift" and (prev_status != "drift" or moved):
        await outbox.enqueue(
            conn, subjects.for_customer(subjects.DRIFT_DETECTED, customer_id),
            DriftDetected(customer_id=customer_id, tollgate_nanos=tollgate, in_flight_nanos=in_flight,
                          dodo_nanos=dodo["balance_nanos"], drift_nanos=drift, check_id=check_id),
            effects,
        )
    return check


def _update_gauges(check: Check) -> None:
    if check.status == "drift" and check.drift_nanos is not None:
        metrics.DRIFT_NANOS.labels(check.customer_id).set(check.drift_nanos)
        _drifting.add(check.customer_id)
    elif check.status == "ok" and check.customer_id in _drifting:
        _drifting.discard(check.customer_id)
        with contextlib.suppress(KeyError):
            metrics.DRIFT_NANOS.remove(check.customer_id)
    metrics.DRIFTING_CUSTOMERS.set(len(_drifting))


async def retry_parked(ledger: Ledger, older_than_s: float = 30.0) -> int:
    """Events parked for a payment Tollgate never received: fetch the payment from Dodo and
    apply it (which releases the parked events in the same transaction)."""
    if ledger.dodo is None:
        return 0
    payment_ids = [
        r["parked_payment_id"]
        for r in await ledger.pool.fetch(
            "SELECT DISTINCT parked_payment_id FROM ledger.webhook_inbox WHERE applied_at IS NULL "
            "AND parked_payment_id IS NOT NULL AND received_at < now() - make_interval(secs => $1) LIMIT 100",
            older_than_s,
        )
    ]
    released = 0
    env = dodo_events.Env(ledger.settings, ledger.catalogue)
    for payment_id in payment_ids:
        try:
            payment = await asyncio.wait_for(ledger.dodo.payments.retrieve(payment_id), ledger.settings.dodo_timeout_s)
        except Exception as exc:
            log.info("parked payment still not available from Dodo", payment_id=payment_id, error=type(exc).__name__)
            continue
        data = payment.model_dump(mode="json")
        if data.get("status") not in (None, "succeeded"):
            continue

        async def work(conn: asyncpg.Connection, effects: Effects, data: dict[str, Any] = data) -> str:
            return (await dodo_events.apply_payment(env, conn, effects, data, source="api")).outcome

        _, effects = await ledger.transaction(work)
        await ledger.after_commit(effects)
        released += 1
    return released


async def refresh_hot_state(ledger: Ledger) -> int:
    """Re-mirror every customer whose account changed lately: repairs a hot copy left stale by a
    crash between commit and mirror, or by a load that raced a posting. Never changes a balance."""
    rows = await ledger.pool.fetch(
        "SELECT customer_id FROM ledger.accounts WHERE updated_at > now() - make_interval(secs => $1)",
        2 * ledger.settings.reconcile_interval_s,
    )
    ids_ = [r["customer_id"] for r in rows]
    for start in range(0, len(ids_), 500):
        await hot.remirror(ledger.pool, ledger.hot, ids_[start : start + 500])
    return len(ids_)


class Reconciler:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-reconciler")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.ledger.settings.reconcile_interval_s)
            if self._stopping.is_set():
                return
            try:
                await self.run_pass()
            except Exception as exc:
                log.warning("reconciliation pass failed", error=type(exc).__name__)

    async def run_pass(self) -> list[Check]:
        ledger = self.ledger
        async with ledger.pool.acquire() as lock_conn:
            if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
                return []  # another replica runs this pass
            try:
                await refresh_hot_state(ledger)
                await retry_parked(ledger)
                checks: list[Check] = []
                customers = await ledger.pool.fetch(
                    "SELECT customer_id FROM ledger.customers WHERE dodo_customer_id IS NOT NULL ORDER BY customer_id"
                )
                for row in customers:
                    if self._stopping.is_set():
                        break
                    fetch = ledger.settings.reconcile_fetch_from_dodo
                    checks.append(await check_customer(ledger, row["customer_id"], fetch=fetch))
                return checks
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
