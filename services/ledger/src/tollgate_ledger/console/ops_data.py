"""Reads behind the operator pages that the admin API does not already answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from tollgate_ledger.console.charts import Line
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

CUSTOMERS = """
SELECT c.customer_id, c.name, c.email, c.dodo_customer_id, c.created_at, a.balance_nanos, a.alert_state,
       h.plan, h.status, d.status AS drift_status, d.drift_nanos, d.checked_at AS drift_checked_at
FROM ledger.customers c
JOIN ledger.accounts a USING (customer_id)
JOIN ledger.hot_account h USING (customer_id)
LEFT JOIN LATERAL (
    SELECT status, drift_nanos, checked_at FROM ledger.drift_checks dc
    WHERE dc.customer_id = c.customer_id ORDER BY checked_at DESC LIMIT 1
) d ON true
WHERE ($1::text IS NULL OR c.customer_id > $1)
  AND ($2::text IS NULL OR c.customer_id = $2 OR c.email ILIKE $3 OR c.name ILIKE $3)
ORDER BY c.customer_id
LIMIT $4
"""


async def customers(pool: asyncpg.Pool, *, after: str | None, query: str | None, limit: int) -> list[dict[str, Any]]:
    like = None
    if query:
        like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = [dict(r) for r in await pool.fetch(CUSTOMERS, after, query or None, like, limit)]
    tiers = await tiers_of(pool, [r["customer_id"] for r in rows])
    for row in rows:
        row["tier"] = tiers.get(row["customer_id"])
    return rows


async def tiers_of(pool: asyncpg.Pool, customer_ids: list[str]) -> dict[str, str]:
    """Tier names from the tier service's view; empty when it is not deployed."""
    if not customer_ids:
        return {}
    try:
        rows = await pool.fetch(
            "SELECT customer_id, tier FROM tier.hot_limits WHERE customer_id = ANY($1::text[])", customer_ids
        )
        default = await pool.fetchval("SELECT tier FROM tier.default_limits LIMIT 1")
    except asyncpg.PostgresError as exc:
        log.info("tier view unavailable", error=type(exc).__name__)
        return {}
    found = {r["customer_id"]: r["tier"] for r in rows}
    return {cid: found.get(cid, default) for cid in customer_ids if found.get(cid, default)}


async def drift_lines(pool: asyncpg.Pool, since: datetime, until: datetime, max_lines: int = 7) -> list[Line]:
    """Drift per customer over time: the customers with the largest departures, one line each.
    History keeps departures and their resolution (not every tick), so each line is drawn to
    `until` at its last known value."""
    rows = await pool.fetch(
        "SELECT customer_id, drift_nanos, checked_at FROM ledger.drift_checks "
        "WHERE checked_at >= $1 AND drift_nanos IS NOT NULL ORDER BY checked_at LIMIT 5000",
        since,
    )
    points: dict[str, list[tuple[datetime, int]]] = {}
    for row in rows:
        points.setdefault(row["customer_id"], []).append((row["checked_at"], int(row["drift_nanos"])))
    worst = sorted(points, key=lambda c: (-max(abs(v) for _, v in points[c]), c))[:max_lines]
    lines = []
    for customer_id in worst:
        series = points[customer_id]
        if series[-1][0] < until:
            series = [*series, (until, series[-1][1])]
        lines.append(Line(customer_id, series))
    return lines


async def recent_checks(pool: asyncpg.Pool, limit: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT check_id, customer_id, tollgate_nanos, in_flight_nanos, dodo_nanos, drift_nanos, status, detail, "
        "checked_at FROM ledger.drift_checks ORDER BY checked_at DESC LIMIT $1",
        limit,
    )
    return [dict(r) for r in rows]


async def webhook_outcomes(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT outcome, count(*) AS n FROM ledger.webhook_inbox WHERE received_at > now() - interval '7 days' "
        "GROUP BY outcome ORDER BY n DESC"
    )
    return [dict(r) for r in rows]
