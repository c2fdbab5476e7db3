"""Transactional outbox: events are written in the transaction that causes them and published
to JetStream after commit by a relay. Rows are claimed by status with FOR UPDATE SKIP LOCKED
(never by an id cursor: bigserial order is not commit order), so any number of ledger replicas
can relay side by side; a crash between publish and mark republishes, and JetStream drops the
duplicate by Nats-Msg-Id inside its window (consumers are idempotent beyond it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import asyncpg
from nats.js import JetStreamContext

from tollgate_contracts.events import Event
from tollgate_ledger import metrics
from tollgate_ledger.effects import Effects
from tollgate_platform import bus
from tollgate_platform.logging import get_logger
from tollgate_platform.telemetry import inject_headers

log = get_logger(__name__)

CHANNEL = "ledger_outbox"


async def enqueue(conn: asyncpg.Connection, subject: str, event: Event, effects: Effects) -> None:
    """Inside the caller's transaction. A second event with the same msg_id is the same fact."""
    headers = dict(inject_headers({}))
    headers["Content-Type"] = "application/json"
    await conn.execute(
        "INSERT INTO ledger.outbox (subject, msg_id, payload, headers) VALUES ($1, $2, $3, $4::jsonb) "
        "ON CONFLICT (msg_id) DO NOTHING",
        subject, event.msg_id, event.model_dump_json().encode(), json.dumps(headers),
    )
    if not effects.outbox:
        # Delivered at commit (and never for a rolled-back transaction) to every replica's relay.
        await conn.execute(f"NOTIFY {CHANNEL}")
        effects.outbox = True


class OutboxRelay:
    def __init__(
        self, pool: asyncpg.Pool, js_factory: Callable[[], JetStreamContext], *, batch_size: int,
        poll_interval_s: float, retention_days: int,
    ) -> None:
        self.pool = pool
        self._js_factory = js_factory
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.retention_days = retention_days
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        try:
            self._listener = await self.pool.acquire()
            await self._listener.add_listener(CHANNEL, self._on_notify)
        except (OSError, asyncpg.PostgresError):
            self._listener = None  # polling alone still publishes everything
        self._task = asyncio.create_task(self._run(), name="ledger-outbox-relay")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(CHANNEL, self._on_notify)
            await self.pool.release(self._listener)
            self._listener = None

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _run(self) -> None:
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                published = await self.drain_once()
                if loop.time() - last_prune > 3600:
                    await self.prune()
                    last_prune = loop.time()
            except Exception as exc:  # the relay must survive Postgres or NATS outages
                log.warning("outbox relay pass failed", error=type(exc).__name__, detail=str(exc)[:200])
                published = 0
            if published >= self.batch_size:
                continue  # more is probably waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
        # A last pass on shutdown so events committed just before are not left for the next start.
        with contextlib.suppress(Exception):
            await self.drain_once()

    async def drain_once(self) -> int:
        """Publish one batch of unpublished rows; returns how many were published."""
        js = self._js_factory()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, subject, msg_id, payload, headers FROM ledger.outbox "
                "WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_size,
            )
            if not rows:
                return 0
            results = await asyncio.gather(
                *(
                    bus.publish_raw(js, r["subject"], bytes(r["payload"]), r["msg_id"],
                                    headers=json.loads(r["headers"]))
                    for r in rows
                ),
                return_exceptions=True,
            )
            done = [r["id"] for r, res in zip(rows, results, strict=True) if not isinstance(res, BaseException)]
            failed = [(r["id"], res) for r, res in zip(rows, results, strict=True) if isinstance(res, BaseException)]
            if done:
                await conn.execute("UPDATE ledger.outbox SET published_at = now() WHERE id = ANY($1::bigint[])", done)
            for row_id, exc in failed:
                await conn.execute(
                    "UPDATE ledger.outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                    row_id, f"{type(exc).__name__}: {exc}"[:500],
                )
        metrics.OUTBOX_PUBLISHED.inc(len(done))
        if failed:
            metrics.OUTBOX_FAILURES.inc(len(failed))
            raise RuntimeError(f"{len(failed)} outbox publish(es) failed: {failed[0][1]!r}")
        return len(done)

    async def prune(self) -> int:
        result = await self.pool.execute(
            "DELETE FROM ledger.outbox WHERE published_at < now() - make_interval(days => $1)", self.retention_days
        )
        return int(result.split()[-1])


async def pending_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger.outbox WHERE published_at IS NULL"))
