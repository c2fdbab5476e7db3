"""Rebuild a customer's hot state from Postgres, the system of record. Reads the two views the
owners publish for this purpose: `ledger.hot_account` (balance, plan) and `tier.hot_limits`."""

from __future__ import annotations

import asyncpg

from tollgate_hotstate.hotstate import HotState


async def load_customer(
    pool: asyncpg.Pool, hot: HotState, customer_id: str, default_rpm: int, default_tpm: int
) -> bool:
    """Returns False when the customer does not exist in the ledger."""
    async with pool.acquire() as conn:
        account = await conn.fetchrow("SELECT * FROM ledger.hot_account WHERE customer_id = $1", customer_id)
        if account is None:
            return False
        limits = None
        try:
            limits = await conn.fetchrow(
                "SELECT tier, rpm, tpm, version FROM tier.hot_limits WHERE customer_id = $1", customer_id
            )
        except asyncpg.UndefinedTableError:
            limits = None  # tier service not deployed: the default limits apply
    fields: dict[str, str | int] = {
        key: ("" if value is None else value if isinstance(value, int) else str(value))
        for key, value in dict(account).items()
        if key != "customer_id"
    }
    fields["rpm"] = limits["rpm"] if limits else default_rpm
    fields["tpm"] = limits["tpm"] if limits else default_tpm
    fields["tier"] = limits["tier"] if limits else ""
    fields["limits_v"] = limits["version"] if limits else 0
    return await hot.load(customer_id, fields) or True
