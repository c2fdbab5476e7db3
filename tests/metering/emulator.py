"""The Dodo emulator in a thread of the test process (own event loop, real sockets), plus the
shared Tollgate-side set-up: bootstrap, Dodo customers, usage events."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from dodopayments import AsyncDodoPayments

from support.threaded_server import ThreadedServer
from tollgate_contracts.events import UsageRecorded
from tollgate_dodo.bootstrap import BootstrapReport, BootstrapSettings, bootstrap
from tollgate_dodo.catalogue import MeterStrategy
from tollgate_money import PriceBook, TokenUsage
from tollgate_platform.settings import REPO_ROOT
from tollgate_standins.dodo_emulator import EmulatorSettings, create_app
from tollgate_standins.dodo_emulator.runtime import Emulator

API_KEY = "sk_test_metering"
BOOK = PriceBook.load(REPO_ROOT / "config" / "pricing.toml")


class RunningEmulator(ThreadedServer):
    def __init__(self, **overrides: Any) -> None:
        options: dict[str, Any] = {"port": 0, "deduct_interval_s": 3600.0, "log_level": "warning"}
        options.update(overrides)
        super().__init__(create_app(EmulatorSettings(**options)), graceful_shutdown_s=1)

    @property
    def emu(self) -> Emulator:
        emu: Emulator = self.app.state.emu
        return emu

    def start(self) -> RunningEmulator:
        super().start()
        return self

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}/_emulator{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self.control("POST", "/reset")

    def faults(self, *rules: dict[str, Any], seed: int = 7) -> None:
        self.control("PUT", "/faults", json={"seed": seed, "endpoints": list(rules)})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/stats")
        return result

    def events(self) -> list[dict[str, Any]]:
        """A snapshot of every stored event (read from the emulator's state; retried if a request
        thread is writing at that very moment)."""
        for _ in range(50):
            with contextlib.suppress(RuntimeError):
                return [dict(e) for e in list(self.emu.state.events.values())]
            time.sleep(0.01)
        raise RuntimeError("could not snapshot events")

    def event_log_length(self) -> int:
        return len(self.emu.state.event_log)

    def sdk(self) -> AsyncDodoPayments:
        return AsyncDodoPayments(bearer_token=API_KEY, base_url=self.url, max_retries=0)


@contextlib.contextmanager
def running_emulator(**overrides: Any) -> Iterator[RunningEmulator]:
    emulator = RunningEmulator(**overrides).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def bootstrap_settings(
    emulator: RunningEmulator, catalogue: Path, strategy: MeterStrategy = "weighted"
) -> BootstrapSettings:
    return BootstrapSettings(
        dodo_base_url=emulator.url, dodo_api_key=API_KEY, dodo_catalogue_file=catalogue, meter_strategy=strategy,
        ledger_public_url="http://127.0.0.1:9/ledger",
    )


async def run_bootstrap(
    emulator: RunningEmulator, catalogue: Path, strategy: MeterStrategy = "weighted"
) -> BootstrapReport:
    client = emulator.sdk()
    try:
        return await bootstrap(client, BOOK, bootstrap_settings(emulator, catalogue, strategy))
    finally:
        await client.close()


async def dodo_customers(emulator: RunningEmulator, count: int) -> list[str]:
    client = emulator.sdk()
    try:
        return [
            (await client.customers.create(email=f"c{i}@example.com", name=f"Customer {i}")).customer_id
            for i in range(count)
        ]
    finally:
        await client.close()


def usage(
    request_id: str,
    customer: str,
    dodo_customer: str | None,
    *,
    model: str = "gpt-4o",
    input_tokens: int = 1000,
    output_tokens: int = 200,
    cached_input_tokens: int = 0,
    billing_mode: str = "credits",
    occurred_at: datetime | None = None,
) -> UsageRecorded:
    price = BOOK.price(model)
    cost = price.cost(TokenUsage(input_tokens, output_tokens, cached_input_tokens)) if price else 0
    now = occurred_at or datetime.now(UTC)
    return UsageRecorded(
        event_id=request_id, customer_id=customer, dodo_customer_id=dodo_customer, key_id="key_1",
        endpoint="/v1/chat/completions", model=model, requested_model=model, input_tokens=input_tokens,
        cached_input_tokens=cached_input_tokens, output_tokens=output_tokens,
        cost_nanos=cost if billing_mode == "credits" else 0, list_price_nanos=cost,
        price_book_version=BOOK.version, billing_mode=billing_mode,  # type: ignore[arg-type]
        plan="plus" if billing_mode == "subscription" else None, started_at=now, occurred_at=now,
    )
