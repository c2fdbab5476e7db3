"""Helpers for the metering tests: the bootstrapped Dodo account, the metering service in-process,
publishing usage."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from metering.emulator import RunningEmulator
from support.servers import AppServer, Infra
from tollgate_contracts import subjects
from tollgate_contracts.events import UsageRecorded
from tollgate_dodo.catalogue import Catalogue
from tollgate_metering.app import create_app
from tollgate_metering.settings import MeteringSettings
from tollgate_platform import bus


@dataclass
class Dodo:
    emulator: RunningEmulator
    catalogue_file: Path
    customers: list[str]

    @property
    def catalogue(self) -> Catalogue:
        catalogue = Catalogue.load(self.catalogue_file)
        assert catalogue is not None
        return catalogue


def metering_settings(infra: Infra, dodo: Dodo, **overrides: Any) -> MeteringSettings:
    options: dict[str, Any] = {
        "nats_url": infra.nats_url,
        "dodo_base_url": dodo.emulator.url,
        "dodo_api_key": "sk_test_metering",
        "dodo_catalogue_file": dodo.catalogue_file,
        "flush_interval_ms": 50,
        "dodo_timeout_s": 2.0,
        "backoff_base_s": 0.05,
        "backoff_max_s": 2.0,
        "nak_delay_max_s": 2.0,
        "lag_poll_s": 0.2,
        "log_level": "WARNING",
    }
    options.update(overrides)
    return MeteringSettings(**options)


@contextlib.asynccontextmanager
async def metering(infra: Infra, dodo: Dodo, **overrides: Any) -> AsyncIterator[AppServer]:
    async with AppServer(create_app(metering_settings(infra, dodo, **overrides))) as server:
        yield server


async def publish(js: JetStreamContext, event: UsageRecorded, headers: dict[str, str] | None = None) -> None:
    await bus.publish_event(
        js, subjects.for_customer(subjects.USAGE_RECORDED, event.customer_id), event, headers=headers
    )
