"""Covers a crash between settle and publish: usage that Redis holds as settled-but-unposted
(`{c:X}:unposted_ev`) for longer than `republish_after_s` is published again. JetStream's
duplicate window (2 h) absorbs events that did arrive; the ledger removes posted ones from
Redis, so in steady state this finds nothing. One gateway at a time does it (a Redis lock)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import orjson
import redis.asyncio as redis

from tollgate_contracts import subjects
from tollgate_gateway.publisher import UsagePublisher
from tollgate_platform.logging import get_logger

log = get_logger("tollgate.gateway.republisher")

LOCK_KEY = "gateway:republish:lock"
# Older than the stream's duplicate window, a republish would be a real duplicate: leave those to
# the ledger's reconciliation.
MAX_AGE_S = 2 * 3600 - 600


class Republisher:
    def __init__(self, client: redis.Redis, publisher: UsagePublisher, after_s: float, interval_s: float) -> None:
        self.redis = client
        self.publisher = publisher
        self.after_s = after_s
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if await self.redis.set(LOCK_KEY, b"1", nx=True, px=int(self.interval_s * 900)):
                    count = await self.run_once()
                    if count:
                        log.info("republished unposted usage", events=count)
            except Exception:
                log.exception("republishing unposted usage failed")

    async def run_once(self) -> int:
        now = datetime.now(UTC)
        count = 0
        async for key in self.redis.scan_iter(match="{c:*}:unposted_ev", count=500):
            async for _, raw in self.redis.hscan_iter(key, count=500):
                try:
                    event = orjson.loads(raw)
                    age = (now - datetime.fromisoformat(event["occurred_at"])).total_seconds()
                    customer = event["customer_id"]
                    event_id = event["event_id"]
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
                if self.after_s <= age <= MAX_AGE_S:
                    subject = subjects.for_customer(subjects.USAGE_RECORDED, customer)
                    self.publisher.submit(subject, event_id, bytes(raw), None)
                    count += 1
        return count

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
