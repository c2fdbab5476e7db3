"""The whole of Tollgate for a chaos run: two gateways (the second one reaching Redis and NATS
through TCP fault proxies), two replicas of every consumer service, the stand-ins, a database of
its own, and retry/timing knobs shortened so a drain takes seconds instead of the production
minutes. Everything else is production configuration."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as redis

from support.servers import Infra, ManagedProcess, create_database, drop_database, free_port, reset_bus, wait_http
from support.system import System

# One tier that never throttles the load (rate limits are not what this suite measures) and one
# reached by buying a pack, so tier changes and their alerts happen during the run.
TIERS_TOML = """
preset = "chaos"

[[presets.chaos]]
name = "tier-1"
min_spend_usd = "0"
rpm = 1000000
tpm = 1000000000

[[presets.chaos]]
name = "tier-2"
min_spend_usd = "5"
rpm = 2000000
tpm = 2000000000
"""

FAST_KNOBS = {
    # Stuck pieces come back quickly (production waits minutes for these).
    "GATEWAY_REPUBLISH_AFTER_S": "3",
    "GATEWAY_REPUBLISH_INTERVAL_S": "1",
    "GATEWAY_UPSTREAM_TIMEOUT_S": "10",
    "GATEWAY_PUBLISH_TIMEOUT_S": "1",
    "METERING_DODO_TIMEOUT_S": "2",
    "METERING_BACKOFF_BASE_S": "0.1",
    "METERING_BACKOFF_MAX_S": "1",
    "METERING_NAK_DELAY_MAX_S": "2",
    "METERING_FLUSH_INTERVAL_MS": "100",
    "NOTIFIER_RETRY_BASE_S": "0.2",
    "NOTIFIER_RETRY_MAX_S": "1",
    "NOTIFIER_WORKER_POLL_S": "0.2",
    "NOTIFIER_SMTP_TIMEOUT_S": "2",
    "NOTIFIER_HTTP_TIMEOUT_S": "2",
    "NOTIFIER_CLAIM_LEASE_S": "5",
    "NOTIFIER_NAK_DELAY_S": "0.5",
    "LEDGER_RECONCILE_INTERVAL_S": "2",
    "LEDGER_DODO_TIMEOUT_S": "2",
    "LEDGER_REMIRROR_DELAY_S": "0.5",
    # Dodo deducts about once a minute; every 0.5 s (the harness default) x 200 customers x 2 meters
    # floods the ledger with credit.deducted webhooks. The drain runs a deduction itself.
    "DODO_EMULATOR_DEDUCT_INTERVAL_S": "5",
    "MOCK_UPSTREAM_LOG_SIZE": "1000000",
    "SMTP_SINK_MAX_MESSAGES": "100000",
    "SLACK_SINK_MAX_MESSAGES": "100000",
}


@dataclass
class FaultProxyProcess:
    name: str
    process: ManagedProcess
    listen_port: int
    control_port: int

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    async def set(self, **toxics: object) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            (await client.put(f"{self.control}/toxics", json=toxics)).raise_for_status()

    async def clear(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            (await client.delete(f"{self.control}/toxics")).raise_for_status()


@dataclass
class Cluster:
    system: System
    infra: Infra  # this run's view: own database and log directory, the session's NATS and Redis
    proxies: dict[str, FaultProxyProcess]

    @property
    def logs(self) -> Path:
        return self.infra.workdir

    async def preserve(self, dest: Path) -> None:
        """Copy the run's logs and the ledger's tables somewhere that outlives the session."""
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.infra.workdir, dest, ignore=shutil.ignore_patterns("spool"))
        conn = await asyncpg.connect(self.infra.database_url)
        try:
            for table in ("ledger.entries", "ledger.plan_usage", "ledger.accounts", "ledger.webhook_inbox",
                          "ledger.dodo_sync", "ledger.outbox", "notifier.alerts", "notifier.deliveries"):
                await conn.copy_from_query(f"SELECT * FROM {table}", output=str(dest / f"{table}.csv"),
                                           format="csv", header=True)
        finally:
            await conn.close()


async def _start_proxy(infra: Infra, name: str, upstream_port: int, seed: int) -> FaultProxyProcess:
    listen, control = free_port(), free_port()
    proc = ManagedProcess(
        [sys.executable, "-m", "tollgate_standins.faultproxy", "--listen", f"127.0.0.1:{listen}",
         "--upstream", f"127.0.0.1:{upstream_port}", "--control", f"127.0.0.1:{control}", "--seed", str(seed)],
        control, log=infra.workdir / f"faultproxy-{name}.log",
    )
    proc.start(wait=False)
    await wait_http(f"http://127.0.0.1:{control}/healthz", proc)
    return FaultProxyProcess(name, proc, listen, control)


async def _provision(infra: Infra) -> None:
    """Streams and consumers exactly as `tollgate provision streams` makes them, emptied."""
    await reset_bus(infra.nats_url)
    client = redis.Redis.from_url(infra.redis_url)
    await client.flushall()
    await client.aclose()


@contextlib.asynccontextmanager
async def running_cluster(
    session_infra: Infra, *, seed: int, replicas: int = 2, name: str = "chaos",
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    workdir = session_infra.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = await create_database()
    infra = dataclasses.replace(session_infra, database_url=database_url, workdir=workdir)
    (workdir / "tiers.toml").write_text(TIERS_TOML)
    await _provision(infra)
    proxies: dict[str, FaultProxyProcess] = {}
    system = System(infra, env={
        **FAST_KNOBS,
        "TOLLGATE_TIERS_FILE": str(workdir / "tiers.toml"),
        "TOLLGATE_DODO_CATALOGUE_FILE": str(workdir / "dodo-catalogue.json"),
        "GATEWAY_SPOOL_DIR": str(workdir / "spool"),
        **(extra_env or {}),
    })
    try:
        proxies["redis"] = await _start_proxy(infra, "redis", infra.redis.port, seed)
        proxies["nats"] = await _start_proxy(infra, "nats", infra.nats.port, seed + 1)
        behind_proxies = {
            "REDIS_URL": f"redis://127.0.0.1:{proxies['redis'].listen_port}/0",
            "NATS_URL": f"nats://127.0.0.1:{proxies['nats'].listen_port}",
        }
        counts = {"ledger": replicas, "tier": replicas, "metering": replicas, "notifier": replicas, "gateway": 2}
        await system.start_all(replicas=counts, replica_env={"gateway": [{}, behind_proxies]})
        yield Cluster(system, infra, proxies)
    finally:
        system.stop_all()
        for proxy in proxies.values():
            proxy.process.stop()
        await drop_database(database_url)
