"""A month of made-up usage for the demo customer, so a fresh install's charts show something.

It goes to `ledger.console_synthetic_usage`, never to the ledger's entries: it is not money, it
was never metered by Dodo (so as entries reconciliation would count it as in flight forever),
and it must not move the demo balance. Deterministic per (customer, day, n): importing twice
inserts nothing new. Costs use the real price book, so the numbers look like real usage."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg

from tollgate_money import PriceBook, TokenUsage

# model -> (share of requests, typical input tokens, typical output tokens)
MIX: dict[str, tuple[float, int, int]] = {
    "gpt-4o-mini": (0.62, 900, 350),
    "gpt-4o": (0.25, 1400, 500),
    "o1": (0.05, 2200, 1800),
    "text-embedding-3-small": (0.08, 600, 0),
}


@dataclass(frozen=True, slots=True)
class SyntheticRequest:
    request_id: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    occurred_at: datetime


def generate(
    customer_id: str, book: PriceBook, *, days: int, requests_per_day: int, today: date | None = None
) -> list[SyntheticRequest]:
    now = datetime.now(UTC)
    today = today or now.date()
    models = [m for m in MIX if m in book.models]
    weights = [MIX[m][0] for m in models]
    out: list[SyntheticRequest] = []
    for back in range(days - 1, -1, -1):
        day = today - timedelta(days=back)
        rng = random.Random(f"{customer_id}:{day.isoformat()}")  # same day, same requests
        # Weekdays busier than weekends, and a slow ramp-up over the month.
        volume = requests_per_day * (0.45 if day.weekday() >= 5 else 1.0) * (0.6 + 0.4 * (days - back) / days)
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        # Today only up to now: a request list with times in the future would look broken.
        span = max(1, min(86_400, int((now - midnight).total_seconds())))
        for n in range(max(1, round(volume * rng.uniform(0.8, 1.2)))):
            model = rng.choices(models, weights)[0]
            _, typical_in, typical_out = MIX[model]
            input_tokens = max(1, int(rng.lognormvariate(0, 0.5) * typical_in))
            output_tokens = int(rng.lognormvariate(0, 0.6) * typical_out) if typical_out else 0
            price = book.models[model]
            cost = price.cost(TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens))
            at = midnight + timedelta(seconds=rng.randrange(span))
            out.append(SyntheticRequest(
                f"syn_{day.strftime('%Y%m%d')}_{n:04d}", model, input_tokens, output_tokens, cost, at
            ))
    return out


async def store(pool: asyncpg.Pool, customer_id: str, requests: list[SyntheticRequest]) -> int:
    rows = await pool.fetch(
        "INSERT INTO ledger.console_synthetic_usage (customer_id, request_id, model, input_tokens, output_tokens, "
        "cost_nanos, occurred_at) SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::int[], "
        "$6::bigint[], $7::timestamptz[]) ON CONFLICT (customer_id, request_id) DO NOTHING RETURNING request_id",
        customer_id, [r.request_id for r in requests], [r.model for r in requests],
        [r.input_tokens for r in requests], [r.output_tokens for r in requests],
        [r.cost_nanos for r in requests], [r.occurred_at for r in requests],
    )
    return len(rows)
