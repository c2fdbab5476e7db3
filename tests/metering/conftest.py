"""Fixtures for the metering tests: a Dodo emulator (thread of this process) bootstrapped with the
Tollgate catalogue and a few Dodo customers, and a JetStream context on clean streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from metering.emulator import RunningEmulator, dodo_customers, run_bootstrap, running_emulator
from metering.harness import Dodo
from support.servers import Infra
from tollgate_platform import bus


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The 100k-event chaos profile runs only when asked for (-m chaos, `make test-chaos`), even
    under a bare `pytest`; the small profile is part of the normal suite."""
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="chaos profile: run with -m chaos (make test-chaos)")
    for item in items:
        if item.get_closest_marker("chaos") and here in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as running:
        yield running


@pytest.fixture
async def dodo(emulator: RunningEmulator, tmp_path: Path) -> Dodo:
    """A fresh emulator account, bootstrapped (weighted meters), with three Dodo customers."""
    emulator.reset()
    catalogue = tmp_path / "dodo-catalogue.json"
    await run_bootstrap(emulator, catalogue)
    return Dodo(emulator, catalogue, await dodo_customers(emulator, 3))


@pytest.fixture
async def nats_js(clean_bus: Infra) -> AsyncIterator[JetStreamContext]:
    nc = await bus.connect(clean_bus.nats_url, "metering-tests")
    try:
        yield nc.jetstream()
    finally:
        await nc.close()
