"""Postgres: an asyncpg pool, versioned SQL migrations (yoyo), and a retry for serialization
failures and deadlocks (the only errors it is correct to retry blindly)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg

T = TypeVar("T")

# "Postgres cannot be reached right now", as asyncpg says it. InternalClientError is what a pooled
# connection raises when its backend was terminated in the middle of an operation (asyncpg's
# protocol state machine: "another operation is in progress"); the pool terminates it when
# resetting it on release fails.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.InternalClientError, asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError,
)


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)
    assert pool is not None
    return pool


def migrate(dsn: str, migrations_dir: Path, service: str) -> int:
    """Apply pending migrations of one service. yoyo's own tables live in the service's schema, so
    services never share migration history; a global advisory lock serialises every migration
    run (replicas starting together, several services on one fresh database). Sync: run it
    before the event loop starts or in a thread. Returns the number applied."""
    import psycopg
    from yoyo import get_backend, read_migrations

    with psycopg.connect(dsn, autocommit=True) as guard:
        guard.execute("SELECT pg_advisory_lock(hashtext('tollgate-migrations'))")
        try:
            guard.execute(f'CREATE SCHEMA IF NOT EXISTS "{service}"')
            backend = get_backend(f"{_yoyo_dsn(dsn)}{'&' if '?' in dsn else '?'}schema={service}")
            migrations = read_migrations(str(migrations_dir))
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
            return len(pending)
        finally:
            guard.execute("SELECT pg_advisory_unlock(hashtext('tollgate-migrations'))")


async def migrate_async(dsn: str, migrations_dir: Path, service: str) -> int:
    return await asyncio.to_thread(migrate, dsn, migrations_dir, service)


def _yoyo_dsn(dsn: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    return dsn


async def retry_serializable(op: Callable[[], Awaitable[T]], attempts: int = 8) -> T:
    for attempt in range(attempts):
        try:
            return await op()
        except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
    raise AssertionError("unreachable")
