"""Load generator for the metering benchmark: publishes `usage.recorded` events to JetStream the
way the gateway's publisher does (services/gateway/src/tollgate_gateway/publisher.py): each event
a JetStream publish with the gateway's headers (Nats-Msg-Id = request id, Content-Type,
traceparent), a reply subject per event on one ack subscription, many publishes per socket write,
and a bounded window of unacknowledged ones. Either as fast as it can (preload) or paced at a
target rate. Each event's occurred_at is its publish time, so the lag measured downstream starts
at publish.

It is a stand-in for the gateway sharing the benchmark's two cores, so it is kept cheap: payloads
are rendered from a template (checked byte for byte against `UsageRecorded.model_dump_json` at
start), publishes are written as raw HPUB commands and PubAcks read raw (tollgate_metering.wire's
client). What reaches NATS is what the gateway sends. A PubAck that reports an error, or none
within 5 s, means the event is published again (same Nats-Msg-Id: a duplicate is harmless).

Writes a JSON summary and a timeline [(seconds since start, events published)] to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop

from tollgate_contracts.events import UsageRecorded
from tollgate_metering.wire import connect
from tollgate_money import PriceBook, TokenUsage

MODELS = ("gpt-4o", "gpt-4o-mini", "o1")
WINDOW = 20_000  # unacknowledged publishes at most (the gateway's max_unacked)
ACK_TIMEOUT_S = 5.0


def _stamp(when: datetime) -> str:
    # pydantic's JSON form of an aware UTC datetime
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when.microsecond else when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Stamps:
    """Distinct publish times, like the gateway's (one per request): the k-th event of a write is
    stamped with the write's time plus k microseconds, formatted without strftime per event."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.base = datetime.now(UTC)
        self.prefix = self.base.strftime("%Y-%m-%dT%H:%M:%S.")
        self.micro = self.base.microsecond

    def __call__(self, k: int) -> str:
        micro = self.micro + k
        if 0 < micro < 1_000_000:
            return f"{self.prefix}{micro:06d}Z"
        return _stamp(self.base + timedelta(microseconds=k))


class Renderer:
    """UsageRecorded JSON from a template; identical to model_dump_json for these values."""

    def __init__(self, book: PriceBook) -> None:
        self.book = book
        self.prices = {m: (book.models[m].input_per_m, book.models[m].output_per_m) for m in MODELS}

    def render(self, rid: str, customer: str, model: str, inp: int, out: int, stamp: str) -> bytes:
        input_per_m, output_per_m = self.prices[model]
        cost = -(-(inp * input_per_m + out * output_per_m) // 1_000_000)  # ModelPrice.cost, nothing cached
        return (
            f'{{"schema_version":1,"occurred_at":"{stamp}","event_id":"{rid}","customer_id":"t_{customer}",'
            f'"dodo_customer_id":"{customer}","key_id":"bench","endpoint":"/v1/chat/completions",'
            f'"model":"{model}","requested_model":"{model}","input_tokens":{inp},"cached_input_tokens":0,'
            f'"output_tokens":{out},"reasoning_tokens":0,"cost_nanos":{cost},"list_price_nanos":{cost},'
            f'"price_book_version":"{self.book.version}","billing_mode":"credits","plan":null,'
            f'"estimated":false,"status":"ok","started_at":"{stamp}"}}'
        ).encode()

    def check(self, rid: str, customer: str, model: str, inp: int, out: int, when: datetime) -> None:
        cost = self.book.models[model].cost(TokenUsage(inp, out))
        expected = UsageRecorded(
            event_id=rid, customer_id=f"t_{customer}", dodo_customer_id=customer, key_id="bench",
            endpoint="/v1/chat/completions", model=model, requested_model=model, input_tokens=inp,
            output_tokens=out, cost_nanos=cost, list_price_nanos=cost, price_book_version=self.book.version,
            started_at=when, occurred_at=when,
        ).model_dump_json().encode()
        got = self.render(rid, customer, model, inp, out, _stamp(when))
        if got != expected:
            raise SystemExit(f"template drifted from UsageRecorded:\n{got!r}\n{expected!r}")


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

    renderer = Renderer(PriceBook.load(args.pricing))
    customers: list[str] = json.loads(Path(args.customers).read_text())  # noqa: ASYNC240 - before any I/O loop
    rng = random.Random(args.prefix)
    now = datetime.now(UTC)
    for i, model in enumerate(MODELS):
        renderer.check(f"check-{i}", customers[0], model, 100 + i, 7, now)
        renderer.check(f"check-{i}", customers[0], model, 100 + i, 7, now.replace(microsecond=0))
        for _ in range(200):
            renderer.check("c", customers[-1], model, rng.randint(50, 4000), rng.randint(1, 800), now)

    nc = await connect(args.nats, "bench-publisher")
    inbox = nc.new_inbox() + "."
    inbox_b = inbox.encode()
    # token -> (command, sent at); the command is kept to publish it again if need be
    unacked: dict[bytes, tuple[bytes, float]] = {}
    errors = 0
    room = asyncio.Event()
    room.set()
    drained = asyncio.Event()

    def on_ack(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        nonlocal errors
        token = subject[len(inbox_b):]
        if b'"error"' in data or (headers is not None and headers[9:12] == b"503"):
            errors += 1
            return  # left unacked: the resend loop publishes it again
        if unacked.pop(token, None) is not None and len(unacked) < WINDOW:
            room.set()
            if not unacked:
                drained.set()

    sub = await nc.subscribe(inbox + "*", pending_msgs_limit=-1, pending_bytes_limit=-1)
    nc.route_raw(sub._id, on_ack)

    async def resend() -> None:
        while True:
            await asyncio.sleep(1.0)
            late = time.monotonic() - ACK_TIMEOUT_S
            again = [(t, c) for t, (c, sent) in list(unacked.items()) if sent < late]
            for token, command in again:
                unacked[token] = (command, time.monotonic())
            if again:
                await nc.send_raw(b"".join(c for _, c in again))

    resender = asyncio.create_task(resend())
    timeline: list[tuple[float, int]] = []
    stamps = Stamps()
    random_ = rng.random
    n_customers = len(customers)
    cpu_start = time.process_time()  # publishing only, not the imports
    start = time.monotonic()
    tick = 0.01
    sent = 0
    while sent < args.count:
        now_s = time.monotonic() - start
        due = args.count if args.rate <= 0 else min(args.count, int((now_s + tick) * args.rate))
        stamps.reset()
        sent_at = time.monotonic()
        while sent < due:
            while len(unacked) >= WINDOW:
                room.clear()
                await room.wait()
            chunk_end = min(due, sent + 1000, sent + WINDOW - len(unacked))
            commands = []
            for k, n in enumerate(range(sent, chunk_end)):
                customer = customers[int(random_() * n_customers)]
                model = MODELS[n % len(MODELS)]
                rid = f"{args.prefix}-{n}"
                payload = renderer.render(rid, customer, model, 50 + int(random_() * 3951), 1 + int(random_() * 800),
                                          stamps(k))
                headers = (
                    f"NATS/1.0\r\nNats-Msg-Id: {rid}\r\nContent-Type: application/json\r\n"
                    f"traceparent: 00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01\r\n\r\n"
                ).encode()
                token = str(n).encode()
                command = b"HPUB usage.recorded.t_%s %s%s %d %d\r\n%s%s\r\n" % (
                    customer.encode(), inbox_b, token, len(headers), len(headers) + len(payload), headers, payload,
                )
                unacked[token] = (command, sent_at)
                commands.append(command)
            drained.clear()
            await nc.send_raw(b"".join(commands))
            sent = chunk_end
            if args.rate <= 0:
                timeline.append((time.monotonic() - start, sent))
                stamps.reset()
                await asyncio.sleep(0)  # let the acks in
        timeline.append((time.monotonic() - start, sent))
        if args.rate > 0:
            await asyncio.sleep(max(0.0, (now_s + tick) - (time.monotonic() - start)))
    if unacked:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), timeout=60)
    elapsed = time.monotonic() - start
    resender.cancel()
    if unacked:
        raise SystemExit(f"{len(unacked)} publishes never acknowledged")
    await nc.close()
    summary = json.dumps({"count": sent, "seconds": elapsed, "cpu_seconds": time.process_time() - cpu_start,
                          "pub_ack_errors": errors, "timeline": timeline})
    Path(args.out).write_text(summary)  # noqa: ASYNC240 - after the run


if __name__ == "__main__":
    uvloop.run(main())  # the gateway runs on uvloop too
