"""End-to-end: the console in headless Chromium (Debian's package, driven by Playwright) against
real processes - the ledger (console, webhooks, usage consumer), the gateway, the Dodo emulator
(its hosted checkout page and signed webhooks back to the ledger) and the mock upstream - on a
database of their own. Screenshots of every page go to artifacts/screenshots/ (kept by CI)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dodopayments import AsyncDodoPayments
from playwright.async_api import Browser, Page, async_playwright

from support.servers import (
    REPO,
    Infra,
    ManagedProcess,
    create_database,
    drop_database,
    free_port,
    service_process,
    wait_http,
)
from tollgate_dodo.bootstrap import BootstrapSettings, bootstrap
from tollgate_money import PriceBook
from tollgate_platform import bus
from tollgate_platform.settings import REPO_ROOT

ADMIN_TOKEN = "e2e-admin-token"
DODO_KEY = "dodo-e2e-key"
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Generous limits: the tier service is not part of this stack, and the gateway then applies the
# first tier of this file to everyone.
TIERS = """preset = "e2e"
[[presets.e2e]]
name = "tier-1"
min_spend_usd = "0"
rpm = 600
tpm = 1000000
"""


@dataclasses.dataclass
class Stack:
    ledger_url: str
    gateway_url: str
    dodo_url: str
    database_url: str
    nats_url: str

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.ledger_url}/admin/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=15
        )


@pytest.fixture(scope="module")
async def stack(infra: Infra) -> AsyncIterator[Stack]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    nc = await bus.connect(infra.nats_url, "e2e-provision")
    try:
        await bus.provision(nc.jetstream())
    finally:
        await nc.close()
    workdir = infra.workdir / "e2e"
    workdir.mkdir(exist_ok=True)
    tiers = workdir / "tiers.toml"
    tiers.write_text(TIERS)
    database_url = await create_database()
    ports = {name: free_port() for name in ("dodo", "upstream", "ledger", "gateway")}
    dodo_url, ledger_url = f"http://127.0.0.1:{ports['dodo']}", f"http://127.0.0.1:{ports['ledger']}"
    processes = [
        ManagedProcess(
            [sys.executable, "-m", "tollgate_standins.dodo_emulator"], ports["dodo"],
            env={"DODO_EMULATOR_PORT": str(ports["dodo"]), "DODO_EMULATOR_PUBLIC_URL": dodo_url,
                 "DODO_EMULATOR_DEDUCT_INTERVAL_S": "3600", "DODO_EMULATOR_LOG_LEVEL": "warning"},
            log=workdir / "dodo-emulator.log",
        ),
        ManagedProcess(
            [sys.executable, "-m", "tollgate_standins.mock_upstream", "--port", str(ports["upstream"])],
            ports["upstream"], log=workdir / "mock-upstream.log",
        ),
    ]
    try:
        for proc in processes:
            proc.start()
        await wait_http(f"{dodo_url}/healthz")
        catalogue = workdir / "dodo-catalogue.json"
        client = AsyncDodoPayments(bearer_token=DODO_KEY, base_url=dodo_url, max_retries=0)
        try:
            await bootstrap(client, PriceBook.load(REPO_ROOT / "config" / "pricing.toml"), BootstrapSettings(
                dodo_base_url=dodo_url, dodo_api_key=DODO_KEY, dodo_catalogue_file=catalogue,
                ledger_public_url=ledger_url,
            ))
        finally:
            await client.close()
        db_infra = dataclasses.replace(infra, database_url=database_url)
        common = {
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN, "TOLLGATE_DODO_CATALOGUE_FILE": str(catalogue),
            "TOLLGATE_TIERS_FILE": str(tiers), "LOG_LEVEL": "WARNING",
        }
        ledger_env = {
            **common, "DODO_PAYMENTS_BASE_URL": dodo_url, "DODO_PAYMENTS_API_KEY": DODO_KEY,
            "LEDGER_PUBLIC_BASE_URL": ledger_url, "LEDGER_RUN_RECONCILER": "false",
            "LEDGER_USAGE_BATCH_TIMEOUT_S": "0.02",
            # No notifier in this stack: the alerts page says so instead of failing.
            "LEDGER_CONSOLE_NOTIFIER_URL": f"http://127.0.0.1:{free_port()}",
        }
        gateway_env = {
            **common, "UPSTREAM_BASE_URL": f"http://127.0.0.1:{ports['upstream']}/v1", "GATEWAY_WORKERS": "1",
            "GATEWAY_SPOOL_DIR": str(workdir / "gateway-spool"),
        }
        async with service_process("tollgate_ledger", db_infra, env=ledger_env, port=ports["ledger"]), \
                service_process("tollgate_gateway", db_infra, env=gateway_env, port=ports["gateway"]):
            yield Stack(ledger_url, f"http://127.0.0.1:{ports['gateway']}", dodo_url, database_url, infra.nats_url)
    finally:
        for proc in processes:
            proc.stop()
        await drop_database(database_url)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    SCREENSHOTS.mkdir(parents=True)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.set_default_timeout(15_000)
    tab = await context.new_page()
    try:
        yield tab
    finally:
        await context.close()


async def shot(page: Page, name: str, **kwargs: Any) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True, **kwargs)
    return path
