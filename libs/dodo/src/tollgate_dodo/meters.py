"""The Dodo meter layout that bootstrap creates and metering feeds, and the exact arithmetic that
turns one usage record into meter readings.

Units: 1 Dodo credit = 1 cent = 10^7 nanos. A meter linked to the credit entitlement deducts
`units / meter_units_per_credit` credits, so a meter unit is worth 10^7 / units_per_credit nanos.

Strategies (Catalogue.meter_strategy):
- "weighted": one meter pair `llm.input_tokens` / `llm.output_tokens` priced at the reference
  model (GPT-4o: 4,000 input and 1,000 output tokens per cent). Each event carries reference-
  equivalent tokens, so the credits Dodo deducts equal the usage's `cost_nanos` exactly.
- "per_model_meters": `llm.<model>.input_tokens`, `llm.<model>.cached_input_tokens` (only when the
  cached price differs) and `llm.<model>.output_tokens`, each with the model's own units per credit;
  events carry raw token counts.
- "token_meters": the meter pair with raw token counts, every model billed at the reference price
  (what Dodo's TypeScript LLM blueprint does; right only for a one-model catalogue).
Usage paid by a plan (billing_mode "subscription" or "free") goes to `llm.subscription.*`, a pair
of meters that no product links to the credit entitlement: metered, never credit-deducted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from tollgate_dodo.catalogue import MeterStrategy
from tollgate_money import NANOS_PER_CENT, ModelPrice, PriceBook, TokenUsage
from tollgate_money.units import TOKENS_PER_PRICE_UNIT

TOKENS_PROPERTY = "tokens"  # the metadata key every Tollgate meter sums
INPUT_TOKENS = "llm.input_tokens"
OUTPUT_TOKENS = "llm.output_tokens"
SUBSCRIPTION_INPUT_TOKENS = "llm.subscription.input_tokens"
SUBSCRIPTION_OUTPUT_TOKENS = "llm.subscription.output_tokens"

Category = Literal["input", "cached_input", "output"]

# Dodo takes decimal strings with up to 12 places (price_per_unit); metadata numbers travel as JSON
# numbers, which stay exact through a double only up to 15 significant digits.
MAX_PLACES = 12
MAX_DIGITS = 15


class MeterError(ValueError):
    """A usage record that cannot be metered as configured (permanent: dead-letter it)."""


@dataclass(frozen=True, slots=True)
class MeterSpec:
    event_name: str
    name: str
    description: str
    measurement_unit: str
    price_per_m: int | None  # nanos per 1M units; None: not linked to the credit entitlement
    model: str | None = None
    category: Category | None = None

    @property
    def units_per_credit(self) -> Decimal | None:
        return units_per_credit(self.price_per_m) if self.price_per_m else None

    @property
    def price_per_unit_cents(self) -> Decimal | None:
        """List price of one unit in cents (Dodo's price_per_unit), when it fits 12 places."""
        if not self.price_per_m:
            return None
        cents_denominator = NANOS_PER_CENT * TOKENS_PER_PRICE_UNIT
        if (self.price_per_m * 10**MAX_PLACES) % cents_denominator:
            return None
        return to_decimal(self.price_per_m, cents_denominator, max_digits=None)


@dataclass(frozen=True, slots=True)
class MeterReading:
    event_name: str
    units: Decimal
    raw_tokens: int


def model_event(model: str, category: Category) -> str:
    return f"llm.{model}.{category}_tokens"


def units_per_credit(price_per_m_nanos: int) -> Decimal:
    """Tokens per cent at a per-1M price: 10^7 nanos x 10^6 / price. Rounded DOWN to 12 places when
    it does not terminate, so Dodo never deducts less than the ledger (costs round up)."""
    if price_per_m_nanos <= 0:
        raise MeterError("a free token class has no units per credit")
    return to_decimal(NANOS_PER_CENT * TOKENS_PER_PRICE_UNIT, price_per_m_nanos, round_up=False, max_digits=None)


def to_decimal(
    numerator: int, denominator: int, *, round_up: bool = True, max_digits: int | None = MAX_DIGITS
) -> Decimal:
    """numerator / denominator (both >= 0) as a Decimal: exact when it terminates within 12 places
    (and `max_digits` significant digits); otherwise rounded, by default up (the direction of the
    one rounding rule), to fit. Integer arithmetic only: this runs twice per usage event."""
    whole, remainder = divmod(numerator, denominator)
    if not remainder and (max_digits is None or len(str(whole)) <= max_digits):
        return Decimal(whole)
    places = MAX_PLACES
    if max_digits is not None:
        integer_digits = len(str(whole)) if whole else 0
        places = max(0, min(MAX_PLACES, max_digits - integer_digits))
    scaled, remainder = divmod(numerator * 10**places, denominator)
    if remainder and round_up:
        scaled += 1
    while places and scaled % 10 == 0:
        scaled //= 10
        places -= 1
    return Decimal(scaled).scaleb(-places)


def plan_meters(strategy: MeterStrategy, book: PriceBook, reference_model: str) -> list[MeterSpec]:
    """Every meter bootstrap creates for a strategy (credit-linked ones carry units per credit)."""
    reference = book.price(reference_model)
    if reference is None:
        raise MeterError(f"reference model {reference_model} is not in the price book")
    specs = [
        MeterSpec(SUBSCRIPTION_INPUT_TOKENS, "LLM input tokens (plans)",
                  "Input tokens of usage paid by a subscription plan; not deducted from credits.",
                  "tokens", None, category="input"),
        MeterSpec(SUBSCRIPTION_OUTPUT_TOKENS, "LLM output tokens (plans)",
                  "Output tokens of usage paid by a subscription plan; not deducted from credits.",
                  "tokens", None, category="output"),
    ]
    if strategy == "per_model_meters":
        for model in sorted(book.models):
            specs.extend(_model_specs(book.models[model]))
        return specs
    unit = f"{reference_model}-equivalent tokens" if strategy == "weighted" else "tokens"
    specs += [
        MeterSpec(INPUT_TOKENS, "LLM input tokens", f"Input tokens at {reference_model} input price.", unit,
                  reference.input_per_m, category="input"),
        MeterSpec(OUTPUT_TOKENS, "LLM output tokens", f"Output tokens at {reference_model} output price.", unit,
                  reference.output_per_m, category="output"),
    ]
    return specs


@functools.lru_cache(maxsize=1024)
def _model_specs(price: ModelPrice) -> tuple[MeterSpec, ...]:
    classes: list[tuple[Category, int]] = [("input", price.input_per_m)]
    if price.cached_input_per_m != price.input_per_m:
        classes.append(("cached_input", price.cached_input_per_m))
    classes.append(("output", price.output_per_m))
    return tuple(
        MeterSpec(model_event(price.model, cls), f"{price.model} {cls.replace('_', ' ')} tokens",
                  f"{cls.replace('_', ' ').capitalize()} tokens of {price.model}.", "tokens",
                  per_m, model=price.model, category=cls)
        for cls, per_m in classes
        if per_m > 0
    )


@dataclass(frozen=True, slots=True)
class Reference:
    """The reference prices the credit-linked meter pair was set up with (from the catalogue)."""

    input_per_m: int
    output_per_m: int


def readings(
    strategy: MeterStrategy,
    *,
    price: ModelPrice,
    usage: TokenUsage,
    billing_mode: str,
    cost_nanos: int,
    reference: Reference | None,
    meter_names: frozenset[str] | None = None,
) -> list[MeterReading]:
    """The meter readings of one usage record: a fixed set per (strategy, mode, model), zero-token
    readings included, so every usage always produces the same number of Dodo events."""
    if billing_mode != "credits":
        return [
            MeterReading(SUBSCRIPTION_INPUT_TOKENS, Decimal(usage.input_tokens), usage.input_tokens),
            MeterReading(SUBSCRIPTION_OUTPUT_TOKENS, Decimal(usage.output_tokens), usage.output_tokens),
        ]
    if strategy == "token_meters":
        return [
            MeterReading(INPUT_TOKENS, Decimal(usage.input_tokens), usage.input_tokens),
            MeterReading(OUTPUT_TOKENS, Decimal(usage.output_tokens), usage.output_tokens),
        ]
    if strategy == "weighted":
        if reference is None:
            raise MeterError("the catalogue has no reference prices for weighted meters")
        return weighted_readings(price, usage, cost_nanos, reference)
    separate_cached = price.cached_input_per_m != price.input_per_m
    counts: dict[Category, int] = {
        "input": usage.input_tokens - (usage.cached_input_tokens if separate_cached else 0),
        "cached_input": usage.cached_input_tokens,
        "output": usage.output_tokens,
    }
    result: list[MeterReading] = []
    for spec in _model_specs(price):
        if meter_names is not None and spec.event_name not in meter_names:
            raise MeterError(f"model {price.model} has no Dodo meter {spec.event_name}; re-run tollgate dodo bootstrap")
        tokens = counts[spec.category or "input"]
        result.append(MeterReading(spec.event_name, Decimal(tokens), tokens))
    return result


def weighted_readings(
    price: ModelPrice, usage: TokenUsage, cost_nanos: int, reference: Reference
) -> list[MeterReading]:
    """Reference-equivalent tokens whose value is exactly the usage's cost.

    input units  = (uncached x input_per_m + cached x cached_per_m) / ref_input_per_m
    output units = (cost_nanos x 10^6 - input part in scaled nanos) / ref_output_per_m
    The output reading takes the remainder, so the request's single round-up to a whole nano (the
    cost the ledger charged) lands on it and Σ units x nanos-per-unit = cost_nanos.
    """
    uncached = usage.input_tokens - usage.cached_input_tokens
    scaled_input = uncached * price.input_per_m + usage.cached_input_tokens * price.cached_input_per_m
    scaled_total = cost_nanos * TOKENS_PER_PRICE_UNIT
    scaled_input = min(scaled_input, scaled_total)
    input_units = to_decimal(scaled_input, reference.input_per_m)
    output_units = to_decimal(scaled_total - scaled_input, reference.output_per_m)
    return [
        MeterReading(INPUT_TOKENS, input_units, usage.input_tokens),
        MeterReading(OUTPUT_TOKENS, output_units, usage.output_tokens),
    ]
