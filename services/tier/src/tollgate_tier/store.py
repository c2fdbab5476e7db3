"""Postgres side of the tier service: spend events, the customer's tier row, pins, the table in
force and the sweep. Every function that changes a tier runs inside the caller's transaction
with the customer's row locked, and writes the outbox row in that same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from tollgate_contracts.events import TierChanged
from tollgate_money import Tier, TierTable
from tollgate_tier import outbox
from tollgate_tier.rules import effective_tier

SpendKind = Literal["payment", "refund", "dispute_lost"]

# Serialises writers of tier.levels (several replicas starting at once) and the sweep.
_LEVELS_LOCK = 0x7469_6572_0001
SWEEP_LOCK = 0x7469_6572_0002


@dataclass(frozen=True, slots=True)
class SpendEvent:
    source_id: str  # the billing event's business id: unique per payment/refund/dispute
    customer_id: str
    kind: SpendKind
    delta_nanos: int
    occurred_at: datetime
    cause: str  # the payment/refund/dispute id, carried by tier.changed


@dataclass(frozen=True, slots=True)
class Change:
    customer_id: str
    old_tier: str
    new_tier: str
    version: int
    published: bool  # a tier.changed event was queued (not only a limits push)


async def record_spend(
    conn: asyncpg.Connection, table: TierTable, ev: SpendEvent, now: datetime
) -> tuple[bool, Change | None]:
    """Returns (applied, change). applied is False for an event seen before."""
    inserted = await conn.fetchval(
        """
        INSERT INTO tier.spend_events (source_id, customer_id, kind, delta_nanos, occurred_at)
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source_id) DO NOTHING RETURNING 1
        """,
        ev.source_id, ev.customer_id, ev.kind, ev.delta_nanos, ev.occurred_at,
    )
    if inserted is None:
        return False, None
    await _lock_customer(conn, table, ev.customer_id)
    first_payment = ev.occurred_at if ev.kind == "payment" else None
    row = await conn.fetchrow(
        """
        UPDATE tier.customers
        SET lifetime_spend_nanos = lifetime_spend_nanos + $2,
            first_payment_at = CASE WHEN $3::timestamptz IS NULL THEN first_payment_at
                                    ELSE LEAST(coalesce(first_payment_at, $3::timestamptz), $3::timestamptz) END,
            updated_at = now()
        WHERE customer_id = $1
        RETURNING *
        """,
        ev.customer_id, ev.delta_nanos, first_payment,
    )
    assert row is not None
    return True, await _settle(conn, table, row, ev.cause, now)


async def set_pin(
    conn: asyncpg.Connection, table: TierTable, customer_id: str, tier_name: str | None, now: datetime
) -> Change | None:
    await _lock_customer(conn, table, customer_id)
    row = await conn.fetchrow(
        "UPDATE tier.customers SET pinned_tier = $2, updated_at = now() WHERE customer_id = $1 RETURNING *",
        customer_id, tier_name,
    )
    assert row is not None
    return await _settle(conn, table, row, "operator", now)


async def reevaluate(
    conn: asyncpg.Connection, table: TierTable, customer_id: str, cause: str, now: datetime
) -> Change | None:
    row = await conn.fetchrow("SELECT * FROM tier.customers WHERE customer_id = $1 FOR UPDATE", customer_id)
    if row is None:
        return None
    return await _settle(conn, table, row, cause, now)


async def _lock_customer(conn: asyncpg.Connection, table: TierTable, customer_id: str) -> None:
    """Creates the row at the lowest tier (version 0, i.e. never pushed) if it is missing."""
    lowest = table.tiers[0]
    await conn.execute(
        """
        INSERT INTO tier.customers (customer_id, tier, rpm, tpm) VALUES ($1, $2, $3, $4)
        ON CONFLICT (customer_id) DO NOTHING
        """,
        customer_id, lowest.name, lowest.rpm, lowest.tpm,
    )
    await conn.execute("SELECT 1 FROM tier.customers WHERE customer_id = $1 FOR UPDATE", customer_id)


async def _settle(
    conn: asyncpg.Connection, table: TierTable, row: asyncpg.Record, cause: str, now: datetime
) -> Change | None:
    """Brings the stored tier in line with the rules; a change bumps the limits version and goes
    to the outbox. A row seen for the first time is always pushed, so Redis learns its limits."""
    pinned: str | None = row["pinned_tier"]
    tier = effective_tier(table, row["lifetime_spend_nanos"], row["first_payment_at"], pinned, now)
    first_push = row["version"] == 0
    if not first_push and (tier.name, tier.rpm, tier.tpm) == (row["tier"], row["rpm"], row["tpm"]):
        return None
    version = int(row["version"]) + 1
    await conn.execute(
        """
        UPDATE tier.customers SET tier = $2, rpm = $3, tpm = $4, version = $5, updated_at = now()
        WHERE customer_id = $1
        """,
        row["customer_id"], tier.name, tier.rpm, tier.tpm, version,
    )
    event = None
    if tier.name != row["tier"]:
        event = TierChanged(
            customer_id=row["customer_id"], old_tier=row["tier"], new_tier=tier.name,
            lifetime_spend_nanos=row["lifetime_spend_nanos"], rpm=tier.rpm, tpm=tier.tpm,
            pinned=pinned is not None and pinned == tier.name, cause=cause, version=version, occurred_at=now,
        )
    await outbox.enqueue(conn, row["customer_id"], version, tier, event)
    return Change(row["customer_id"], row["tier"], tier.name, version, event is not None)


async def sync_levels(conn: asyncpg.Connection, table: TierTable) -> bool:
    """Writes the table in force to tier.levels. Returns True when it differed from the stored one
    (then the sweep re-evaluates every customer it affects)."""
    wanted = [
        (rank, t.name, table.preset, t.min_spend, t.rpm, t.tpm, t.min_account_age_days)
        for rank, t in enumerate(table.tiers)
    ]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LEVELS_LOCK)
        stored = [
            tuple(r)
            for r in await conn.fetch(
                """
                SELECT rank, name, preset, min_spend_nanos, rpm, tpm, min_account_age_days
                FROM tier.levels ORDER BY rank
                """
            )
        ]
        if stored == wanted:
            return False
        await conn.execute("DELETE FROM tier.levels")
        await conn.executemany(
            """
            INSERT INTO tier.levels (rank, name, preset, min_spend_nanos, rpm, tpm, min_account_age_days)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """,
            wanted,
        )
        return True


async def sweep_candidates(conn: asyncpg.Connection, now: datetime, after: str, limit: int) -> list[str]:
    """Customers whose stored tier may be out of date: grown old enough for a higher tier, or
    affected by a changed table. The SQL only narrows; rules.effective_tier decides."""
    rows = await conn.fetch(
        """
        SELECT c.customer_id
        FROM tier.customers c
        LEFT JOIN tier.levels cur ON cur.name = c.tier
        LEFT JOIN tier.levels pin ON pin.name = c.pinned_tier
        CROSS JOIN LATERAL (
            SELECT coalesce(max(l.rank), 0) AS rank
            FROM tier.levels l
            WHERE l.min_spend_nanos <= c.lifetime_spend_nanos
              AND (l.min_account_age_days = 0
                   OR c.first_payment_at <= $1::timestamptz - make_interval(days => l.min_account_age_days))
        ) earned
        WHERE c.customer_id > $2
          AND (cur.rank IS NULL OR cur.rpm <> c.rpm OR cur.tpm <> c.tpm OR coalesce(pin.rank, earned.rank) <> cur.rank)
        ORDER BY c.customer_id
        LIMIT $3
        """,
        now, after, limit,
    )
    return [r["customer_id"] for r in rows]


@dataclass(frozen=True, slots=True)
class CustomerTier:
    customer_id: str
    tier: Tier
    pinned_tier: str | None
    lifetime_spend_nanos: int
    first_payment_at: datetime | None
    version: int
    recorded: bool  # False: never seen a payment or pin, the lowest tier applies


async def get_customer(conn: asyncpg.Connection, table: TierTable, customer_id: str) -> CustomerTier:
    row = await conn.fetchrow("SELECT * FROM tier.customers WHERE customer_id = $1", customer_id)
    if row is None:
        return CustomerTier(customer_id, table.tiers[0], None, 0, None, 0, recorded=False)
    stored = table.by_name(row["tier"])
    # Limits as written to the hot state (the table may have changed since; the sweep catches up).
    tier = Tier(
        name=row["tier"], min_spend=stored.min_spend if stored else 0, rpm=row["rpm"], tpm=row["tpm"],
        min_account_age_days=stored.min_account_age_days if stored else 0,
    )
    return CustomerTier(
        customer_id, tier, row["pinned_tier"], row["lifetime_spend_nanos"], row["first_payment_at"],
        row["version"], recorded=True,
    )
