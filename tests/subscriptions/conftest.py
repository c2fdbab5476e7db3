"""Subscriptions end to end: the Dodo emulator (official SDK, signed webhooks), the ledger with
its usage consumer, the mock upstream, and a REAL gateway process, all on a database of this
package's own (the gateway suite creates stand-in ledger tables in the session's shared one).

Everything is started once for the package and stopped after it; each test uses its own
customers, so tests never see each other's state."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dodopayments import AsyncDodoPayments

from ledger.support import ADMIN_TOKEN, WEBHOOK_SECRET
from subscriptions.support import World, write_pricing, write_tiers
from support.servers import AppServer, Infra, create_database, drop_database, free_port, reset_bus, service_process
from tollgate_dodo.bootstrap import BootstrapSettings, bootstrap
from tollgate_ledger.app import create_app as create_ledger
from tollgate_ledger.settings import LedgerSettings
from tollgate_money import PriceBook
from tollgate_standins.dodo_emulator import EmulatorSettings
from tollgate_standins.dodo_emulator import create_app as create_emulator
from tollgate_standins.mock_upstream import MockUpstreamSettings
from tollgate_standins.mock_upstream import create_app as create_mock_upstream

DODO_KEY = "dodo-subscriptions-test-key"


@pytest.fixture(scope="package")
async def subs_infra(infra: Infra) -> AsyncIterator[Infra]:
    """Streams and consumers provisioned and emptied once (as clean_bus does), and a fresh
    database, for everything in this package."""
    await reset_bus(infra.nats_url)
    database_url = await create_database()
    try:
        # Its own Redis database too: the session's other gateways (default settings) would hold
        # the republisher's lock for most of every minute.
        yield dataclasses.replace(infra, database_url=database_url, redis_db=1)
    finally:
        await drop_database(database_url)


@pytest.fixture(scope="package")
async def world(subs_infra: Infra, workdir: Path) -> AsyncIterator[World]:
    pricing = write_pricing(workdir / "subscriptions-pricing.toml")
    tiers = write_tiers(workdir / "subscriptions-tiers.toml")
    catalogue = workdir / "subscriptions-catalogue.json"
    ledger_port = free_port()
    emulator_app = create_emulator(EmulatorSettings(
        port=0, public_url="http://127.0.0.1", webhook_secret=WEBHOOK_SECRET, deduct_interval_s=3600.0,
        log_level="warning",
    ))
    async with AppServer(emulator_app) as emulator, AppServer(
        create_mock_upstream(MockUpstreamSettings(log_size=1000))
    ) as upstream:
        client = AsyncDodoPayments(bearer_token=DODO_KEY, base_url=emulator.url, max_retries=0)
        try:
            await bootstrap(client, PriceBook.load(pricing), BootstrapSettings(
                dodo_base_url=emulator.url, dodo_api_key=DODO_KEY, dodo_catalogue_file=catalogue,
                ledger_public_url=f"http://127.0.0.1:{ledger_port}",
            ))
        finally:
            await client.close()
        settings = LedgerSettings(
            database_url=subs_infra.database_url, nats_url=subs_infra.nats_url, redis_url=subs_infra.redis_url,
            dodo_base_url=emulator.url, dodo_api_key=DODO_KEY, dodo_webhook_key=WEBHOOK_SECRET,
            admin_token=ADMIN_TOKEN, dodo_catalogue_file=catalogue, pricing_file=pricing,
            consume_usage=True, usage_batch_timeout_s=0.02, run_reconciler=False, outbox_poll_interval_s=0.2,
            plan_sweep_interval_s=0.2, log_json=True, log_level="WARNING",
        )
        async with AppServer(create_ledger(settings), port=ledger_port) as ledger:
            env = {
                "UPSTREAM_BASE_URL": upstream.url + "/v1",
                "UPSTREAM_API_KEY": "sk-upstream-subscriptions",
                "TOLLGATE_PRICING_FILE": str(pricing),
                "TOLLGATE_TIERS_FILE": str(tiers),
                "GATEWAY_WORKERS": "1",
                "GATEWAY_SPOOL_DIR": str(workdir / "subscriptions-gateway-spool"),
                "GATEWAY_REPUBLISH_AFTER_S": "2",
                "GATEWAY_REPUBLISH_INTERVAL_S": "0.5",
                "LOG_LEVEL": "WARNING",
            }
            async with service_process("tollgate_gateway", subs_infra, env=env) as gateway:
                world = World(subs_infra, settings, ledger, emulator.url, upstream.url,
                              f"http://127.0.0.1:{gateway.port}", PriceBook.load(pricing))
                try:
                    yield world
                finally:
                    await world.close()
