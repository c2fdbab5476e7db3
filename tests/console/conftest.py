"""The console against a real ledger (in the test loop, real sockets) on a database of its own,
with real NATS, Redis and a Dodo emulator bootstrapped with the real catalogue (four packs)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dodopayments import AsyncDodoPayments

from console.support import ADMIN_TOKEN, Console
from support.servers import AppServer, Infra, create_database, drop_database, free_port
from tollgate_dodo.bootstrap import BootstrapSettings, bootstrap
from tollgate_ledger.app import create_app
from tollgate_ledger.settings import LedgerSettings
from tollgate_money import PriceBook
from tollgate_platform import bus
from tollgate_platform.settings import REPO_ROOT
from tollgate_standins.dodo_emulator import EmulatorSettings
from tollgate_standins.dodo_emulator import create_app as emulator_create_app
from tollgate_standins.dodo_emulator.settings import DEV_WEBHOOK_SECRET


@dataclasses.dataclass
class Stack:
    console: Console
    ledger_app: object
    settings: LedgerSettings
    infra: Infra
    emulator_url: str
    notifier_port: int

    @property
    def pool(self):  # type: ignore[no-untyped-def]
        return self.ledger_app.state.ledger.pool  # type: ignore[attr-defined]

    @property
    def ledger(self):  # type: ignore[no-untyped-def]
        return self.ledger_app.state.ledger  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def console_stack(infra: Infra, workdir: Path) -> AsyncIterator[Stack]:
    nc = await bus.connect(infra.nats_url, "console-tests-provision")
    try:
        await bus.provision(nc.jetstream())
    finally:
        await nc.close()
    database_url = await create_database()
    ledger_port, notifier_port = free_port(), free_port()
    emulator_app = emulator_create_app(EmulatorSettings(
        port=0, public_url="http://127.0.0.1", webhook_secret=DEV_WEBHOOK_SECRET, deduct_interval_s=3600.0,
        log_level="warning",
    ))
    try:
        async with AppServer(emulator_app) as emulator:
            catalogue = workdir / "console-catalogue.json"
            client = AsyncDodoPayments(bearer_token="dodo-test-key", base_url=emulator.url, max_retries=0)
            try:
                await bootstrap(client, PriceBook.load(REPO_ROOT / "config" / "pricing.toml"), BootstrapSettings(
                    dodo_base_url=emulator.url, dodo_api_key="dodo-test-key", dodo_catalogue_file=catalogue,
                    ledger_public_url=f"http://127.0.0.1:{ledger_port}",
                ))
            finally:
                await client.close()
            settings = LedgerSettings(
                database_url=database_url, nats_url=infra.nats_url, redis_url=infra.redis_url,
                dodo_base_url=emulator.url, dodo_api_key="dodo-test-key", dodo_webhook_key=DEV_WEBHOOK_SECRET,
                admin_token=ADMIN_TOKEN, dodo_catalogue_file=catalogue, consume_usage=False, run_reconciler=False,
                outbox_poll_interval_s=0.2, public_base_url=f"http://127.0.0.1:{ledger_port}", log_level="WARNING",
            )
            with pytest.MonkeyPatch.context() as env:
                # Console settings are read when the app is created.
                env.setenv("LEDGER_CONSOLE_NOTIFIER_URL", f"http://127.0.0.1:{notifier_port}")
                app = create_app(settings)
            async with AppServer(app, port=ledger_port) as server:
                yield Stack(Console(server.url), app, settings, infra, emulator.url, notifier_port)
    finally:
        await drop_database(database_url)
