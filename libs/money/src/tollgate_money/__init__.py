"""Exact money arithmetic for Tollgate: integer nano-dollars, the price book and spend tiers."""

from tollgate_money.pricing import ModelPrice, Plan, PriceBook, TokenUsage
from tollgate_money.tiers import Tier, TierTable
from tollgate_money.units import (
    NANOS_PER_CENT,
    NANOS_PER_USD,
    cents_to_nanos,
    credits_to_nanos,
    format_usd,
    nanos_to_cents_floor,
    nanos_to_usd,
    usd_to_nanos,
)

__all__ = [
    "NANOS_PER_CENT",
    "NANOS_PER_USD",
    "ModelPrice",
    "Plan",
    "PriceBook",
    "Tier",
    "TierTable",
    "TokenUsage",
    "cents_to_nanos",
    "credits_to_nanos",
    "format_usd",
    "nanos_to_cents_floor",
    "nanos_to_usd",
    "usd_to_nanos",
]
