"""Money units. Tollgate keeps every amount as an integer number of nano-dollars ("nanos").

Why nanos: per-token prices are sub-cent ($0.15 per 1M tokens is 150 nanos per token), so cents
cannot express one token's cost; a signed 64-bit BIGINT of nanos still holds $9.2 billion.
People and Dodo see cents (1 Dodo credit = 1 cent = 10,000,000 nanos).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

NANOS_PER_USD = 1_000_000_000
NANOS_PER_CENT = 10_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are quoted per 1M tokens


def usd_to_nanos(usd: Decimal | str | int) -> int:
    """Exact conversion; refuses amounts finer than a nano-dollar rather than rounding silently."""
    value = Decimal(usd) * NANOS_PER_USD
    if value != value.to_integral_value():
        raise ValueError(f"{usd} USD is not a whole number of nano-dollars")
    return int(value)


def cents_to_nanos(cents: int) -> int:
    return cents * NANOS_PER_CENT


def nanos_to_cents_floor(nanos: int) -> int:
    """Whole cents a customer can still spend: rounds toward minus infinity, never up."""
    return nanos // NANOS_PER_CENT


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


def format_usd(nanos: int) -> str:
    """Cents shown to people, rounded down for balances (never promise money that is not there)."""
    cents = Decimal(nanos) / NANOS_PER_CENT
    rounded = cents.to_integral_value(rounding=ROUND_FLOOR if nanos >= 0 else ROUND_CEILING)
    sign = "-" if rounded < 0 else ""
    whole, frac = divmod(abs(int(rounded)), 100)
    return f"{sign}${whole:,}.{frac:02d}"


def credits_to_nanos(credits: Decimal | str) -> int:
    """Dodo credit balances are decimal strings of cents; convert exactly (fractions of a nano floor)."""
    return int((Decimal(credits) * NANOS_PER_CENT).to_integral_value(rounding=ROUND_FLOOR))
