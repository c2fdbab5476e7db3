"""(Re)loading a customer's hot state from Postgres when Redis does not have it (first use, or
after Redis lost its data). Concurrent requests of one customer share one load."""

from __future__ import annotations

import asyncio

import asyncpg

from tollgate_gateway.errors import billing_unavailable
from tollgate_gateway.pg import Postgres
from tollgate_hotstate import HotState
from tollgate_hotstate.loader import load_customer
from tollgate_platform.db import UNAVAILABLE


class CustomerLoader:
    def __init__(self, pg: Postgres, hot: HotState, default_rpm: int, default_tpm: int) -> None:
        self.pg = pg
        self.hot = hot
        self.default_rpm = default_rpm
        self.default_tpm = default_tpm
        self._inflight: dict[str, asyncio.Future[bool]] = {}

    async def load(self, customer_id: str) -> bool:
        """False when the ledger does not know the customer."""
        running = self._inflight.get(customer_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[customer_id] = future
        try:
            result = await self._load(customer_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # consumed here; waiters re-raise it
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[customer_id]

    async def _load(self, customer_id: str) -> bool:
        try:
            pool = await self.pg.pool()
            return await load_customer(pool, self.hot, customer_id, self.default_rpm, self.default_tpm)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return False  # no ledger deployed: nobody has a balance
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise billing_unavailable() from exc
