from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from support.servers import Infra
from tier.helpers import TierService, running_tier


@pytest.fixture(scope="module")
async def tier(infra: Infra) -> AsyncIterator[TierService]:
    """One tier service (default `tollgate` preset) per module; only one runs at a time, as in
    production every replica shares the one durable consumer. Tests use their own customer ids."""
    async with running_tier(infra) as service:
        yield service
