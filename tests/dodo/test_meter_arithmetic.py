"""The meter arithmetic Dodo's credit deduction relies on: weighted readings are worth exactly
what the ledger charged, per-model readings carry raw tokens at each model's units per credit."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate_dodo.meters import (
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    Reference,
    model_event,
    plan_meters,
    readings,
    units_per_credit,
    weighted_readings,
)
from tollgate_metering.mapping import json_number
from tollgate_money import NANOS_PER_CENT, ModelPrice, PriceBook, TokenUsage
from tollgate_platform.settings import REPO_ROOT

BOOK = PriceBook.load(REPO_ROOT / "config" / "pricing.toml")
GPT4O = BOOK.models["gpt-4o"]
REFERENCE = Reference(GPT4O.input_per_m, GPT4O.output_per_m)
# What one unit of each credit-linked meter is worth: 10^7 nanos per cent / units per cent.
NANOS_PER_UNIT = {INPUT_TOKENS: Decimal(NANOS_PER_CENT) / 4000, OUTPUT_TOKENS: Decimal(NANOS_PER_CENT) / 1000}

# $0.0001 steps: finer than a nano per token, so the per-request round-up really happens.
prices = st.integers(min_value=0, max_value=2_000_000).map(lambda units: units * 100_000)


@settings(max_examples=300, deadline=None)
@given(
    input_per_m=prices, cached_per_m=prices, output_per_m=prices,
    input_tokens=st.integers(0, 2_000_000), cached=st.integers(0, 2_000_000), output_tokens=st.integers(0, 500_000),
)
def test_weighted_readings_are_worth_exactly_the_charged_cost(
    input_per_m: int, cached_per_m: int, output_per_m: int, input_tokens: int, cached: int, output_tokens: int
) -> None:
    price = ModelPrice("m", input_per_m, cached_per_m, output_per_m, 128_000, 4096)
    usage = TokenUsage(input_tokens, output_tokens, min(cached, input_tokens))
    cost = price.cost(usage)
    found = weighted_readings(price, usage, cost, REFERENCE)
    assert sum(r.units * NANOS_PER_UNIT[r.event_name] for r in found) == cost
    for reading in found:
        assert Decimal(repr(json_number(reading.units))) == reading.units  # survives JSON as a number


def test_weighted_readings_of_the_default_book() -> None:
    mini = weighted_readings(BOOK.models["gpt-4o-mini"], TokenUsage(1000, 500), 450_000, REFERENCE)
    assert [(r.event_name, r.units, r.raw_tokens) for r in mini] == [
        (INPUT_TOKENS, Decimal(60), 1000), (OUTPUT_TOKENS, Decimal(30), 500)
    ]
    # Cached input is worth half of GPT-4o's input price: 1000 cached tokens = 500 units.
    cached = weighted_readings(GPT4O, TokenUsage(1000, 0, 1000), 1_250_000, REFERENCE)
    assert cached[0].units == 500


def test_units_per_credit_follow_the_price_book() -> None:
    assert units_per_credit(GPT4O.input_per_m) == 4000 and units_per_credit(GPT4O.output_per_m) == 1000
    assert units_per_credit(BOOK.models["gpt-4o-mini"].input_per_m) == Decimal("66666.666666666666")
    specs = {s.event_name: s for s in plan_meters("weighted", BOOK, "gpt-4o")}
    assert specs[INPUT_TOKENS].price_per_unit_cents == Decimal("0.00025")
    assert specs["llm.subscription.input_tokens"].units_per_credit is None


def test_per_model_readings_split_cached_input_when_it_is_priced_apart() -> None:
    usage = TokenUsage(input_tokens=1000, output_tokens=10, cached_input_tokens=300)
    found = readings("per_model_meters", price=GPT4O, usage=usage, billing_mode="credits", cost_nanos=0, reference=None)
    assert {r.event_name: r.units for r in found} == {
        model_event("gpt-4o", "input"): 700, model_event("gpt-4o", "cached_input"): 300,
        model_event("gpt-4o", "output"): 10,
    }
    embedding = BOOK.models["text-embedding-3-small"]
    found = readings("per_model_meters", price=embedding, usage=TokenUsage(50, 0), billing_mode="credits",
                     cost_nanos=0, reference=None)
    assert [(r.event_name, r.units) for r in found] == [(model_event("text-embedding-3-small", "input"), 50)]


def test_plan_usage_is_metered_raw_on_its_own_pair_in_every_strategy() -> None:
    usage = TokenUsage(1234, 56)
    for strategy in ("weighted", "per_model_meters", "token_meters"):
        found = readings(strategy, price=BOOK.models["o1"], usage=usage, billing_mode="subscription",  # type: ignore[arg-type]
                         cost_nanos=0, reference=REFERENCE)
        assert [(r.event_name, r.units) for r in found] == [
            ("llm.subscription.input_tokens", 1234), ("llm.subscription.output_tokens", 56)
        ]
