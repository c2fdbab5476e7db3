"""OpenAI's own table (preset "openai"): a tier needs both the spend and the account age, counted
from the first payment; an account that grows old enough is promoted without any new payment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from support.servers import Infra, create_database, drop_database, eventually
from tier.helpers import TierService, new_customer, running_tier


@pytest.fixture(scope="module")
async def tier(infra: Infra) -> AsyncIterator[TierService]:
    """Its own database: the table in force is per deployment, and this one differs."""
    database = await create_database()
    try:
        async with running_tier(infra, database_url=database, tier_preset="openai") as service:
            yield service
    finally:
        await drop_database(database)


async def test_spend_without_account_age_is_not_enough(tier: TierService) -> None:
    veteran, newcomer = new_customer(), new_customer()
    await tier.pay(veteran, 60_00, occurred_at=datetime.now(UTC) - timedelta(days=10))
    await tier.pay(newcomer, 60_00)
    await tier.settled()

    veteran_row, newcomer_row = await tier.hot_limits(veteran), await tier.hot_limits(newcomer)
    assert veteran_row is not None and (veteran_row["tier"], veteran_row["rpm"]) == ("tier-2", 5000)
    assert newcomer_row is not None and (newcomer_row["tier"], newcomer_row["rpm"]) == ("tier-1", 500)
    async with tier.admin() as http:
        shown = (await http.get(f"/admin/v1/tiers/{newcomer}")).json()
    assert shown["next_tier"]["tier"] == "tier-2"
    assert (shown["next_tier"]["spend_to_go_nanos"], shown["next_tier"]["days_to_go"]) == (0, 7)


async def test_the_first_payment_date_counts_not_the_latest(tier: TierService) -> None:
    customer = new_customer()
    await tier.pay(customer, 5_00, occurred_at=datetime.now(UTC) - timedelta(days=20))
    await tier.settled()
    await tier.pay(customer, 100_00)  # today: the account is still 20 days old
    row = await eventually(lambda: _tier(tier, customer, "tier-3"))
    assert row["rpm"] == 5000 and row["tpm"] == 800_000


async def test_an_account_growing_old_enough_is_promoted_by_the_sweep(tier: TierService) -> None:
    customer = new_customer()
    await tier.load_hot_state(customer, rpm=500, tpm=30_000)
    # seven days old in a couple of seconds
    await tier.pay(customer, 60_00, occurred_at=datetime.now(UTC) - timedelta(days=7) + timedelta(seconds=2))
    await tier.settled()
    row = await tier.hot_limits(customer)
    assert row is not None and row["tier"] == "tier-1"

    await eventually(lambda: _tier(tier, customer, "tier-2"))
    snap = await eventually(lambda: _hot(tier, customer, "5000"))
    assert snap["tier"] == "tier-2" and snap["tpm"] == "450000"
    await tier.settled()
    events = await tier.tier_events(customer)
    assert [(e.old_tier, e.new_tier, e.cause) for e in events] == [("tier-1", "tier-2", "account-age")]


async def _tier(tier: TierService, customer: str, name: str) -> object:
    row = await tier.hot_limits(customer)
    return row if row is not None and row["tier"] == name else None


async def _hot(tier: TierService, customer: str, rpm: str) -> dict[str, str] | None:
    snap = await tier.hot.snapshot(customer)
    return snap if snap.get("rpm") == rpm else None
