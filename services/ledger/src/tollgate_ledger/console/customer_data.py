"""Reads behind the customer pages. Every query is keyed by the signed-in customer's id, which
comes from the session, never from the request: a customer can only ever read their own rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from tollgate_ledger.console.charts import Series, top_series
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

USAGE_DAYS = 30

# Usage comes from three places: credit usage is a ledger entry, subscription/free usage is in
# plan_usage (no money moved), and the demo's synthetic history has its own table.
_USAGE_SOURCES = """
    SELECT occurred_at, COALESCE(model, 'unknown') AS model, -amount_nanos AS cost,
           COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0) AS tokens
      FROM ledger.entries WHERE customer_id = $1 AND kind = 'usage' AND occurred_at >= $2
    UNION ALL
    SELECT occurred_at, model, 0, input_tokens + output_tokens
      FROM ledger.plan_usage WHERE customer_id = $1 AND occurred_at >= $2
    UNION ALL
    SELECT occurred_at, model, cost_nanos, input_tokens + output_tokens
      FROM ledger.console_synthetic_usage WHERE customer_id = $1 AND occurred_at >= $2
"""

# Built from the constant above only (no input), so the f-string is safe.
USAGE_BY_DAY = f"""
SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, model, sum(cost)::bigint AS cost,
       sum(tokens)::bigint AS tokens, count(*) AS requests
FROM ({_USAGE_SOURCES}) u GROUP BY 1, 2
"""  # noqa: S608

RECENT_REQUESTS = """
SELECT r.*, k.name AS key_name, k.prefix AS key_prefix FROM (
    (SELECT occurred_at, reference AS request_id, model, input_tokens, cached_input_tokens, output_tokens,
            -amount_nanos AS cost, estimated, key_id, reason AS status, 'credits' AS billing
       FROM ledger.entries
      WHERE customer_id = $1 AND kind = 'usage' AND ($2::timestamptz IS NULL OR (occurred_at, reference) < ($2, $3))
      ORDER BY occurred_at DESC, reference DESC LIMIT $4)
    UNION ALL
    (SELECT occurred_at, request_id, model, input_tokens, NULL, output_tokens, 0, NULL, NULL, NULL, billing_mode
       FROM ledger.plan_usage
      WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR (occurred_at, request_id) < ($2, $3))
      ORDER BY occurred_at DESC, request_id DESC LIMIT $4)
    UNION ALL
    (SELECT occurred_at, request_id, model, input_tokens, 0, output_tokens, cost_nanos, false, NULL, NULL, 'synthetic'
       FROM ledger.console_synthetic_usage
      WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR (occurred_at, request_id) < ($2, $3))
      ORDER BY occurred_at DESC, request_id DESC LIMIT $4)
) r LEFT JOIN ledger.api_keys k ON k.key_id = r.key_id
ORDER BY r.occurred_at DESC, r.request_id DESC LIMIT $4
"""


@dataclass(frozen=True, slots=True)
class UsageSummary:
    days: list[date]
    spend: list[Series]
    tokens: list[Series]
    total_cost: int
    total_tokens: int
    total_requests: int


def window_start(today: date, days: int = USAGE_DAYS) -> date:
    return today - timedelta(days=days - 1)


async def usage_summary(pool: asyncpg.Pool, customer_id: str, today: date | None = None) -> UsageSummary:
    today = today or datetime.now(UTC).date()
    first = window_start(today)
    days = [first + timedelta(days=i) for i in range(USAGE_DAYS)]
    index = {d: i for i, d in enumerate(days)}
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    rows = await pool.fetch(USAGE_BY_DAY, customer_id, since)
    cost: dict[str, list[int]] = {}
    tokens: dict[str, list[int]] = {}
    requests = 0
    for row in rows:
        i = index.get(row["day"])
        if i is None:  # usage stamped in the future (clock skew): not in this window
            continue
        cost.setdefault(row["model"], [0] * USAGE_DAYS)[i] += row["cost"]
        tokens.setdefault(row["model"], [0] * USAGE_DAYS)[i] += row["tokens"]
        requests += row["requests"]
    spend_series = top_series({m: v for m, v in cost.items() if any(v)})
    return UsageSummary(
        days=days,
        spend=spend_series,
        tokens=top_series(tokens),
        total_cost=sum(sum(v) for v in cost.values()),
        total_tokens=sum(sum(v) for v in tokens.values()),
        total_requests=requests,
    )


async def recent_requests(
    pool: asyncpg.Pool, customer_id: str, *, limit: int, before: tuple[datetime, str] | None = None
) -> list[dict[str, Any]]:
    at, ref = before if before else (None, "")
    return [dict(r) for r in await pool.fetch(RECENT_REQUESTS, customer_id, at, ref, limit)]


async def account(pool: asyncpg.Pool, customer_id: str) -> dict[str, Any]:
    """Balance and the plan columns of the gateway's view (neutral until subscriptions fill them)."""
    row = await pool.fetchrow(
        "SELECT a.balance_nanos, a.alert_state, a.last_topup_nanos, a.last_topup_at, a.lifetime_topup_nanos, "
        "h.* FROM ledger.accounts a JOIN ledger.hot_account h USING (customer_id) WHERE a.customer_id = $1",
        customer_id,
    )
    return dict(row) if row else {}


async def billing_history(pool: asyncpg.Pool, customer_id: str, limit: int = 10) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT seq, kind, amount_nanos, balance_after, reference, reason, occurred_at FROM ledger.entries "
        "WHERE customer_id = $1 AND kind <> 'usage' ORDER BY seq DESC LIMIT $2",
        customer_id, limit,
    )
    return [dict(r) for r in rows]


async def keys(pool: asyncpg.Pool, customer_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT key_id, prefix, name, status, models, created_at, revoked_at, last_used_at FROM ledger.api_keys "
        "WHERE customer_id = $1 ORDER BY status, created_at DESC, key_id",
        customer_id,
    )
    return [dict(r) for r in rows]


async def key_owner(pool: asyncpg.Pool, key_id: str) -> str | None:
    owner: str | None = await pool.fetchval("SELECT customer_id FROM ledger.api_keys WHERE key_id = $1", key_id)
    return owner


async def payment_applied(pool: asyncpg.Pool, customer_id: str, payment_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT payment_id, credited_nanos, created_at FROM ledger.payments WHERE payment_id = $1 AND customer_id = $2",
        payment_id, customer_id,
    )
    return dict(row) if row else None


@dataclass(frozen=True, slots=True)
class TierView:
    tier: str
    rpm: int
    tpm: int
    lifetime_spend: int
    recorded: bool
    pinned: bool
    next_tier: str | None
    next_min_spend: int | None
    next_rpm: int | None
    next_tpm: int | None
    next_min_age_days: int | None
    account_age_days: int | None

    @property
    def spend_to_go(self) -> int | None:
        if self.next_min_spend is None:
            return None
        return max(self.next_min_spend - self.lifetime_spend, 0)


TIER_OF_CUSTOMER = """
SELECT h.tier, h.rpm, h.tpm, h.lifetime_spend_nanos, h.next_tier, h.next_tier_min_spend_nanos,
       n.rpm AS next_rpm, n.tpm AS next_tpm, n.min_account_age_days AS next_min_age,
       c.pinned_tier, c.first_payment_at
FROM tier.hot_limits h
LEFT JOIN tier.levels n ON n.name = h.next_tier
LEFT JOIN tier.customers c ON c.customer_id = h.customer_id
WHERE h.customer_id = $1
"""

TIER_DEFAULT = """
SELECT d.tier, d.rpm, d.tpm, n.name AS next_tier, n.min_spend_nanos AS next_tier_min_spend_nanos,
       n.rpm AS next_rpm, n.tpm AS next_tpm, n.min_account_age_days AS next_min_age
FROM tier.default_limits d LEFT JOIN tier.levels n ON n.rank = 1
"""


async def tier(pool: asyncpg.Pool, customer_id: str) -> TierView | None:
    """The tier service's view, read-only. None when that service (its schema) is not there."""
    try:
        row = await pool.fetchrow(TIER_OF_CUSTOMER, customer_id)
        recorded = row is not None
        if row is None:
            row = await pool.fetchrow(TIER_DEFAULT)
    except asyncpg.PostgresError as exc:  # no tier schema, or no right to read it
        log.info("tier view unavailable", error=type(exc).__name__)
        return None
    if row is None:
        return None
    values = dict(row)
    first_payment = values.get("first_payment_at")
    age = (datetime.now(UTC) - first_payment).days if first_payment else None
    return TierView(
        tier=values["tier"], rpm=values["rpm"], tpm=values["tpm"],
        lifetime_spend=values.get("lifetime_spend_nanos") or 0, recorded=recorded,
        pinned=values.get("pinned_tier") is not None,
        next_tier=values.get("next_tier"), next_min_spend=values.get("next_tier_min_spend_nanos"),
        next_rpm=values.get("next_rpm"), next_tpm=values.get("next_tpm"),
        next_min_age_days=values.get("next_min_age"), account_age_days=age,
    )
