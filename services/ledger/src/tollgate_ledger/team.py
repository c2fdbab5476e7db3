"""Team members. The team owner's customer pays; each member gets keys of their own that belong to
that customer, so a member's usage counts against the team's cap. Seats are what Dodo says the
subscription pays for (1 + seat add-on quantity for Team, or an operator's Enterprise seats): a
member beyond that count is refused (409) until the seats go up. Removing a member revokes their
keys at once, everywhere."""

from __future__ import annotations

from typing import Any

import asyncpg

from tollgate_ledger import hot, ids, planstate
from tollgate_ledger.context import Ledger
from tollgate_ledger.errors import ApiError, not_found
from tollgate_ledger.operations import get_customer, record

# Plans whose seats admit members (Team via Dodo's add-on; Enterprise via an operator override).
SEAT_PLANS = frozenset({"team", "enterprise"})


def new_member_id() -> str:
    return ids.new_key_id().replace("key_", "mem_", 1)


async def add_member(ledger: Ledger, customer_id: str, *, email: str, name: str) -> dict[str, Any]:
    await get_customer(ledger, customer_id)
    async with ledger.pool.acquire() as conn, conn.transaction():
        # The plan row lock serialises adds (and plan changes) of one team: two concurrent adds
        # cannot both take the last seat.
        plan = await planstate.lock(conn, customer_id)
        if plan["plan"] not in SEAT_PLANS:
            raise ApiError(409, f"members need a Team plan; this customer is on "
                           f"{plan['plan'] or 'credits only'}", "team_plan_required")
        taken = await _active_count(conn, customer_id)
        if taken >= plan["seats"]:
            raise ApiError(409, f"all {plan['seats']} paid seats are taken; add seats to the subscription "
                           "before adding another member", "seat_limit_reached")
        try:
            row = await conn.fetchrow(
                "INSERT INTO ledger.members (member_id, customer_id, email, name) VALUES ($1, $2, $3, $4) "
                "RETURNING member_id, customer_id, email, name, status, created_at, removed_at",
                new_member_id(), customer_id, email, name,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ApiError(409, f"{email} is already a member of this team", "member_exists") from exc
    return record(row)


async def _active_count(conn: asyncpg.Connection | asyncpg.Pool, customer_id: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM ledger.members WHERE customer_id = $1 AND status = 'active'", customer_id
    ))


async def list_members(ledger: Ledger, customer_id: str, *, include_removed: bool = False) -> list[dict[str, Any]]:
    await get_customer(ledger, customer_id)
    rows = await ledger.pool.fetch(
        "SELECT m.member_id, m.customer_id, m.email, m.name, m.status, m.created_at, m.removed_at, "
        "count(k.key_id) FILTER (WHERE k.status = 'active') AS active_keys FROM ledger.members m "
        "LEFT JOIN ledger.api_keys k ON k.member_id = m.member_id "
        "WHERE m.customer_id = $1 AND ($2 OR m.status = 'active') GROUP BY m.member_id ORDER BY m.created_at",
        customer_id, include_removed,
    )
    return [record(r) for r in rows]


async def remove_member(ledger: Ledger, customer_id: str, member_id: str) -> dict[str, Any]:
    async with ledger.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT status FROM ledger.members WHERE member_id = $1 AND customer_id = $2 FOR UPDATE",
            member_id, customer_id,
        )
        if row is None:
            raise not_found("member", member_id)
        member = await conn.fetchrow(
            "UPDATE ledger.members SET status = 'removed', removed_at = COALESCE(removed_at, now()) "
            "WHERE member_id = $1 RETURNING member_id, customer_id, email, name, status, created_at, removed_at",
            member_id,
        )
        revoked = await conn.fetch(
            "UPDATE ledger.api_keys SET status = 'revoked', revoked_at = COALESCE(revoked_at, now()) "
            "WHERE member_id = $1 AND status = 'active' RETURNING key_id, key_hash",
            member_id,
        )
    # Committed: Redis and every gateway's in-process cache follow now.
    for key in revoked:
        await hot.drop_key(ledger.hot, ledger.nc, key["key_hash"])
    result = record(member)
    result["revoked_key_ids"] = [k["key_id"] for k in revoked]
    return result


async def seats_in_use(ledger: Ledger, customer_id: str) -> int:
    return await _active_count(ledger.pool, customer_id)
