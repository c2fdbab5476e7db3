"""Spend tiers: lifetime net spend (nanos) -> rate limits. Read by the tier service and the console."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from tollgate_money.units import usd_to_nanos


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    min_spend: int  # nanos of lifetime net spend
    rpm: int
    tpm: int
    min_account_age_days: int = 0


@dataclass(frozen=True, slots=True)
class TierTable:
    preset: str
    tiers: tuple[Tier, ...]  # ascending by min_spend

    def for_spend(self, spend: int, account_age_days: int) -> Tier:
        chosen = self.tiers[0]
        for tier in self.tiers:
            if spend >= tier.min_spend and account_age_days >= tier.min_account_age_days:
                chosen = tier
        return chosen

    def next_after(self, tier: Tier) -> Tier | None:
        names = [t.name for t in self.tiers]
        index = names.index(tier.name)
        return self.tiers[index + 1] if index + 1 < len(self.tiers) else None

    def by_name(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    @classmethod
    def load(cls, path: str | Path, preset: str | None = None) -> TierTable:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        chosen = preset or str(raw.get("preset", "tollgate"))
        rows = raw["presets"][chosen]
        tiers = tuple(
            sorted(
                (
                    Tier(
                        name=str(row["name"]),
                        min_spend=usd_to_nanos(Decimal(str(row["min_spend_usd"]))),
                        rpm=int(row["rpm"]),
                        tpm=int(row["tpm"]),
                        min_account_age_days=int(row.get("min_account_age_days", 0)),
                    )
                    for row in rows
                ),
                key=lambda t: t.min_spend,
            )
        )
        return cls(preset=chosen, tiers=tiers)
