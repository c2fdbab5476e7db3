"""Fixtures for the ledger tests: one ledger app per session for the HTTP tests (webhooks, admin),
and a fresh one per test where the usage consumer must bind to freshly provisioned streams."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dodopayments import AsyncDodoPayments

from ledger.support import WEBHOOK_SECRET, DodoLedger, RunningLedger, settings_for, write_catalogue
from support.servers import AppServer, Infra, create_database, drop_database, free_port
from tollgate_dodo.bootstrap import BootstrapSettings, bootstrap
from tollgate_ledger.app import create_app
from tollgate_money import PriceBook
from tollgate_platform import bus
from tollgate_platform.settings import REPO_ROOT
from tollgate_standins.dodo_emulator import EmulatorSettings
from tollgate_standins.dodo_emulator import create_app as emulator_create_app


@pytest.fixture(scope="session")
def catalogue_file(workdir: Path) -> Path:
    path = workdir / "ledger-catalogue.json"
    write_catalogue(path)
    return path


@pytest.fixture(scope="session")
async def provisioned(infra: Infra) -> AsyncIterator[Infra]:
    """The session's servers with streams and consumers provisioned, and a database of the
    ledger's own: other suites create stand-in `ledger` tables in the shared one."""
    nc = await bus.connect(infra.nats_url, "ledger-tests-provision")
    try:
        await bus.provision(nc.jetstream())
    finally:
        await nc.close()
    database_url = await create_database()
    try:
        yield dataclasses.replace(infra, database_url=database_url)
    finally:
        await drop_database(database_url)


@pytest.fixture(scope="session")
async def ledger(provisioned: Infra, catalogue_file: Path) -> AsyncIterator[RunningLedger]:
    """The ledger's HTTP side and outbox relay (no usage consumer), shared by the session."""
    settings = settings_for(provisioned, catalogue_file)
    async with AppServer(create_app(settings)) as server:
        yield RunningLedger(server, settings)


@pytest.fixture
async def consuming_ledger(
    provisioned: Infra, clean_bus: Infra, clean_redis: Infra, catalogue_file: Path
) -> AsyncIterator[RunningLedger]:
    """A ledger that also runs the usage consumer, bound to freshly provisioned, empty streams."""
    settings = settings_for(provisioned, catalogue_file, consume_usage=True, usage_batch_timeout_s=0.02)
    async with AppServer(create_app(settings)) as server:
        yield RunningLedger(server, settings)


@pytest.fixture
async def dodo_ledger(provisioned: Infra, clean_redis: Infra, tmp_path: Path) -> AsyncIterator[DodoLedger]:
    """A Dodo emulator bootstrapped with the real catalogue (packs, credit entitlement, webhook
    endpoint at the ledger), and a ledger that talks to it through the official SDK."""
    ledger_port = free_port()
    emulator_app = emulator_create_app(EmulatorSettings(
        port=0, public_url="http://127.0.0.1", webhook_secret=WEBHOOK_SECRET, deduct_interval_s=3600.0,
        log_level="warning",
    ))
    async with AppServer(emulator_app) as emulator:
        catalogue = tmp_path / "dodo-catalogue.json"
        client = AsyncDodoPayments(bearer_token="dodo-test-key", base_url=emulator.url, max_retries=0)
        try:
            await bootstrap(client, PriceBook.load(REPO_ROOT / "config" / "pricing.toml"), BootstrapSettings(
                dodo_base_url=emulator.url, dodo_api_key="dodo-test-key", dodo_catalogue_file=catalogue,
                ledger_public_url=f"http://127.0.0.1:{ledger_port}",
            ))
        finally:
            await client.close()
        settings = settings_for(provisioned, catalogue, dodo_base_url=emulator.url, dodo_api_key="dodo-test-key")
        async with AppServer(create_app(settings), port=ledger_port) as server:
            yield DodoLedger(server, settings, emulator.url, emulator_app)
