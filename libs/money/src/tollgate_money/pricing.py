"""The price book: model -> per-1M-token prices, and the one rounding rule for a request's cost.

Rounding rule (the same in the gateway, the ledger and the Dodo meter set-up): a request's cost
is the exact sum of tokens x price over its token classes, in nanos, rounded UP to a whole nano
once per request. With prices given to at most 3 decimals per 1M tokens every term is already a
whole nano, so for the default book the cost is exact and the ceiling never applies.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from tollgate_money.units import TOKENS_PER_PRICE_UNIT, usd_to_nanos


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # part of input_tokens, priced at the cached rate
    reasoning_tokens: int = 0  # part of output_tokens (OpenAI counts them there), priced as output

    def __post_init__(self) -> None:
        if min(self.input_tokens, self.output_tokens, self.cached_input_tokens, self.reasoning_tokens) < 0:
            raise ValueError("token counts cannot be negative")
        if self.cached_input_tokens > self.input_tokens:
            raise ValueError("cached input tokens are part of input tokens")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    input_per_m: int  # nanos per 1M tokens
    cached_input_per_m: int
    output_per_m: int
    context_window: int
    max_output_tokens: int

    def cost(self, usage: TokenUsage) -> int:
        uncached = usage.input_tokens - usage.cached_input_tokens
        scaled = (
            uncached * self.input_per_m
            + usage.cached_input_tokens * self.cached_input_per_m
            + usage.output_tokens * self.output_per_m
        )
        return -(-scaled // TOKENS_PER_PRICE_UNIT)  # ceiling division, integers only

    def worst_case(self, input_tokens: int, max_output_tokens: int) -> int:
        """Upper bound of a request's cost before it runs (no cache discount assumed)."""
        return self.cost(TokenUsage(input_tokens=input_tokens, output_tokens=max_output_tokens))

    def output_tokens_affordable(self, budget_nanos: int, input_tokens: int) -> int:
        """Largest max_tokens whose worst case fits the budget (0 when not even the prompt fits)."""
        left = budget_nanos * TOKENS_PER_PRICE_UNIT - input_tokens * self.input_per_m
        if left < 0:
            return 0
        if self.output_per_m == 0:
            return self.max_output_tokens
        return min(left // self.output_per_m, self.max_output_tokens)


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    models: frozenset[str]
    soft_cap: int | None = None  # nanos of list price per period (whole plan)
    soft_cap_per_seat: int | None = None  # nanos per seat per period (Team)
    daily_hard_cap: int | None = None  # nanos per UTC day (Free)
    fallback: dict[str, str] = field(default_factory=dict)

    def cap_for(self, seats: int) -> int | None:
        if self.soft_cap_per_seat is not None:
            return self.soft_cap_per_seat * max(seats, 1)
        return self.soft_cap


@dataclass(frozen=True, slots=True)
class PriceBook:
    version: str
    models: dict[str, ModelPrice]
    plans: dict[str, Plan]

    def price(self, model: str) -> ModelPrice | None:
        return self.models.get(model)

    @classmethod
    def load(cls, path: str | Path) -> PriceBook:
        with open(path, "rb") as fh:
            return cls.from_dict(tomllib.load(fh))

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> PriceBook:
        models_raw = raw.get("models", {})
        plans_raw = raw.get("plans", {})
        assert isinstance(models_raw, dict) and isinstance(plans_raw, dict)
        models = {name: _model(name, spec) for name, spec in models_raw.items()}
        plans = {name: _plan(name, spec) for name, spec in plans_raw.items()}
        for plan in plans.values():
            for model in plan.models | set(plan.fallback.values()):
                if model not in models:
                    raise ValueError(f"plan {plan.name} names unpriced model {model}")
        return cls(version=str(raw["version"]), models=models, plans=plans)


def _per_m(value: object) -> int:
    if isinstance(value, float):
        raise ValueError("write prices as strings, e.g. \"0.15\"; floats are not exact")
    return usd_to_nanos(Decimal(str(value)))


def _model(name: str, spec: dict[str, object]) -> ModelPrice:
    input_per_m = _per_m(spec["input"])
    return ModelPrice(
        model=name,
        input_per_m=input_per_m,
        cached_input_per_m=_per_m(spec.get("cached_input", spec["input"])),
        output_per_m=_per_m(spec.get("output", "0")),
        context_window=int(str(spec.get("context_window", 128000))),
        max_output_tokens=int(str(spec.get("max_output_tokens", 4096))),
    )


def _optional_usd(spec: dict[str, object], key: str) -> int | None:
    return usd_to_nanos(Decimal(str(spec[key]))) if key in spec else None


def _plan(name: str, spec: dict[str, object]) -> Plan:
    models = spec.get("models", [])
    fallback = spec.get("fallback", {})
    assert isinstance(models, list) and isinstance(fallback, dict)
    return Plan(
        name=name,
        models=frozenset(str(m) for m in models),
        soft_cap=_optional_usd(spec, "soft_cap_usd"),
        soft_cap_per_seat=_optional_usd(spec, "soft_cap_usd_per_seat"),
        daily_hard_cap=_optional_usd(spec, "daily_hard_cap_usd"),
        fallback={str(k): str(v) for k, v in fallback.items()},
    )
