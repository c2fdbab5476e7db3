from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollgate_money import PriceBook, TokenUsage, format_usd, usd_to_nanos
from tollgate_platform.settings import REPO_ROOT

BOOK = PriceBook.load(REPO_ROOT / "config" / "pricing.toml")


def test_gpt4o_mini_prices_are_exact_per_token() -> None:
    price = BOOK.price("gpt-4o-mini")
    assert price is not None
    # $0.15 and $0.60 per 1M tokens: 150 and 600 nano-dollars per token, no rounding anywhere.
    assert price.cost(TokenUsage(input_tokens=1_000_000)) == usd_to_nanos("0.15")
    assert price.cost(TokenUsage(input_tokens=1, output_tokens=1)) == 750
    cached = TokenUsage(input_tokens=10, cached_input_tokens=4, output_tokens=20)
    assert price.cost(cached) == 6 * 150 + 4 * 75 + 20 * 600


def test_float_prices_are_refused() -> None:
    with pytest.raises(ValueError, match="strings"):
        PriceBook.from_dict({"version": "x", "models": {"m": {"input": 0.1, "output": "1"}}})


def test_balances_shown_to_people_never_round_up() -> None:
    assert format_usd(usd_to_nanos(Decimal("4.999999999"))) == "$4.99"
    assert format_usd(usd_to_nanos(5)) == "$5.00"


@given(
    model=st.sampled_from(sorted(BOOK.models)),
    a=st.integers(0, 10**7), b=st.integers(0, 10**7), out=st.integers(0, 10**6),
)
def test_cost_is_monotonic_and_never_undercharges(model: str, a: int, b: int, out: int) -> None:
    price = BOOK.models[model]
    lo, hi = sorted((a, b))
    assert price.cost(TokenUsage(lo, out)) <= price.cost(TokenUsage(hi, out))
    exact = Decimal(lo * price.input_per_m + out * price.output_per_m) / 10**6
    charged = price.cost(TokenUsage(lo, out))
    assert exact <= charged < exact + 1


@given(budget=st.integers(0, 10**10), prompt=st.integers(0, 10**5))
def test_affordable_output_tokens_fit_the_budget(budget: int, prompt: int) -> None:
    price = BOOK.models["gpt-4o"]
    out = price.output_tokens_affordable(budget, prompt)
    if out > 0:
        assert price.worst_case(prompt, out) <= budget
    if out < price.max_output_tokens:
        assert price.worst_case(prompt, out + 1) > budget
