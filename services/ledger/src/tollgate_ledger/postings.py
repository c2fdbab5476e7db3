"""Posting entries: the only code that changes a balance.

Every posting runs inside the caller's transaction: lock the customer's account row, claim the
idempotency key by inserting the entry (ON CONFLICT DO NOTHING: a second attempt with the same
key inserts nothing and changes nothing), move the balance, record threshold crossings and
events in the outbox, and note the Redis mirror to run after commit. Read Committed plus the
row lock serialises one customer's postings; different customers never wait for each other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg

from tollgate_contracts import subjects
from tollgate_contracts.events import BalanceChanged
from tollgate_ledger import alerts, outbox
from tollgate_ledger.effects import Effects

EntryKind = Literal["topup", "grant", "usage", "refund", "dispute", "adjustment", "expiry"]

ALERT_SUBJECTS = {
    "low": subjects.BALANCE_LOW,
    "depleted": subjects.BALANCE_DEPLETED,
    "restored": subjects.BALANCE_RESTORED,
}


class UnknownCustomer(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Account:
    customer_id: str
    balance: int
    seq: int
    lifetime_topup: int
    last_topup: int
    low_threshold: int | None
    alert_state: str
    status_v: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Account:
        return cls(
            customer_id=row["customer_id"], balance=row["balance_nanos"], seq=row["seq"],
            lifetime_topup=row["lifetime_topup_nanos"], last_topup=row["last_topup_nanos"],
            low_threshold=row["low_threshold_nanos"], alert_state=row["alert_state"], status_v=row["status_v"],
        )


@dataclass(frozen=True, slots=True)
class Posted:
    customer_id: str
    kind: str
    amount: int
    balance: int
    seq: int
    idempotency_key: str


SELECT_ACCOUNTS = (
    "SELECT customer_id, balance_nanos, seq, lifetime_topup_nanos, last_topup_nanos, low_threshold_nanos, "
    "alert_state, status_v FROM ledger.accounts"
)


async def lock_account(conn: asyncpg.Connection, customer_id: str) -> Account:
    row = await conn.fetchrow(SELECT_ACCOUNTS + " WHERE customer_id = $1 FOR UPDATE", customer_id)
    if row is None:
        raise UnknownCustomer(customer_id)
    return Account.from_row(row)


async def read_account(conn: asyncpg.Connection | asyncpg.Pool, customer_id: str) -> Account | None:
    row = await conn.fetchrow(SELECT_ACCOUNTS + " WHERE customer_id = $1", customer_id)
    return Account.from_row(row) if row else None


async def post_entry(
    conn: asyncpg.Connection,
    effects: Effects,
    *,
    customer_id: str,
    kind: EntryKind,
    amount: int,
    idempotency_key: str,
    default_low_percent: int,
    reference: str | None = None,
    reason: str | None = None,
    occurred_at: datetime | None = None,
) -> Posted | None:
    """Post one entry; None when its idempotency key was already used (nothing changes)."""
    account = await lock_account(conn, customer_id)
    seq = account.seq + 1
    balance = account.balance + amount
    entry_id = await conn.fetchval(
        "INSERT INTO ledger.entries (customer_id, seq, kind, amount_nanos, balance_after, idempotency_key, "
        "reference, reason, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        customer_id, seq, kind, amount, balance, idempotency_key, reference, reason,
        occurred_at or datetime.now(UTC),
    )
    if entry_id is None:
        return None
    money_in = kind in ("topup", "grant") and amount > 0
    last_topup = amount if money_in else account.last_topup
    threshold = alerts.low_threshold(account.low_threshold, last_topup, default_low_percent)
    crossing = alerts.evaluate(account.alert_state, balance, threshold)
    await conn.execute(
        "UPDATE ledger.accounts SET balance_nanos = $2, seq = $3, alert_state = $4, "
        "lifetime_topup_nanos = lifetime_topup_nanos + $5, last_topup_nanos = $6, "
        "last_topup_at = CASE WHEN $7 THEN now() ELSE last_topup_at END, updated_at = now() "
        "WHERE customer_id = $1",
        customer_id, balance, seq, crossing.state, amount if kind == "topup" and amount > 0 else 0,
        last_topup, money_in,
    )
    await publish_balance(
        conn, effects, customer_id=customer_id, balance=balance, seq=seq, threshold=threshold,
        last_topup=last_topup, reason=kind, alert=crossing.event, updated=True,
    )
    effects.mirror(customer_id, balance, seq)
    return Posted(customer_id, kind, amount, balance, seq, idempotency_key)


async def publish_balance(
    conn: asyncpg.Connection,
    effects: Effects,
    *,
    customer_id: str,
    balance: int,
    seq: int,
    threshold: int,
    last_topup: int,
    reason: str,
    alert: alerts.AlertEvent | None,
    updated: bool,
) -> None:
    """balance.updated (when asked) and the threshold crossing, both through the outbox."""
    common = {
        "customer_id": customer_id, "balance_nanos": balance, "seq": seq,
        "threshold_nanos": threshold, "last_topup_nanos": last_topup,
    }
    if updated:
        await outbox.enqueue(
            conn, subjects.for_customer(subjects.BALANCE_UPDATED, customer_id),
            BalanceChanged(**common, reason=reason), effects,
        )
    if alert is not None:
        await outbox.enqueue(
            conn, subjects.for_customer(ALERT_SUBJECTS[alert], customer_id),
            BalanceChanged(**common, reason=alert), effects,
        )
