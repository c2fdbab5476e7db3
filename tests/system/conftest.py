"""The whole money path in one process: Dodo emulator, mock upstream, ledger (with its usage
consumer), tier and gateway on real sockets, with the session's NATS and Redis and a database of
their own."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dodopayments import AsyncDodoPayments

from ledger.support import WEBHOOK_SECRET, settings_for
from support.servers import AppServer, Infra, create_database, drop_database, free_port
from tollgate_dodo.bootstrap import BootstrapSettings, bootstrap
from tollgate_dodo.catalogue import Catalogue
from tollgate_gateway.app import create_app as create_gateway
from tollgate_gateway.settings import GatewaySettings
from tollgate_ledger.app import create_app as create_ledger
from tollgate_money import PriceBook
from tollgate_platform import bus
from tollgate_platform.settings import REPO_ROOT
from tollgate_standins.dodo_emulator import EmulatorSettings
from tollgate_standins.dodo_emulator import create_app as create_emulator
from tollgate_standins.mock_upstream import MockUpstreamSettings
from tollgate_standins.mock_upstream import create_app as create_mock_upstream
from tollgate_tier.app import create_app as create_tier
from tollgate_tier.settings import TierSettings

BOOK = PriceBook.load(REPO_ROOT / "config" / "pricing.toml")
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def system_db(infra: Infra) -> AsyncIterator[Infra]:
    """Streams provisioned and a fresh database: the services' real migrations, nothing else."""
    nc = await bus.connect(infra.nats_url, "system-tests")
    try:
        await bus.provision(nc.jetstream())
    finally:
        await nc.close()
    url = await create_database()
    try:
        yield dataclasses.replace(infra, database_url=url)
    finally:
        await drop_database(url)


@pytest.fixture
def tiers_file() -> Path:
    """The spend-tier table the gateway and the tier service use; a test module may override it."""
    return REPO_ROOT / "config" / "tiers.toml"


@dataclass
class Stack:
    ledger_url: str
    gateway_url: str
    emulator_url: str
    database_url: str
    catalogue: Catalogue
    nats_url: str


@pytest.fixture
async def stack(
    clean_bus: Infra, clean_redis: Infra, system_db: Infra, tmp_path: Path, tiers_file: Path
) -> AsyncIterator[Stack]:
    ledger_port = free_port()
    emulator = create_emulator(EmulatorSettings(
        port=0, public_url="http://127.0.0.1", webhook_secret=WEBHOOK_SECRET, deduct_interval_s=3600.0,
        log_level="warning",
    ))
    async with AppServer(emulator) as dodo, AppServer(create_mock_upstream(MockUpstreamSettings())) as upstream:
        catalogue = tmp_path / "dodo-catalogue.json"
        client = AsyncDodoPayments(bearer_token="dodo-test-key", base_url=dodo.url, max_retries=0)
        try:
            await bootstrap(client, BOOK, BootstrapSettings(
                dodo_base_url=dodo.url, dodo_api_key="dodo-test-key", dodo_catalogue_file=catalogue,
                ledger_public_url=f"http://127.0.0.1:{ledger_port}",
            ))
        finally:
            await client.close()
        ledger_settings = settings_for(
            system_db, catalogue, dodo_base_url=dodo.url, dodo_api_key="dodo-test-key",
            admin_token=ADMIN_TOKEN, consume_usage=True, usage_batch_timeout_s=0.02,
        )
        gateway_settings = GatewaySettings(
            tiers_file=tiers_file,
            nats_url=system_db.nats_url, redis_url=system_db.redis_url, database_url=system_db.database_url,
            upstream_base_url=upstream.url + "/v1", spool_dir=tmp_path / "spool", log_level="WARNING",
        )
        async with (
            AppServer(create_ledger(ledger_settings), port=ledger_port) as ledger,
            AppServer(create_gateway(gateway_settings)) as gateway,
            AppServer(create_tier(TierSettings(
                nats_url=system_db.nats_url, redis_url=system_db.redis_url, database_url=system_db.database_url,
                admin_token=ADMIN_TOKEN, relay_poll_s=0.2, log_level="WARNING", tiers_file=tiers_file,
            ))),
        ):
            found = Catalogue.load(catalogue)
            assert found is not None
            yield Stack(ledger.url, gateway.url, dodo.url, system_db.database_url, found, system_db.nats_url)


