"""UTC clock helpers and calendar arithmetic for billing intervals."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    # Dodo's examples carry microseconds and a `Z` suffix; keep one format everywhere.
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    return iso(utcnow())


def parse_dt(value: str | datetime) -> datetime:
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def add_interval(dt: datetime, count: int, interval: str) -> datetime:
    if interval == "Day":
        return dt + timedelta(days=count)
    if interval == "Week":
        return dt + timedelta(weeks=count)
    months = count * (12 if interval == "Year" else 1)
    month_index = dt.month - 1 + months
    year = dt.year + month_index // 12
    month = month_index % 12 + 1
    # Clamp the day so that Jan 31 + 1 month lands on the last day of February.
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return dt.replace(year=year, month=month, day=day)
