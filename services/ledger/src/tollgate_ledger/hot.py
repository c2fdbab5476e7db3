"""Keeping the gateway's hot copy in Redis in step with Postgres. Redis is a cache: everything
here can be redone from Postgres at any time (rebuild), and a mirror only ever applies a newer
ledger version, so replaying one is harmless."""

from __future__ import annotations

import asyncio

import asyncpg
from nats.aio.client import Client as NatsClient

from tollgate_contracts import subjects
from tollgate_hotstate import HotState, api_key
from tollgate_ledger.effects import NO_BALANCE, Effects

# Redis answers thousands of scripts a second; a cap keeps one huge batch from taking every
# pooled connection away from the gateway-facing calls of this process.
_MIRROR_CONCURRENCY = 64

STATUS_VERSION_FIELD = "status_v"
PLAN_VERSION_FIELD = "plan_v"
# The plan columns of ledger.hot_account, pushed whole by remirror and rebuild (as a load would).
PLAN_COLUMNS = ("plan", "plan_models", "fallback", "cap", "pused", "free_models", "daily_cap", "dused", "dday")


async def apply(hot: HotState, effects: Effects) -> set[str]:
    """Run the Redis side of a committed transaction. Raises if Redis is unreachable. Returns
    the customers whose mirror was not applied (not loaded, or a newer version already there)."""
    semaphore = asyncio.Semaphore(_MIRROR_CONCURRENCY)
    skipped: set[str] = set()

    async def one(customer_id: str, balance: int, seq: int, posted: list[str]) -> None:
        async with semaphore:
            applied, _ = await hot.mirror(customer_id, balance, seq, posted)
        if not applied and seq != NO_BALANCE:
            skipped.add(customer_id)

    await asyncio.gather(
        *(one(cid, m.balance, m.seq, sorted(m.posted)) for cid, m in effects.mirrors.items())
    )
    for cid, (version, status) in effects.statuses.items():
        if not await hot.set_fields(cid, STATUS_VERSION_FIELD, version, {"status": status}):
            skipped.add(cid)
    for cid, (version, fields) in effects.plans.items():
        if not await hot.set_fields(cid, PLAN_VERSION_FIELD, version, fields):
            skipped.add(cid)
    return skipped


def _plan_fields(row: asyncpg.Record) -> dict[str, str | int]:
    return {name: row[name] if isinstance(row[name], int) else str(row[name] or "") for name in PLAN_COLUMNS}


_HOT_SELECT = (
    "SELECT customer_id, bal, seq, status, status_v, plan_v, plan, plan_models, fallback, cap, pused, free_models, "
    "daily_cap, dused, dday FROM ledger.hot_account "
)


def _effects_of(rows: list[asyncpg.Record]) -> Effects:
    effects = Effects()
    for row in rows:
        effects.mirror(row["customer_id"], row["bal"], row["seq"])
        effects.status(row["customer_id"], row["status_v"], row["status"])
        effects.plan(row["customer_id"], row["plan_v"], _plan_fields(row))
    return effects


async def remirror(pool: asyncpg.Pool, hot: HotState, customer_ids: list[str]) -> None:
    """Mirror Postgres' current balance, status and plan again. A gateway that loaded the customer
    between reading the view and writing Redis may have written a version older than one whose
    mirror found nothing loaded; this second look, a moment later, repairs that."""
    rows = await pool.fetch(_HOT_SELECT + "WHERE customer_id = ANY($1::text[])", customer_ids)
    await apply(hot, _effects_of(rows))


def key_fields(row: asyncpg.Record) -> dict[str | bytes, str | bytes]:
    return {
        "customer_id": row["customer_id"],
        "key_id": row["key_id"],
        "status": row["status"],
        "models": row["models"] or "",
        "dodo_customer_id": row["dodo_customer_id"] or "",
    }


async def write_key(hot: HotState, row: asyncpg.Record) -> None:
    await hot.redis.hset(api_key(row["key_hash"]), mapping=key_fields(row))  # type: ignore[misc,arg-type]


async def write_customer_keys(pool: asyncpg.Pool, hot: HotState, customer_id: str) -> int:
    """Rewrite a customer's active key hashes (e.g. once its Dodo customer id is known)."""
    rows = await pool.fetch(
        "SELECT key_hash, key_id, customer_id, dodo_customer_id, status, models FROM ledger.gateway_keys "
        "WHERE customer_id = $1 AND status = 'active'",
        customer_id,
    )
    for row in rows:
        await write_key(hot, row)
    return len(rows)


async def drop_key(hot: HotState, nc: NatsClient | None, key_hash: str) -> None:
    """Delete the cached key and tell every gateway replica to drop its in-process copy now."""
    await hot.redis.delete(api_key(key_hash))
    if nc is not None and nc.is_connected:
        await nc.publish(subjects.CACHE_INVALIDATE_KEY, key_hash.encode())
        await nc.flush(timeout=2)


async def rebuild(
    pool: asyncpg.Pool, hot: HotState, nc: NatsClient | None, customer_id: str | None = None
) -> dict[str, int]:
    """Re-mirror balances, statuses and plans and rewrite key hashes from Postgres. Never changes a
    balance: a mirror applies Postgres' own (balance, seq), and only if newer than Redis' copy;
    customers whose hot state is not loaded stay unloaded (the gateway loads them on demand)."""
    accounts = await pool.fetch(_HOT_SELECT + "WHERE $1::text IS NULL OR customer_id = $1", customer_id)
    await apply(hot, _effects_of(accounts))
    keys = await pool.fetch(
        "SELECT key_hash, key_id, customer_id, dodo_customer_id, status, models FROM ledger.gateway_keys "
        "WHERE $1::text IS NULL OR customer_id = $1",
        customer_id,
    )
    active = revoked = 0
    for row in keys:
        if row["status"] == "active":
            await write_key(hot, row)
            active += 1
        else:
            await drop_key(hot, nc, row["key_hash"])
            revoked += 1
    return {"customers": len(accounts), "keys_written": active, "keys_dropped": revoked}
