"""Load generator for the metering benchmark: publishes `usage.recorded` events to JetStream the
way the gateway does (Nats-Msg-Id = request id, PubAck awaited through a window of async
publishes), either as fast as it can (preload) or paced at a target rate. Each event's
occurred_at is its publish time, so the lag measured downstream starts at publish.

Writes a JSON summary and a timeline [(seconds since start, events published)] to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import nats

from tollgate_contracts.events import UsageRecorded
from tollgate_money import PriceBook, TokenUsage

MODELS = ("gpt-4o", "gpt-4o-mini", "o1")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", required=True)
    parser.add_argument("--customers", required=True, help="JSON file: list of Dodo customer ids")
    parser.add_argument("--pricing", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    book = PriceBook.load(args.pricing)
    customers: list[str] = json.loads(Path(args.customers).read_text())  # noqa: ASYNC240 - before any I/O loop
    rng = random.Random(args.prefix)
    nc = await nats.connect(args.nats, max_reconnect_attempts=-1)
    js = nc.jetstream(publish_async_max_pending=4000)
    template = _template(book)
    timeline: list[tuple[float, int]] = []
    start = time.monotonic()
    tick = 0.01
    sent = 0
    while sent < args.count:
        now = time.monotonic() - start
        due = args.count if args.rate <= 0 else min(args.count, int((now + tick) * args.rate))
        stamp = datetime.now(UTC)
        while sent < due:
            customer = customers[rng.randrange(len(customers))]
            model = MODELS[sent % len(MODELS)]
            rid = f"{args.prefix}-{sent}"
            event = template[model](rid, customer, rng.randint(50, 4000), rng.randint(1, 800), stamp)
            await js.publish_async(f"usage.recorded.t_{customer}", event, headers={"Nats-Msg-Id": rid})
            sent += 1
            if args.rate <= 0 and sent % 1000 == 0:
                timeline.append((time.monotonic() - start, sent))
                stamp = datetime.now(UTC)
        timeline.append((time.monotonic() - start, sent))
        if args.rate > 0:
            await asyncio.sleep(max(0.0, (now + tick) - (time.monotonic() - start)))
    await asyncio.wait_for(js.publish_async_completed(), timeout=60)
    elapsed = time.monotonic() - start
    await nc.close()
    summary = json.dumps({"count": sent, "seconds": elapsed, "timeline": timeline})
    Path(args.out).write_text(summary)  # noqa: ASYNC240 - after the run


Make = Callable[[str, str, int, int, datetime], bytes]


def _template(book: PriceBook) -> dict[str, Make]:
    def build(model: str) -> Make:
        price = book.models[model]

        def make(rid: str, customer: str, inp: int, out: int, stamp: datetime) -> bytes:
            cost = price.cost(TokenUsage(inp, out))
            return UsageRecorded(
                event_id=rid, customer_id=f"t_{customer}", dodo_customer_id=customer, key_id="bench",
                endpoint="/v1/chat/completions", model=model, requested_model=model, input_tokens=inp,
                output_tokens=out, cost_nanos=cost, list_price_nanos=cost, price_book_version=book.version,
                started_at=stamp, occurred_at=stamp,
            ).model_dump_json().encode()

        return make

    return {m: build(m) for m in MODELS}


if __name__ == "__main__":
    asyncio.run(main())
