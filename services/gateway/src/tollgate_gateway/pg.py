"""Postgres, only off the hot path: key lookups Redis cannot answer, hot-state (re)loads, tier
progress. The pool is created on first use so a gateway starts (and serves from Redis) while
Postgres is away."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tollgate_gateway.errors import billing_unavailable
from tollgate_platform.db import UNAVAILABLE, create_pool
from tollgate_platform.logging import get_logger

log = get_logger("tollgate.gateway.pg")


class Postgres:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await create_pool(self.dsn, min_size=1, max_size=8)
        return self._pool

    def _missing(self, view: str) -> None:
        if view not in self._warned:
            self._warned.add(view)
            log.warning("postgres view missing; treating as empty", view=view)

    async def api_key(self, digest: str) -> dict[str, Any] | None:
        try:
            pool = await self.pool()
            row = await pool.fetchrow(
                "SELECT key_hash, key_id, customer_id, dodo_customer_id, status, models "
                "FROM ledger.gateway_keys WHERE key_hash = $1",
                digest,
            )
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            self._missing("ledger.gateway_keys")
            return None
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise billing_unavailable() from exc
        return dict(row) if row else None

    async def tier_row(self, customer_id: str) -> dict[str, Any] | None:
        pool = await self.pool()
        try:
            row = await pool.fetchrow("SELECT * FROM tier.hot_limits WHERE customer_id = $1", customer_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        return dict(row) if row else None

    async def ping(self) -> None:
        pool = await self.pool()
        await pool.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
