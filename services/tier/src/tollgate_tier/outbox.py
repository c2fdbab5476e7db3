"""Transactional outbox: a tier change is written with the change itself and relayed after the
commit to the gateway's hot state (Redis) and to JetStream. A crash between commit and relay
only delays both; the relay repeats until both succeed, and repeating is harmless (Redis takes a
limits version only if newer; JetStream drops a repeated Nats-Msg-Id)."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from dataclasses import dataclass

import asyncpg
from nats.js import JetStreamContext
from prometheus_client import Counter

from tollgate_contracts import subjects
from tollgate_contracts.events import TierChanged
from tollgate_hotstate import HotState
from tollgate_money import Tier
from tollgate_platform.bus import publish_raw
from tollgate_platform.logging import get_logger
from tollgate_platform.telemetry import inject_headers

log = get_logger(__name__)

RELAYED = Counter("tier_outbox_relayed_total", "Outbox rows relayed to Redis and JetStream")
RELAY_FAILURES = Counter("tier_outbox_failures_total", "Outbox relay attempts that failed (retried)")


async def enqueue(
    conn: asyncpg.Connection, customer_id: str, version: int, tier: Tier, event: TierChanged | None
) -> None:
    """Inside the caller's transaction. Every row pushes the limits to Redis; a row with an event
    also publishes it (a change of limits alone, e.g. a first sighting, is not news)."""
    subject = subjects.for_customer(subjects.TIER_CHANGED, customer_id) if event else None
    await conn.execute(
        """
        INSERT INTO tier.outbox (customer_id, limits_version, tier, rpm, tpm, subject, msg_id, payload, headers)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
        """,
        customer_id, version, tier.name, tier.rpm, tier.tpm, subject,
        event.msg_id if event else None,
        event.model_dump_json().encode() if event else None,
        json.dumps(dict(inject_headers({}))),
    )


@dataclass(frozen=True, slots=True)
class _Pass:
    relayed: int
    failed: bool
    more: bool  # a full batch went through: look again at once


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    customer_id: str
    limits_version: int
    tier: str
    rpm: int
    tpm: int
    subject: str | None
    msg_id: str | None
    payload: bytes | None
    headers: dict[str, str]


class OutboxRelay:
    def __init__(
        self, pool: asyncpg.Pool, hot: HotState, js: JetStreamContext, *, batch: int, poll_s: float,
        retention_days: int,
    ) -> None:
        self._pool = pool
        self._hot = hot
        self._js = js
        self._batch = batch
        self._poll_s = poll_s
        self._retention_days = retention_days
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """Called after a commit that wrote outbox rows: relay now, not at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tier-outbox-relay")

    async def stop(self) -> None:
        """Relays what is already committed (best effort), then stops; leftovers wait in Postgres."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except TimeoutError:
                self._task.cancel()
                with suppress(asyncio.CancelledError):
                    await self._task

    async def _run(self) -> None:
        backoff = self._poll_s
        while True:
            self._wake.clear()
            try:
                pass_ = await self.relay_once()
            except Exception as exc:  # Postgres away: keep the loop alive, retry later
                log.warning("tier outbox relay failed", error=type(exc).__name__)
                RELAY_FAILURES.inc()
                pass_ = _Pass(relayed=0, failed=True, more=False)
            if pass_.more and not self._stopping:
                continue
            if self._stopping:
                return
            backoff = min(backoff * 2, 30.0) if pass_.failed else self._poll_s
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)

    async def relay_once(self) -> _Pass:
        """Relays one batch. Rows stay locked (SKIP LOCKED) so replicas never relay the same row at
        once. Redis first, for every row: versions make the order irrelevant there, and the
        gateway gets new limits even while NATS is away. Then JetStream in id order, stopping at
        the first failure so a customer's events keep their order."""
        async with self._pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(
                """
                SELECT id, customer_id, limits_version, tier, rpm, tpm, subject, msg_id, payload, headers
                FROM tier.outbox WHERE published_at IS NULL
                ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
                """,
                self._batch,
            )
            rows = [_row(r) for r in records]
            failed: _Row | None = None
            error = ""
            pushed: list[_Row] = []
            for row in rows:
                try:
                    await self._push_limits(row)
                except Exception as exc:  # Redis away: the rest waits for the next pass
                    failed, error = row, f"{type(exc).__name__}: {exc}"[:500]
                    break
                pushed.append(row)
            done: list[int] = []
            for row in pushed:
                try:
                    await self._publish(row)
                except Exception as exc:  # NATS away: leave the row for the next pass
                    failed, error = row, f"{type(exc).__name__}: {exc}"[:500]
                    break
                done.append(row.id)
            if done:
                await conn.execute("UPDATE tier.outbox SET published_at = now() WHERE id = ANY($1::bigint[])", done)
            if failed is not None:
                RELAY_FAILURES.inc()
                log.warning("tier outbox row not relayed yet", outbox_id=failed.id, error=error)
                await conn.execute(
                    "UPDATE tier.outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1", failed.id, error
                )
        RELAYED.inc(len(done))
        return _Pass(relayed=len(done), failed=failed is not None, more=failed is None and len(rows) == self._batch)

    async def _push_limits(self, row: _Row) -> None:
        await self._hot.set_fields(
            row.customer_id, "limits_v", row.limits_version, {"tier": row.tier, "rpm": row.rpm, "tpm": row.tpm}
        )

    async def _publish(self, row: _Row) -> None:
        if row.subject and row.msg_id and row.payload is not None:
            headers = {**row.headers, "Content-Type": "application/json"}
            await publish_raw(self._js, row.subject, row.payload, row.msg_id, headers=headers)

    async def prune(self) -> int:
        status = await self._pool.execute(
            "DELETE FROM tier.outbox WHERE published_at < now() - make_interval(days => $1)", self._retention_days
        )
        return int(status.split()[-1])


def _row(r: asyncpg.Record) -> _Row:
    headers = r["headers"]
    if isinstance(headers, str):
        headers = json.loads(headers)
    return _Row(
        id=r["id"], customer_id=r["customer_id"], limits_version=r["limits_version"], tier=r["tier"],
        rpm=r["rpm"], tpm=r["tpm"], subject=r["subject"], msg_id=r["msg_id"],
        payload=bytes(r["payload"]) if r["payload"] is not None else None,
        headers={str(k): str(v) for k, v in (headers or {}).items()},
    )
