"""The fault proxy between redis-py and a real Redis: each toxic must break the client the way
the real fault would, and removing it must let the same client reconnect."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tollgate_standins.faultproxy import FaultProxy, ToxicError

from .helpers import eventually, free_port


def client_for(port: int, timeout: float = 2.0) -> redis.Redis:
    # No client-side retries: the test must see the fault, not redis-py papering over it.
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.fixture
async def proxy(redis_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(0, "127.0.0.1", redis_port, seed=7) as p:
        yield p


@pytest.fixture
def key() -> str:
    return f"standins:faultproxy:{uuid.uuid4().hex}"


async def test_clean_proxy_passes_traffic(proxy: FaultProxy, key: str) -> None:
    client = client_for(proxy.port)
    try:
        await client.set(key, "v", ex=60)
        assert await client.get(key) == b"v"
        assert proxy.active_connections == 1
    finally:
        await client.aclose()


async def test_latency_beyond_client_timeout_times_out_then_recovers(proxy: FaultProxy, key: str) -> None:
    client = client_for(proxy.port, timeout=0.2)
    try:
        await client.set(key, "v", ex=60)
        await proxy.set_toxics(latency_ms=1500)
        with pytest.raises(RedisTimeoutError):
            await client.get(key)
        await proxy.clear_toxics()
        assert await client.get(key) == b"v"
    finally:
        await client.aclose()


async def test_small_latency_with_jitter_keeps_protocol_intact(proxy: FaultProxy, key: str) -> None:
    client = client_for(proxy.port)
    try:
        await proxy.set_toxics(latency_ms=20, jitter_ms=10)
        await client.set(key, "v", ex=60)
        values = await asyncio.gather(*(client.incr(f"{key}:n") for _ in range(5)))
        await client.delete(f"{key}:n")
        assert sorted(values) == [1, 2, 3, 4, 5]
        assert await client.get(key) == b"v"
    finally:
        await client.aclose()


async def test_down_refuses_new_and_cuts_existing_connections(proxy: FaultProxy, key: str) -> None:
    client = client_for(proxy.port)
    fresh = client_for(proxy.port)
    try:
        await client.set(key, "v", ex=60)
        await proxy.set_toxics(down=True)

        with pytest.raises(RedisConnectionError):
            await client.get(key)
        with pytest.raises(RedisConnectionError):
            await fresh.ping()

        await proxy.set_toxics(down=False)
        assert await client.get(key) == b"v"
        assert await fresh.ping() is True
    finally:
        await client.aclose()
        await fresh.aclose()


async def test_reset_peer_resets_connections_until_removed(proxy: FaultProxy, key: str) -> None:
    client = client_for(proxy.port)
    try:
        await client.set(key, "v", ex=60)
        await proxy.set_toxics(reset_peer=True)

        with pytest.raises(RedisConnectionError):
            await client.get(key)
        with pytest.raises(RedisConnectionError):
            await client.get(key)

        await proxy.set_toxics(reset_peer=False)
        assert await client.get(key) == b"v"
    finally:
        await client.aclose()


async def test_limit_data_cuts_a_connection_after_n_bytes(proxy: FaultProxy, key: str) -> None:
    client = client_for(proxy.port)
    try:
        await client.set(key, "x" * 1000, ex=60)
        # Counted from now on this connection: a PING round trip fits in 100 bytes, a 1000-byte
        # reply does not, and the connection is cut in the middle of it.
        await proxy.set_toxics(limit_data=100)
        assert await client.ping() is True
        with pytest.raises(RedisConnectionError):
            await client.get(key)

        await proxy.update({"limit_data": None})
        assert await client.get(key) == b"x" * 1000
    finally:
        await client.aclose()


async def test_timeout_holds_the_connection_and_drops_data(proxy: FaultProxy, key: str) -> None:
    client = client_for(proxy.port, timeout=0.3)
    try:
        await client.set(key, "v", ex=60)
        await proxy.set_toxics(timeout=True)

        with pytest.raises(RedisTimeoutError):
            await client.get(key)
        assert proxy.toxics.timeout is True

        await proxy.clear_toxics()
        assert await client.get(key) == b"v"
    finally:
        await client.aclose()


async def test_unknown_or_mistyped_toxics_are_rejected(proxy: FaultProxy) -> None:
    with pytest.raises(ToxicError):
        await proxy.set_toxics(bandwidth=10)
    with pytest.raises(ToxicError):
        await proxy.set_toxics(down="yes")

    assert proxy.toxics.down is False


async def test_process_with_http_control_api(redis_port: int, key: str) -> None:
    listen, control = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tollgate_standins.faultproxy",
            "--listen",
            f"127.0.0.1:{listen}",
            "--upstream",
            f"127.0.0.1:{redis_port}",
            "--control",
            f"127.0.0.1:{control}",
        ],
        env={**os.environ, "FAULTPROXY_LOG_LEVEL": "warning"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = client_for(listen)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{control}", timeout=5) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout=20)
            assert await client.ping() is True

            down = await http.put("/toxics", json={"down": True})
            assert down.json()["down"] is True
            with pytest.raises(RedisConnectionError):
                await client.ping()

            bad = await http.put("/toxics", json={"nope": 1})
            assert bad.status_code == 400

            restored = await http.delete("/toxics/down")
            assert restored.json()["down"] is False
            assert await client.ping() is True

            await http.put("/toxics", json={"latency_ms": 5})
            cleared = (await http.delete("/toxics")).json()
            stats = (await http.get("/stats")).json()
            assert cleared["latency_ms"] == 0
            assert stats["upstream"] == f"127.0.0.1:{redis_port}"
            assert stats["total_connections"] >= 2
    finally:
        await client.aclose()
        proc.terminate()
        proc.wait(10)
