"""Session-wide real infrastructure. Every integration test talks to real NATS, Redis and
Postgres: a private nats-server and redis-server for this session, a fresh database."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from support.servers import Infra, create_database, drop_database, reset_bus, start_nats, start_redis


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tollgate-test-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
async def infra(workdir: Path) -> AsyncIterator[Infra]:
    nats_proc = start_nats(workdir)
    redis_proc = start_redis(workdir)
    db = await create_database()
    try:
        yield Infra(nats=nats_proc, redis=redis_proc, database_url=db, workdir=workdir)
    finally:
        nats_proc.stop()
        redis_proc.stop()
        await drop_database(db)


@pytest.fixture
async def clean_bus(infra: Infra) -> AsyncIterator[Infra]:
    """Streams and consumers exactly as provisioning makes them, emptied for this test."""
    await reset_bus(infra.nats_url)
    yield infra


@pytest.fixture
async def clean_redis(infra: Infra) -> Infra:
    import redis.asyncio as redis

    client = redis.Redis.from_url(infra.redis_url)
    await client.flushall()
    await client.aclose()
    return infra
