"""The plans of the price book (`[plans.*]` in config/pricing.toml) in the shape the ledger keeps
them (`ledger.plan_definitions`, written at start-up by plan_upkeep) and the hot state reads them:
the `hot_account` view computes caps from them in SQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tollgate_money import Plan, PriceBook
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

FREE = "free"
NONE = ""  # credits only: the customer never had a plan


def is_paid(plan: str | None) -> bool:
    return bool(plan) and plan != FREE


def encode_models(models: frozenset[str] | set[str]) -> str:
    """`,a,b,`: admit.lua looks a model up as `,<model>,`."""
    return "," + ",".join(sorted(models)) + "," if models else ""


def encode_fallback(fallback: dict[str, str]) -> str:
    """`,a=b,c=d,`: admit.lua matches `,<model>=<fallback>,`."""
    return "," + ",".join(f"{k}={v}" for k, v in sorted(fallback.items())) + "," if fallback else ""


@dataclass(frozen=True, slots=True)
class Definition:
    plan: str
    models: str
    fallback: str
    soft_cap: int | None
    soft_cap_per_seat: int | None
    daily_hard_cap: int | None

    @classmethod
    def of(cls, plan: Plan) -> Definition:
        return cls(plan.name, encode_models(plan.models), encode_fallback(plan.fallback), plan.soft_cap,
                   plan.soft_cap_per_seat, plan.daily_hard_cap)

    def row(self) -> tuple[str, str, str, int | None, int | None, int | None]:
        return (self.plan, self.models, self.fallback, self.soft_cap, self.soft_cap_per_seat, self.daily_hard_cap)


def load_book(path: Path) -> PriceBook | None:
    try:
        return PriceBook.load(path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("price book not readable; plan definitions left as stored", path=str(path),
                    error=type(exc).__name__)
        return None
