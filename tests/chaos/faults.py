"""The fault catalogue of a chaos run, walked through while the load runs. Each fault is injected,
held for a moment under load, and healed; every injection is counted by kind for the summary."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import httpx

from chaos.cluster import Cluster

INGEST = {"method": "POST", "path_prefix": "/events/ingest"}
# Tollgate's own credit movements on Dodo (grants, refund reversals) fail too, some after applying.
LEDGER_ENTRIES = {"method": "POST", "path_prefix": "/credit-entitlements", "error_rate": 0.3, "status": 500,
                  "apply_then_fail": True}
# Dodo's ingest failures take turns: the emulator applies the first matching rule only.
INGEST_ROTATION = (
    {**INGEST, "error_rate": 0.3, "status": 500, "apply_then_fail": True},
    {**INGEST, "error_rate": 0.3, "status": 429, "retry_after_s": 0.5},
    {**INGEST, "error_rate": 0.3, "status": 500},
    {**INGEST, "error_rate": 0.2, "status": "timeout", "apply_then_fail": True, "hang_max_s": 5},
)
WEBHOOK_FAULTS = {"duplicate_rate": 0.3, "reorder": True, "reorder_window_ms": 150}
SERVICES_IN_TURN = ("gateway", "ledger", "metering", "tier", "notifier")


@dataclass
class Faults:
    cluster: Cluster
    rng: random.Random
    # Fault names to leave out (CHAOS_SKIP_FAULTS), to tell which fault a violation comes from:
    # a step name (e.g. restart_redis) or a toxic (e.g. redis:timeout, nats:down).
    skip: frozenset[str] = frozenset()
    injected: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    kills: list[tuple[str, datetime]] = field(default_factory=list)  # (service, when), for the audit
    _rotation: int = 0

    def _note(self, kind: str, what: str) -> None:
        self.injected[kind] += 1
        wall = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        self.log.append(f"{time.monotonic() - self.started:6.1f}s ({wall}Z) {kind}: {what}")

    @property
    def system(self):  # type: ignore[no-untyped-def]
        return self.cluster.system

    # -- the catalogue ---------------------------------------------------------------------
    async def dodo_faults(self) -> None:
        rule = INGEST_ROTATION[self._rotation % len(INGEST_ROTATION)]
        self._rotation += 1
        body = {"seed": self.rng.randrange(2**31), "endpoints": [rule, LEDGER_ENTRIES], "webhooks": WEBHOOK_FAULTS}
        async with httpx.AsyncClient(base_url=self.system.url("dodo-emulator"), timeout=10) as emulator:
            (await emulator.put("/_emulator/faults", json=body)).raise_for_status()
        self._note("dodo_faults", f"ingest {rule.get('status')} apply_then_fail={rule.get('apply_then_fail', False)}, "
                                  "ledger entries 500 after applying, webhooks duplicated + reordered")

    async def kill(self, service: str, index: int) -> None:
        self._note("sigkill", f"{service}[{index}]")
        self.kills.append((service, datetime.now(UTC)))
        await self.system.restart(service, index, kill=True)

    async def restart_nats(self) -> None:
        self._note("nats_restart", "kill -9, start on the same store")
        self.cluster.infra.nats.kill()
        await asyncio.sleep(0.5)
        self.cluster.infra.nats.start()

    async def restart_redis(self) -> None:
        self._note("redis_restart", "kill -9, start empty (no persistence)")
        self.cluster.infra.redis.kill()
        await asyncio.sleep(0.3)
        self.cluster.infra.redis.start()

    async def terminate_backends(self) -> None:
        database = self.cluster.infra.database_url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(self.cluster.infra.database_url.rsplit("/", 1)[0] + "/postgres")
        try:
            killed = await conn.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()) t", database,
            )
        finally:
            await conn.close()
        self._note("pg_terminate", f"{killed} backends")

    async def redis_proxy(self) -> None:
        proxy = self.cluster.proxies["redis"]
        for toxics, hold in (({"latency_ms": 150, "jitter_ms": 50}, 2.0), ({"reset_peer": True}, 0.7),
                             ({"limit_data": 20_000}, 2.0), ({"timeout": True}, 1.0)):
            if f"redis:{next(iter(toxics))}" in self.skip:
                continue
            await proxy.set(**toxics)
            self._note("proxy_redis", ",".join(toxics))
            await asyncio.sleep(hold)
            await proxy.clear()
            await asyncio.sleep(0.5)

    async def nats_proxy(self) -> None:
        proxy = self.cluster.proxies["nats"]
        for toxics, hold in (({"reset_peer": True}, 0.7), ({"limit_data": 8_000}, 2.0), ({"down": True}, 2.0),
                             ({"latency_ms": 300}, 2.0), ({"timeout": True}, 1.0)):
            if f"nats:{next(iter(toxics))}" in self.skip:
                continue
            await proxy.set(**toxics)
            self._note("proxy_nats", ",".join(toxics))
            await asyncio.sleep(hold)
            await proxy.clear()
            await asyncio.sleep(0.5)

    async def sink_faults(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            await client.post(f"{self.system.url('slack-sink')}/_sink/fail", json={"count": 5, "status": 500})
            await client.post(f"{self.system.url('smtp-sink')}/_sink/refuse", json={"seconds": 2})
        self._note("alert_sinks", "slack 5 x 500, smtp 421 for 2 s")

    # -- the schedule ---------------------------------------------------------------------
    def schedule(self, rounds: int) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        def kill(service: str, index: int) -> tuple[str, Callable[[], Awaitable[None]]]:
            return f"kill:{service}", lambda: self.kill(service, index)

        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for r in range(rounds):
            i = r % 2  # later rounds kill the other replica
            steps += [
                ("dodo_faults", self.dodo_faults),
                kill("gateway", i),
                ("terminate_backends", self.terminate_backends),
                kill("ledger", i),
                ("sink_faults", self.sink_faults),
                kill("metering", i),
                ("restart_nats", self.restart_nats),
                ("dodo_faults", self.dodo_faults),
                kill("tier", i),
                ("redis_proxy", self.redis_proxy),
                kill("notifier", i),
                ("restart_redis", self.restart_redis),
                ("nats_proxy", self.nats_proxy),
                ("terminate_backends", self.terminate_backends),
                ("dodo_faults", self.dodo_faults),
            ]
        return steps

    async def run(self, rounds: int, gap_s: float = 1.0) -> None:
        for name, step in self.schedule(rounds):
            if name in self.skip:
                continue
            await step()
            await asyncio.sleep(gap_s)

    async def heal(self) -> None:
        """Clear every standing fault before the drain."""
        async with httpx.AsyncClient(timeout=10) as client:
            await client.delete(f"{self.system.url('dodo-emulator')}/_emulator/faults")
            await client.delete(f"{self.system.url('slack-sink')}/_sink/fail")
            await client.delete(f"{self.system.url('smtp-sink')}/_sink/refuse")
        for proxy in self.cluster.proxies.values():
            await proxy.clear()
