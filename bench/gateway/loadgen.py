"""A small, fast HTTP/1.1 load generator (its own process; uvloop + httptools, keep-alive).

Open loop (`--rate`): request i is due at t0 + i/rate whatever happened before, and its latency
is measured from that due time, so a server that falls behind is charged for the queueing it
causes (no coordinated omission). Closed loop (`--concurrency`): that many connections send back
to back; the achieved rate is the saturation throughput. Prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from time import perf_counter
from urllib.parse import urlsplit

import httptools
import uvloop


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.status = 0
        self.broken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail()

    def _fail(self) -> None:
        self.broken = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(-1)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.status)

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


class Client:
    def __init__(self, url: str, requests: list[bytes]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.requests = itertools.cycle(requests)
        self.idle: list[_Conn] = []

    async def call(self) -> int:
        loop = asyncio.get_running_loop()
        conn = self.idle.pop() if self.idle else None
        if conn is None or conn.broken:
            _, conn = await loop.create_connection(_Conn, self.host, self.port)
        status = await conn.send(next(self.requests))
        if not conn.broken:
            self.idle.append(conn)
        return status


def build_requests(url: str, body: bytes, keys: list[str]) -> list[bytes]:
    parts = urlsplit(url)
    out = []
    for key in keys or [""]:
        head = [f"POST {parts.path} HTTP/1.1", f"host: {parts.netloc}", "content-type: application/json",
                f"content-length: {len(body)}"]
        if key:
            head.append(f"authorization: Bearer {key}")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


def summary(latencies: list[float], errors: int, elapsed: float, sent: int) -> dict[str, float | int]:
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "sent": sent, "count": len(latencies), "errors": errors,
        "achieved_rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": pct(100),
    }


async def open_loop(client: Client, rate: float, duration: float, warmup: float) -> dict[str, float | int]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float, record: bool) -> None:
        nonlocal errors
        try:
            status = await client.call()
        except OSError:
            status = -1
        if not record:
            return
        if status == 200:
            latencies.append(perf_counter() - due)
        else:
            errors += 1

    total = int(rate * (warmup + duration))
    first_recorded = int(rate * warmup)
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    start = perf_counter() + 0.05
    i = 0
    while i < total:
        now = perf_counter()
        while i < total and start + i / rate <= now:
            task = loop.create_task(one(start + i / rate, i >= first_recorded))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i / rate - perf_counter()))
    while tasks:
        await asyncio.gather(*list(tasks))
    return summary(latencies, errors, duration, total)


async def closed_loop(client: Client, concurrency: int, duration: float, warmup: float) -> dict[str, float | int]:
    latencies: list[float] = []
    errors = 0
    sent = 0
    measure_from = perf_counter() + warmup
    stop_at = measure_from + duration

    async def worker() -> None:
        nonlocal errors, sent
        while (now := perf_counter()) < stop_at:
            sent += 1
            try:
                status = await client.call()
            except OSError:
                status = -1
            if now >= measure_from:
                if status == 200:
                    latencies.append(perf_counter() - now)
                else:
                    errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(latencies, errors, duration, sent)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="JSON request body")
    parser.add_argument("--keys", default="", help="comma-separated API keys, used round robin")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    client = Client(args.url, build_requests(args.url, args.body.encode(), [k for k in args.keys.split(",") if k]))

    async def run() -> dict[str, float | int]:
        if args.concurrency:
            return await closed_loop(client, args.concurrency, args.duration, args.warmup)
        return await open_loop(client, args.rate, args.duration, args.warmup)

    started = time.monotonic()
    result = uvloop.run(run())
    result["wall_s"] = time.monotonic() - started
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
