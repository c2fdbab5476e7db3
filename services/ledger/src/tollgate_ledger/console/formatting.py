"""How amounts, tokens and times are written on the console's pages."""

from __future__ import annotations

from datetime import UTC, datetime

from tollgate_money import NANOS_PER_CENT, NANOS_PER_USD, format_usd


def usd(nanos: int | None) -> str:
    """Balances and totals: whole cents, rounded down (the money rule for what people see)."""
    return "—" if nanos is None else format_usd(int(nanos))


def usd_exact(nanos: int | None) -> str:
    """One request's cost: often a fraction of a cent, so every significant decimal is shown."""
    if nanos is None:
        return "—"
    whole, frac = divmod(abs(int(nanos)), NANOS_PER_USD)
    decimals = f"{frac:09d}".rstrip("0").ljust(2, "0")
    sign = "-" if nanos < 0 else ""
    return f"{sign}${whole:,}.{decimals}"


def usd_total(nanos: int | None) -> str:
    """Sums of many requests: cents (rounded down) once there is at least a cent, else exact."""
    if nanos is None:
        return "—"
    return format_usd(int(nanos)) if abs(nanos) >= NANOS_PER_CENT else usd_exact(nanos)


def signed_usd(nanos: int | None) -> str:
    """Ledger movements are exact, so they are shown exactly, with their sign."""
    if nanos is None:
        return "—"
    return ("+" if nanos > 0 else "") + usd_exact(nanos)


def tokens(value: int | None) -> str:
    return "—" if value is None else f"{int(value):,}"


def compact_tokens(value: int) -> str:
    """Axis labels: 1.2M, 350k."""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.1f}".rstrip("0").rstrip(".") + suffix
    return str(value)


def compact_usd(nanos: int) -> str:
    """Axis labels and legends: whole dollars once large, cents, or exact below a cent."""
    if abs(nanos) >= 10 * NANOS_PER_USD:
        return f"{'-' if nanos < 0 else ''}${abs(nanos) // NANOS_PER_USD:,}"
    return usd_total(nanos)


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def limit(value: int | None) -> str:
    """RPM/TPM: 0 means unlimited to the gateway."""
    if value is None:
        return "—"
    return "unlimited" if int(value) == 0 else f"{int(value):,}"


FILTERS = {
    "usd": usd,
    "usd_exact": usd_exact,
    "usd_total": usd_total,
    "signed_usd": signed_usd,
    "tokens": tokens,
    "when": when,
    "iso": iso,
    "limit": limit,
}
