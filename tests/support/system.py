"""The whole of Tollgate as real processes on free ports, for end-to-end and fault tests: the
stand-ins, the five services (any number of replicas each), the Dodo bootstrap, and helpers to
kill, restart and talk to each part."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from support.balancer import TcpBalancer
from support.servers import REPO, Infra, ManagedProcess, free_port, wait_http

SERVICES = ("ledger", "tier", "metering", "notifier", "gateway")
ADMIN_TOKEN = "test-admin-token"
WEBHOOK_KEY = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0xMjM0NTY3OA=="


@dataclass
class Replica:
    name: str
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.process.port}"


@dataclass
class System:
    infra: Infra
    env: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, list[Replica]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    balancers: dict[str, TcpBalancer] = field(default_factory=dict)

    # -- wiring ---------------------------------------------------------------------------
    def url(self, name: str, index: int = 0) -> str:
        if name in self.replicas:
            return self.replicas[name][index].url
        return f"http://127.0.0.1:{self.ports[name]}"

    def base_env(self) -> dict[str, str]:
        return {
            **self.infra.env(),
            "UPSTREAM_BASE_URL": f"http://127.0.0.1:{self.ports['mock-upstream']}/v1",
            "UPSTREAM_API_KEY": "sk-upstream-test-secret",
            "MOCK_UPSTREAM_API_KEY": "sk-upstream-test-secret",
            "DODO_PAYMENTS_BASE_URL": f"http://127.0.0.1:{self.ports['dodo-emulator']}",
            "DODO_PAYMENTS_API_KEY": "dodo-test-key",
            "DODO_PAYMENTS_WEBHOOK_KEY": WEBHOOK_KEY,
            "DODO_EMULATOR_WEBHOOK_SECRET": WEBHOOK_KEY,
            "DODO_EMULATOR_PUBLIC_URL": f"http://127.0.0.1:{self.ports['dodo-emulator']}",
            "DODO_EMULATOR_DEDUCT_INTERVAL_S": "0.5",
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "NOTIFIER_SMTP_PORT": str(self.ports["smtp-sink"]),
            "NOTIFIER_SMTP_HOST": "127.0.0.1",
            "NOTIFIER_SLACK_DEFAULT_WEBHOOK_URL": f"http://127.0.0.1:{self.ports['slack-sink']}/services/T0/B0/X0",
            "NOTIFIER_OPERATOR_SLACK_WEBHOOK_URL": f"http://127.0.0.1:{self.ports['slack-sink']}/services/T0/B0/OPS",
            "GATEWAY_WORKERS": "1",
            "GATEWAY_SPOOL_DIR": str(self.infra.workdir / "spool"),
            "LEDGER_RECONCILE_INTERVAL_S": "2",
            **self.env,
        }

    def _process(self, name: str, argv: list[str], port: int, env: Mapping[str, str] | None = None) -> ManagedProcess:
        return ManagedProcess(
            [sys.executable, *argv], port, env={**self.base_env(), **(env or {})},
            log=self.infra.workdir / f"{name}-{port}.log",
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def start_standins(self) -> None:
        for name in ("mock-upstream", "dodo-emulator", "smtp-sink", "smtp-sink-http", "slack-sink"):
            self.ports.setdefault(name, free_port())
        # Readiness on /healthz: the mock upstream's /v1 routes need the upstream key.
        specs: dict[str, tuple[list[str], dict[str, str]]] = {
            "mock-upstream": (
                ["-m", "tollgate_standins.mock_upstream", "--port", str(self.ports["mock-upstream"])], {}
            ),
            # The emulator takes its port from the environment only (it has no CLI flags).
            "dodo-emulator": (["-m", "tollgate_standins.dodo_emulator"],
                              {"DODO_EMULATOR_PORT": str(self.ports["dodo-emulator"]),
                               "DODO_EMULATOR_LOG_LEVEL": "warning"}),
            "smtp-sink": (["-m", "tollgate_standins.smtp_sink", "--smtp-port", str(self.ports["smtp-sink"]),
                           "--http-port", str(self.ports["smtp-sink-http"])], {}),
            "slack-sink": (["-m", "tollgate_standins.slack_sink", "--port", str(self.ports["slack-sink"])], {}),
        }
        procs = []
        for name, (argv, env) in specs.items():
            port = self.ports["smtp-sink-http"] if name == "smtp-sink" else self.ports[name]
            proc = self._process(name, argv, port, env)
            proc.start(wait=False)
            self.replicas[name] = [Replica(name, proc)]
            procs.append(proc)
        await asyncio.gather(*(wait_http(f"http://127.0.0.1:{p.port}/healthz", p) for p in procs))

    def bootstrap_dodo(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "tollgate_cli.main", "dodo", "bootstrap", "--json",
             "--ledger-url", f"http://127.0.0.1:{self.ports['ledger-lb']}"],
            cwd=REPO, env={**self.base_env()}, capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"bootstrap failed: {out.stdout}\n{out.stderr}")
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    async def start_service(
        self, name: str, *, replicas: int = 1, env: Mapping[str, str] | None = None,
        replica_env: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """`replica_env[i]` is added to replica i's environment (e.g. one gateway behind a fault proxy)."""
        procs = []
        for i in range(replicas):
            port = free_port()
            extra = {**(env or {}), **(replica_env[i] if i < len(replica_env) else {})}
            proc = self._process(name, ["-m", f"tollgate_{name}", "serve", "--port", str(port)], port, extra)
            proc.start(wait=False)
            procs.append(Replica(name, proc))
        self.replicas.setdefault(name, []).extend(procs)
        await asyncio.gather(*(wait_http(f"{r.url}/readyz", r.process, timeout=60) for r in procs))

    async def start_all(
        self, replicas: Mapping[str, int] | None = None,
        replica_env: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
    ) -> None:
        await self.start_standins()
        self.ports.setdefault("ledger-lb", free_port())
        await self.start_service("ledger", replicas=(replicas or {}).get("ledger", 1),
                                 replica_env=(replica_env or {}).get("ledger", ()))
        # The stable ledger address (Dodo's webhook target, the admin API) balances over its replicas.
        balancer = TcpBalancer(self.ports["ledger-lb"], lambda: [r.process.port for r in self.replicas["ledger"]])
        await balancer.start()
        self.balancers["ledger"] = balancer
        await asyncio.to_thread(self.bootstrap_dodo)  # the balancer keeps serving on this loop meanwhile
        for name in ("tier", "metering", "notifier", "gateway"):
            await self.start_service(name, replicas=(replicas or {}).get(name, 1),
                                     replica_env=(replica_env or {}).get(name, ()))

    def stop_all(self) -> None:
        for balancer in self.balancers.values():
            balancer.close()
        for procs in self.replicas.values():
            for replica in procs:
                replica.process.stop()

    async def restart(self, name: str, index: int = 0, *, kill: bool = True) -> None:
        replica = self.replicas[name][index]
        if kill:
            replica.process.kill()
        else:
            replica.process.stop()
        replica.process.start(wait=False)
        await wait_http(f"{replica.url}/readyz" if name in SERVICES else f"{replica.url}/healthz", replica.process,
                        timeout=60)

    # -- talking to it ------------------------------------------------------------------------
    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.ports['ledger-lb']}",
            headers={"Authorization": f"Bearer {self.base_env()['TOLLGATE_ADMIN_TOKEN']}"}, timeout=30,
        )
