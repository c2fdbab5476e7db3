"""Fixtures for the Dodo emulator contract tests.

The emulator runs as a real uvicorn server on a free loopback port; tests talk to it only
through the official `dodopayments` SDK (strict response validation on), plus plain HTTP for
the checkout page and the emulator's own `/_emulator` control API.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from dodo_emulator_kit import API_KEY, Receiver, RunningEmulator, World, run_emulator, start_receiver
from dodopayments import AsyncDodoPayments, DodoPayments


@pytest.fixture(scope="session")
def emulator() -> Iterator[RunningEmulator]:
    # Deductions only run when a test asks (POST /_emulator/deduct), so that arithmetic is exact
    # per step; one test covers the background loop with its own emulator.
    with run_emulator() as running:
        yield running


@pytest.fixture(scope="session")
def control(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
def _reset(control: httpx.Client) -> None:
    control.post("/_emulator/reset").raise_for_status()


@pytest.fixture
def client(emulator: RunningEmulator) -> DodoPayments:
    return emulator.sdk()


@pytest.fixture
def aclient(emulator: RunningEmulator) -> AsyncDodoPayments:
    return AsyncDodoPayments(bearer_token=API_KEY, base_url=emulator.base_url, max_retries=0,
                             _strict_response_validation=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with start_receiver() as running:
        yield running


@pytest.fixture
def world(client: DodoPayments, control: httpx.Client) -> World:
    return World(client, control)
