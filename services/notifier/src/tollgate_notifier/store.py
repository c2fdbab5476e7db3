"""Alerts and deliveries in Postgres: recording (idempotent), claiming due deliveries across
replicas (FOR UPDATE SKIP LOCKED plus a lease), recording each attempt, and the delivery log."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from tollgate_notifier.alerts import NewAlert
from tollgate_notifier.prefs import Target, customer_targets, mask_url, operator_targets
from tollgate_notifier.settings import NotifierSettings


async def record_alerts(
    conn: asyncpg.Connection, alerts: list[NewAlert], subject: str, trace: dict[str, str],
    settings: NotifierSettings,
) -> list[int]:
    """Insert each alert once (by dedup key) with one delivery per channel. Returns the ids of the
    alerts this call created; an alert that already existed creates nothing."""
    created: list[int] = []
    for alert in alerts:
        alert_id = await conn.fetchval(
            """
            INSERT INTO notifier.alerts (kind, audience, customer_id, dedup_key, context, trace, source_subject)
            VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7)
            ON CONFLICT (dedup_key) DO NOTHING RETURNING id
            """,
            alert.kind, alert.audience, alert.customer_id, alert.dedup_key,
            json.dumps(alert.context), json.dumps(trace), subject,
        )
        if alert_id is None:
            continue
        created.append(alert_id)
        if alert.audience == "operator":
            targets = operator_targets(settings)
        else:
            assert alert.customer_id is not None
            targets = await customer_targets(conn, alert.customer_id, settings)
        for target in targets:
            await _insert_delivery(conn, alert_id, target)
    return created


async def _insert_delivery(conn: asyncpg.Connection, alert_id: int, target: Target) -> None:
    status = "pending" if target.address else "skipped"
    await conn.execute(
        """
        INSERT INTO notifier.deliveries (alert_id, channel, target, status, last_error)
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (alert_id, channel) DO NOTHING
        """,
        alert_id, target.channel, target.address, status, target.skipped_reason,
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    alert_id: int
    channel: str
    target: str
    attempt: int
    claim: uuid.UUID
    created_at: datetime
    kind: str
    audience: str
    customer_id: str | None
    dedup_key: str
    context: dict[str, Any]
    trace: dict[str, str]


async def claim_due(pool: asyncpg.Pool, limit: int, lease_s: float) -> list[Claimed]:
    """Take up to `limit` due deliveries. Each is pushed `lease_s` into the future, so no other
    replica sees it while it is being sent, and it comes back by itself if this one dies."""
    rows = await pool.fetch(
        """
        WITH due AS (
            SELECT id FROM notifier.deliveries
            WHERE status = 'pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE notifier.deliveries d
        SET next_attempt_at = now() + make_interval(secs => $2), claim = gen_random_uuid(),
            attempts = d.attempts + 1, updated_at = now()
        FROM due, notifier.alerts a
        WHERE d.id = due.id AND a.id = d.alert_id
        RETURNING d.id, d.alert_id, d.channel, d.target, d.attempts, d.claim, d.created_at,
                  a.kind, a.audience, a.customer_id, a.dedup_key, a.context, a.trace
        """,
        limit, lease_s,
    )
    return [
        Claimed(
            id=r["id"], alert_id=r["alert_id"], channel=r["channel"], target=r["target"],
            attempt=r["attempts"], claim=r["claim"], created_at=r["created_at"], kind=r["kind"],
            audience=r["audience"], customer_id=r["customer_id"], dedup_key=r["dedup_key"],
            context=json.loads(r["context"]), trace=json.loads(r["trace"]),
        )
        for r in rows
    ]


async def finish(
    pool: asyncpg.Pool, item: Claimed, started_at: datetime, outcome: str, error: str | None,
    retry_in_s: float | None = None,
) -> bool:
    """Record one attempt: `sent`, `retry` (pending again in retry_in_s) or `failed`. Only the
    holder of the current claim may finish it; returns False if the lease was lost meanwhile.
    The claim stays until the next claim replaces it, so finishing again with it (a retry after
    the connection broke before the commit's reply came back) is recognised, not "lease lost"."""
    async with pool.acquire() as conn, conn.transaction():
        if outcome == "sent":
            updated = await conn.execute(
                """
                UPDATE notifier.deliveries SET status = 'sent', sent_at = now(), last_error = NULL,
                    updated_at = now()
                WHERE id = $1 AND claim = $2
                """,
                item.id, item.claim,
            )
        elif outcome == "retry":
            updated = await conn.execute(
                """
                UPDATE notifier.deliveries SET next_attempt_at = now() + make_interval(secs => $3),
                    last_error = $4, updated_at = now()
                WHERE id = $1 AND claim = $2
                """,
                item.id, item.claim, retry_in_s or 0.0, error,
            )
        else:
            updated = await conn.execute(
                """
                UPDATE notifier.deliveries SET status = 'failed', last_error = $3, updated_at = now()
                WHERE id = $1 AND claim = $2
                """,
                item.id, item.claim, error,
            )
        await conn.execute(
            """
            INSERT INTO notifier.delivery_attempts (delivery_id, attempt, started_at, outcome, error)
            VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
            """,
            item.id, item.attempt, started_at, outcome, error,
        )
        return bool(updated.endswith(" 1"))


async def backlog(pool: asyncpg.Pool) -> tuple[int, float]:
    row = await pool.fetchrow(
        """
        SELECT count(*) AS n, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS age
        FROM notifier.deliveries WHERE status = 'pending'
        """
    )
    assert row is not None
    return int(row["n"]), float(row["age"])


async def list_deliveries(
    pool: asyncpg.Pool, *, customer_id: str | None, status: str | None, channel: str | None,
    kind: str | None, before_id: int | None, limit: int,
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """
        SELECT d.*, a.kind, a.audience, a.customer_id, a.dedup_key, a.source_subject,
               a.created_at AS alert_created_at,
               COALESCE((SELECT json_agg(json_build_object(
                   'attempt', t.attempt, 'started_at', t.started_at, 'finished_at', t.finished_at,
                   'outcome', t.outcome, 'error', t.error) ORDER BY t.attempt)
                 FROM notifier.delivery_attempts t WHERE t.delivery_id = d.id), '[]') AS attempt_log
        FROM notifier.deliveries d JOIN notifier.alerts a ON a.id = d.alert_id
        WHERE ($1::text IS NULL OR a.customer_id = $1)
          AND ($2::text IS NULL OR d.status = $2)
          AND ($3::text IS NULL OR d.channel = $3)
          AND ($4::text IS NULL OR a.kind = $4)
          AND ($5::bigint IS NULL OR d.id < $5)
        ORDER BY d.id DESC
        LIMIT $6
        """,
        customer_id, status, channel, kind, before_id, limit,
    )
    return [_public_delivery(r) for r in rows]


def _public_delivery(r: asyncpg.Record) -> dict[str, Any]:
    target = r["target"] if r["channel"] == "email" else mask_url(r["target"])
    return {
        "id": r["id"],
        "alert_id": r["alert_id"],
        "kind": r["kind"],
        "audience": r["audience"],
        "customer_id": r["customer_id"],
        "dedup_key": r["dedup_key"],
        "source_subject": r["source_subject"],
        "channel": r["channel"],
        "target": target,
        "status": r["status"],
        "attempts": r["attempts"],
        "last_error": r["last_error"],
        "next_attempt_at": r["next_attempt_at"].isoformat() if r["status"] == "pending" else None,
        "created_at": r["created_at"].isoformat(),
        "sent_at": r["sent_at"].isoformat() if r["sent_at"] else None,
        "attempt_log": json.loads(r["attempt_log"]) if isinstance(r["attempt_log"], str) else r["attempt_log"],
    }


async def alert_states(pool: asyncpg.Pool, customer_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """
        SELECT kind, threshold_key, period_key, state, opened_seq, resolved_seq, last_seq, opened_at, resolved_at
        FROM notifier.alert_states WHERE customer_id = $1 ORDER BY kind, threshold_key, period_key
        """,
        customer_id,
    )
    return [
        {
            "kind": r["kind"],
            "threshold_nanos": int(r["threshold_key"]) if r["threshold_key"] else None,
            "period": r["period_key"] or None,
            "state": r["state"],
            "opened_seq": r["opened_seq"],
            "resolved_seq": r["resolved_seq"],
            "last_seq": r["last_seq"],
            "opened_at": r["opened_at"].isoformat() if r["opened_at"] else None,
            "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None,
        }
        for r in rows
    ]
