"""Usage extraction (OpenAI's two usage shapes), the cost rule, and the usage event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tollgate_money import NANOS_PER_USD, ModelPrice, TokenUsage


@dataclass(slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    def tokens(self) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=min(self.cached_input_tokens, self.input_tokens),
            reasoning_tokens=min(self.reasoning_tokens, self.output_tokens),
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    details = usage.get(group)
    return _int(details.get(name)) if isinstance(details, dict) else 0


def from_openai(usage: Any) -> Usage | None:
    """Chat/completions/embeddings (`prompt_tokens`...) or Responses (`input_tokens`...)."""
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:
        return Usage(
            input_tokens=_int(usage.get("input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            cached_input_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
            reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"),
        )
    if "prompt_tokens" in usage:
        return Usage(
            input_tokens=_int(usage.get("prompt_tokens")),
            output_tokens=_int(usage.get("completion_tokens")),
            cached_input_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
            reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
        )
    return None


def to_openai(usage: Usage, responses_api: bool) -> dict[str, Any]:
    """A usage object in the caller's shape, for the usage the gateway had to count itself."""
    if responses_api:
        return {
            "input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_input_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


@dataclass(frozen=True, slots=True)
class Charge:
    cost: int  # charged to credits
    list_price: int  # the tokens at list price (plan caps, meters)
    overrun: int  # list price the hold could not cover (not charged; see docs/gateway.md)


def charge(price: ModelPrice, usage: Usage, mode: str, hold: int, failed: bool) -> Charge:
    if failed:
        return Charge(0, 0, 0)
    list_price = price.cost(usage.tokens())
    if mode != "credits":
        return Charge(0, list_price, 0)
    # Never charge past the reservation: a customer is never run on credit, not even when an
    # upstream ignores max_tokens on a non-streamed call.
    cost = min(list_price, hold)
    return Charge(cost, list_price, list_price - cost)


def usd_exact(nanos: int) -> str:
    """Exact decimal dollars, at least two decimals: 1500 -> "0.0000015", 5*10**9 -> "5.00"."""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    decimals = f"{frac:09d}".rstrip("0").ljust(2, "0")
    return f"{'-' if nanos < 0 else ''}{whole}.{decimals}"
