"""Regression guard for bringing the whole system up on one database (as tests/support/system.py
and every single-database deployment do): each service keeps its own migration history, so the
services migrate one fresh database in any order, and a second run applies nothing. (Before the
fix in tollgate_platform.db, the second service to migrate failed with DuplicateTable on yoyo's
shared `_yoyo_log` and did not start.)"""

from __future__ import annotations

import pytest

from support.servers import create_database, drop_database
from tollgate_ledger import MIGRATIONS_DIR as LEDGER_MIGRATIONS
from tollgate_notifier.app import MIGRATIONS_DIR as NOTIFIER_MIGRATIONS
from tollgate_platform.db import migrate_async
from tollgate_tier.app import MIGRATIONS_DIR as TIER_MIGRATIONS


@pytest.mark.parametrize("order", [("ledger", "tier", "notifier"), ("notifier", "ledger", "tier")])
async def test_every_service_migrates_one_database_in_any_order(order: tuple[str, ...]) -> None:
    dirs = {"ledger": LEDGER_MIGRATIONS, "tier": TIER_MIGRATIONS, "notifier": NOTIFIER_MIGRATIONS}
    url = await create_database()
    try:
        for service in order:
            await migrate_async(url, dirs[service], service)
        for service in order:  # and again: nothing left to apply, nothing fails
            assert await migrate_async(url, dirs[service], service) == 0
    finally:
        await drop_database(url)
