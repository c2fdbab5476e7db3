"""Operator actions behind the admin API: customers, keys, grants, adjustments, thresholds,
checkout links, balances and history. Every money-moving action takes an idempotency key."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg

from tollgate_ledger import alerts, dodo_events, hot, ids, postings
from tollgate_ledger.context import Ledger
from tollgate_ledger.effects import Effects
from tollgate_ledger.errors import ApiError, not_found
from tollgate_money import NANOS_PER_CENT
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

CUSTOMER_COLUMNS = " customer_id, dodo_customer_id, email, name, created_at "
KEY_COLUMNS = " key_id, customer_id, member_id, prefix, name, status, models, created_at, revoked_at, last_used_at "
ENTRY_COLUMNS = (
    " seq, kind, amount_nanos, balance_after, idempotency_key, reference, model, input_tokens, "
    "cached_input_tokens, output_tokens, reasoning_tokens, list_price_nanos, estimated, key_id, reason, "
    "occurred_at, created_at "
)


def record(row: asyncpg.Record | None) -> dict[str, Any]:
    return dict(row) if row is not None else {}


async def _dodo_customer(ledger: Ledger, customer_id: str, email: str, name: str) -> str | None:
    """Create (or find: Dodo matches by email) the Dodo customer; None when Dodo is unreachable."""
    if ledger.dodo is None:
        return None
    try:
        client = ledger.dodo.with_options(max_retries=1, timeout=ledger.settings.dodo_timeout_s)
        created = await client.customers.create(
            email=email, name=name, metadata={"tollgate_customer_id": customer_id}
        )
    except Exception as exc:
        log.warning("Dodo customer not created; link it later", customer_id=customer_id, error=type(exc).__name__)
        return None
    return str(created.customer_id)


async def create_customer(
    ledger: Ledger, *, email: str, name: str, dodo_customer_id: str | None, create_in_dodo: bool
) -> dict[str, Any]:
    customer_id = ids.new_customer_id()
    if dodo_customer_id is None and create_in_dodo:
        dodo_customer_id = await _dodo_customer(ledger, customer_id, email, name)
    try:
        async with ledger.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO ledger.customers (customer_id, dodo_customer_id, email, name) VALUES ($1, $2, $3, $4) "
                "RETURNING customer_id, dodo_customer_id, email, name, created_at",
                customer_id, dodo_customer_id, email, name,
            )
            await conn.execute("INSERT INTO ledger.accounts (customer_id) VALUES ($1)", customer_id)
    except asyncpg.UniqueViolationError as exc:
        raise ApiError(
            409, f"Dodo customer {dodo_customer_id} already belongs to another Tollgate customer",
            "dodo_customer_taken", "conflict_error",
        ) from exc
    return record(row)


async def get_customer(ledger: Ledger, customer_id: str) -> dict[str, Any]:
    row = await ledger.pool.fetchrow(
        "SELECT" + CUSTOMER_COLUMNS + "FROM ledger.customers WHERE customer_id = $1", customer_id
    )
    if row is None:
        raise not_found("customer", customer_id)
    return record(row)


async def list_customers(ledger: Ledger, *, limit: int, after: str | None, email: str | None) -> list[dict[str, Any]]:
    rows = await ledger.pool.fetch(
        "SELECT" + CUSTOMER_COLUMNS + "FROM ledger.customers WHERE ($1::text IS NULL OR customer_id > $1) "
        "AND ($2::text IS NULL OR lower(email) = lower($2)) ORDER BY customer_id LIMIT $3",
        after, email, limit,
    )
    return [record(r) for r in rows]


async def link_dodo(ledger: Ledger, customer_id: str) -> dict[str, Any]:
    customer = await get_customer(ledger, customer_id)
    if customer["dodo_customer_id"]:
        return customer
    dodo_id = await _dodo_customer(ledger, customer_id, customer["email"], customer["name"])
    if dodo_id is None:
        raise ApiError(502, "Dodo is unreachable; try again", "dodo_unavailable", "api_error")
    try:
        await ledger.pool.execute(
            "UPDATE ledger.customers SET dodo_customer_id = $2 WHERE customer_id = $1 AND dodo_customer_id IS NULL",
            customer_id, dodo_id,
        )
    except asyncpg.UniqueViolationError as exc:
        raise ApiError(409, f"Dodo customer {dodo_id} already belongs to another Tollgate customer",
                       "dodo_customer_taken", "conflict_error") from exc
    try:
        await hot.write_customer_keys(ledger.pool, ledger.hot, customer_id)
    except Exception as exc:  # the gateway falls back to Postgres for keys it cannot find
        log.warning("key cache not refreshed", customer_id=customer_id, error=type(exc).__name__)
    return await get_customer(ledger, customer_id)


# -- keys --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: str
    row: dict[str, Any]


async def issue_key(
    ledger: Ledger, customer_id: str, *, name: str, models: list[str] | None, member_id: str | None = None
) -> IssuedKey:
    """With member_id, a team member's key: it belongs to the team's customer (usage counts
    against the team's plan) and is revoked with the member."""
    await get_customer(ledger, customer_id)
    plaintext = ids.new_api_key()
    async with ledger.pool.acquire() as conn, conn.transaction():
        if member_id is not None:
            # Shares the row lock a removal takes, so a key cannot slip in while its member goes.
            active = await conn.fetchval(
                "SELECT status = 'active' FROM ledger.members WHERE member_id = $1 AND customer_id = $2 FOR SHARE",
                member_id, customer_id,
            )
            if active is None:
                raise not_found("member", member_id)
            if not active:
                raise ApiError(409, f"member {member_id} was removed", "member_removed")
        row = await conn.fetchrow(
            "INSERT INTO ledger.api_keys (key_id, customer_id, key_hash, prefix, name, models, member_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING" + KEY_COLUMNS,
            ids.new_key_id(), customer_id, ids.hash_key(plaintext), ids.visible_prefix(plaintext), name,
            ids.normalize_models(models), member_id,
        )
    gateway_row = await ledger.pool.fetchrow(
        "SELECT key_hash, key_id, customer_id, dodo_customer_id, status, models FROM ledger.gateway_keys "
        "WHERE key_id = $1", row["key_id"],
    )
    try:
        await hot.write_key(ledger.hot, gateway_row)
    except Exception as exc:  # the gateway falls back to Postgres; the key works either way
        log.warning("key not cached in Redis", key_id=row["key_id"], error=type(exc).__name__)
    return IssuedKey(plaintext, record(row))


async def list_keys(ledger: Ledger, customer_id: str) -> list[dict[str, Any]]:
    await get_customer(ledger, customer_id)
    rows = await ledger.pool.fetch(
        "SELECT" + KEY_COLUMNS + "FROM ledger.api_keys WHERE customer_id = $1 ORDER BY created_at, key_id",
        customer_id,
    )
    return [record(r) for r in rows]


async def revoke_key(ledger: Ledger, key_id: str) -> dict[str, Any]:
    row = await ledger.pool.fetchrow(
        "UPDATE ledger.api_keys SET status = 'revoked', revoked_at = COALESCE(revoked_at, now()) "
        "WHERE key_id = $1 RETURNING key_hash, key_id, customer_id, member_id, prefix, name, status, models, "
        "created_at, revoked_at, last_used_at",
        key_id,
    )
    if row is None:
        raise not_found("key", key_id)
    # Postgres already says revoked; Redis and every gateway's in-process cache follow now.
    await hot.drop_key(ledger.hot, ledger.nc, row["key_hash"])
    result = record(row)
    result.pop("key_hash")
    return result


# -- money -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Movement:
    created: bool
    entry: dict[str, Any]
    balance_nanos: int
    mirrored: bool


async def _existing_entry(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT customer_id," + ENTRY_COLUMNS + "FROM ledger.entries WHERE idempotency_key = $1", key
    )


async def move_money(
    ledger: Ledger, customer_id: str, *, kind: postings.EntryKind, amount: int, operator_key: str, reason: str,
    dodo_entry_type: str | None,
) -> Movement:
    """A grant or an adjustment. Replaying the same key returns the first result; the same key
    with a different customer or amount is refused (409), never applied."""
    await get_customer(ledger, customer_id)
    key = f"{kind}:{operator_key}"

    async def work(conn: asyncpg.Connection, effects: Effects) -> tuple[bool, asyncpg.Record, int]:
        posted = await postings.post_entry(
            conn, effects, customer_id=customer_id, kind=kind, amount=amount, idempotency_key=key,
            reference=operator_key, reason=reason, default_low_percent=ledger.settings.default_low_threshold_percent,
        )
        existing = await _existing_entry(conn, key)
        assert existing is not None
        if posted is None:
            if existing["customer_id"] != customer_id or existing["amount_nanos"] != amount:
                raise ApiError(409, "idempotency key already used for a different movement", "idempotency_conflict",
                               "conflict_error")
            account = await postings.read_account(conn, customer_id)
            assert account is not None
            effects.mirror(customer_id, account.balance, account.seq)
            return False, existing, account.balance
        if dodo_entry_type is not None and ledger.settings.dodo_sync_credits:
            await dodo_events.queue_dodo_sync(
                conn, effects, customer_id=customer_id, key=key, entry_type=dodo_entry_type, amount=abs(amount),
                reason=reason,
            )
        return True, existing, posted.balance

    (created, entry, balance), effects = await ledger.transaction(work)
    mirrored = await ledger.after_commit(effects)
    result = record(entry)
    result.pop("customer_id", None)
    return Movement(created, result, balance, mirrored)


async def set_low_threshold(ledger: Ledger, customer_id: str, threshold_nanos: int | None) -> dict[str, Any]:
    await get_customer(ledger, customer_id)

    async def work(conn: asyncpg.Connection, effects: Effects) -> None:
        account = await postings.lock_account(conn, customer_id)
        threshold = alerts.low_threshold(
            threshold_nanos, account.last_topup, ledger.settings.default_low_threshold_percent
        )
        crossing = alerts.evaluate(account.alert_state, account.balance, threshold)
        await conn.execute(
            "UPDATE ledger.accounts SET low_threshold_nanos = $2, alert_state = $3, updated_at = now() "
            "WHERE customer_id = $1",
            customer_id, threshold_nanos, crossing.state,
        )
        if crossing.event is not None:
            await postings.publish_balance(
                conn, effects, customer_id=customer_id, balance=account.balance, seq=account.seq,
                threshold=threshold, last_topup=account.last_topup, reason="threshold", alert=crossing.event,
                updated=False,
            )

    _, effects = await ledger.transaction(work)
    await ledger.after_commit(effects)
    return await balance(ledger, customer_id)


async def balance(ledger: Ledger, customer_id: str) -> dict[str, Any]:
    await get_customer(ledger, customer_id)
    row = await ledger.pool.fetchrow(
        "SELECT a.balance_nanos, a.seq, a.lifetime_topup_nanos, a.last_topup_nanos, a.last_topup_at, "
        "a.low_threshold_nanos, a.alert_state, h.status FROM ledger.accounts a "
        "JOIN ledger.hot_account h USING (customer_id) WHERE a.customer_id = $1",
        customer_id,
    )
    assert row is not None
    threshold = alerts.low_threshold(
        row["low_threshold_nanos"], row["last_topup_nanos"], ledger.settings.default_low_threshold_percent
    )
    result: dict[str, Any] = {
        "customer_id": customer_id,
        "balance_nanos": row["balance_nanos"],
        "balance_cents": row["balance_nanos"] // NANOS_PER_CENT,
        "seq": row["seq"],
        "lifetime_topup_nanos": row["lifetime_topup_nanos"],
        "last_topup_nanos": row["last_topup_nanos"],
        "last_topup_at": row["last_topup_at"],
        "low_threshold_nanos": threshold,
        "low_threshold_explicit": row["low_threshold_nanos"] is not None,
        "alert_state": row["alert_state"],
        "status": row["status"],
        "hot": None,
    }
    try:
        snap = await asyncio.wait_for(ledger.hot.snapshot(customer_id), timeout=1.0)
    except Exception:
        snap = {}
    if "loaded" in snap:
        reserved, unposted = int(snap.get("reserved", 0)), int(snap.get("unposted", 0))
        hot_bal = int(snap.get("bal", 0))
        result["hot"] = {
            "balance_nanos": hot_bal, "seq": int(snap.get("seq", 0)), "reserved_nanos": reserved,
            "unposted_nanos": unposted, "available_nanos": hot_bal - unposted - reserved,
            "status": snap.get("status", "active"),
        }
    return result


async def history(ledger: Ledger, customer_id: str, *, limit: int, before_seq: int | None) -> list[dict[str, Any]]:
    await get_customer(ledger, customer_id)
    rows = await ledger.pool.fetch(
        "SELECT" + ENTRY_COLUMNS + "FROM ledger.entries WHERE customer_id = $1 AND ($2::bigint IS NULL OR seq < $2) "
        "ORDER BY seq DESC LIMIT $3",
        customer_id, before_seq, limit,
    )
    return [record(r) for r in rows]


async def checkout(ledger: Ledger, customer_id: str, *, pack_ref: str, quantity: int) -> dict[str, Any]:
    customer = await get_customer(ledger, customer_id)
    if ledger.catalogue.get() is None:
        raise ApiError(503, "the Dodo catalogue is not provisioned (run `tollgate dodo bootstrap`)",
                       "catalogue_missing", "api_error")
    pack = ledger.catalogue.find_pack(pack_ref)
    if pack is None:
        raise not_found("pack", pack_ref)
    if ledger.dodo is None:
        raise ApiError(503, "Dodo is not configured", "dodo_unavailable", "api_error")
    if not customer["dodo_customer_id"]:
        customer = await link_dodo(ledger, customer_id)
    client = ledger.dodo.with_options(max_retries=1, timeout=ledger.settings.dodo_timeout_s)
    try:
        session = await client.checkout_sessions.create(
            product_cart=[{"product_id": pack.product_id, "quantity": quantity}],
            customer={"customer_id": customer["dodo_customer_id"]},
            metadata={"tollgate_customer_id": customer_id},
            return_url=f"{ledger.settings.public_base_url.rstrip('/')}/checkout/return",
        )
    except Exception as exc:
        raise ApiError(502, f"Dodo refused or did not answer the checkout: {type(exc).__name__}",
                       "dodo_unavailable", "api_error") from exc
    return {
        "customer_id": customer_id,
        "checkout_url": session.checkout_url,
        "session_id": session.session_id,
        "pack": pack.model_dump(),
        "quantity": quantity,
        "credits": pack.credits * quantity,
    }


async def drift_history(ledger: Ledger, customer_id: str, limit: int) -> list[dict[str, Any]]:
    await get_customer(ledger, customer_id)
    rows = await ledger.pool.fetch(
        "SELECT check_id, customer_id, tollgate_nanos, in_flight_nanos, dodo_nanos, drift_nanos, status, detail, "
        "checked_at FROM ledger.drift_checks WHERE customer_id = $1 ORDER BY checked_at DESC LIMIT $2",
        customer_id, limit,
    )
    return [record(r) for r in rows]


async def drifting(ledger: Ledger) -> list[dict[str, Any]]:
    rows = await ledger.pool.fetch(
        "SELECT DISTINCT ON (customer_id) check_id, customer_id, tollgate_nanos, in_flight_nanos, dodo_nanos, "
        "drift_nanos, status, detail, checked_at FROM ledger.drift_checks ORDER BY customer_id, checked_at DESC"
    )
    return [record(r) for r in rows if r["status"] != "ok"]


async def inbox(ledger: Ledger, *, outcome: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await ledger.pool.fetch(
        "SELECT webhook_id, type, outcome, detail, customer_id, parked_payment_id, received_at, applied_at "
        "FROM ledger.webhook_inbox WHERE ($1::text IS NULL OR outcome = $1) ORDER BY received_at DESC LIMIT $2",
        outcome, limit,
    )
    return [record(r) for r in rows]
