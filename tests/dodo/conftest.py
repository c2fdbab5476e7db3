"""A Dodo emulator for the bootstrap tests (a thread of the test process, reset per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metering.emulator import RunningEmulator, running_emulator


@pytest.fixture(scope="session")
def dodo_emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as running:
        yield running


@pytest.fixture
def emulator(dodo_emulator: RunningEmulator) -> RunningEmulator:
    dodo_emulator.reset()
    return dodo_emulator
