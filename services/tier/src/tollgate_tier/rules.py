"""Which tier a customer is in: the operator's pin if there is one, otherwise what lifetime net
spend and account age earn in the table in force. Pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tollgate_money import Tier, TierTable


def account_age_days(first_payment_at: datetime | None, now: datetime) -> int:
    """Whole days since the first payment; an account that never paid is 0 days old."""
    if first_payment_at is None:
        return 0
    return max((now - first_payment_at).days, 0)


def earned_tier(table: TierTable, spend_nanos: int, first_payment_at: datetime | None, now: datetime) -> Tier:
    return table.for_spend(spend_nanos, account_age_days(first_payment_at, now))


def effective_tier(
    table: TierTable, spend_nanos: int, first_payment_at: datetime | None, pinned: str | None, now: datetime
) -> Tier:
    """A pin to a tier that is no longer in the table is ignored rather than enforced as nothing."""
    if pinned is not None:
        tier = table.by_name(pinned)
        if tier is not None:
            return tier
    return earned_tier(table, spend_nanos, first_payment_at, now)


@dataclass(frozen=True, slots=True)
class NextTier:
    tier: Tier
    spend_to_go_nanos: int  # 0 when only account age is missing
    days_to_go: int


def next_tier(
    table: TierTable, current: Tier, spend_nanos: int, first_payment_at: datetime | None, now: datetime
) -> NextTier | None:
    following = table.next_after(current)
    if following is None:
        return None
    age = account_age_days(first_payment_at, now)
    return NextTier(
        tier=following,
        spend_to_go_nanos=max(following.min_spend - spend_nanos, 0),
        days_to_go=max(following.min_account_age_days - age, 0),
    )
