"""From bus events to alerts, inside one Postgres transaction per message.

Balance alerts run an edge-triggered state machine per (customer, kind, threshold, period):
`ok -> alarm` on a crossing (alert once), `alarm -> ok` on a top-up (balance.restored; may say so),
and a new crossing alerts again. Replicas handle the same customer concurrently and messages can
arrive out of order (naks, redeliveries, three replicas pulling one consumer), so every decision
is made under a per-customer row lock and compares ledger seqs:
- a crossing older than the newest restore seen is stale (already resolved) -> no alert;
- a crossing while in alarm is a repeat -> no alert, but its seq is remembered: if a restore that
  sits between the two arrives late, the alarm resolves and reopens at the later crossing.
Every other kind is a one-off fact with a natural id (payment id, period start, check id, ...).
Uniqueness of `alerts.dedup_key` and `deliveries (alert_id, channel)` makes all of it idempotent.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg

from tollgate_contracts.events import (
    BalanceChanged,
    DeadLetter,
    DriftDetected,
    PaymentFailed,
    PaymentSucceeded,
    SoftCapReached,
    TierChanged,
)

LOW = "balance.low"
DEPLETED = "balance.depleted"
RESTORED = "balance.restored"
SOFTCAP = "softcap.reached"
TIER = "tier.changed"
RECEIPT = "payment.receipt"
PAYMENT_FAILED = "payment.failed"
DRIFT = "ops.drift"
DEADLETTER = "ops.deadletter"

ALL_KINDS = (LOW, DEPLETED, RESTORED, SOFTCAP, TIER, RECEIPT, PAYMENT_FAILED, DRIFT, DEADLETTER)
CROSSING_KINDS = (LOW, DEPLETED)
PAYLOAD_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class NewAlert:
    kind: str
    dedup_key: str
    context: dict[str, Any]
    customer_id: str | None
    audience: Literal["customer", "operator"] = "customer"


@dataclass(slots=True)
class Outcome:
    """What one event did; logged and counted (why an alert was or was not sent)."""

    alerts: list[NewAlert] = field(default_factory=list)
    note: str = ""


def _balance_context(ev: BalanceChanged) -> dict[str, Any]:
    return {
        "customer_id": ev.customer_id,
        "balance_nanos": ev.balance_nanos,
        "threshold_nanos": ev.threshold_nanos,
        "last_topup_nanos": ev.last_topup_nanos,
        "seq": ev.seq,
        "occurred_at": ev.occurred_at.isoformat(),
    }


async def _lock_customer(conn: asyncpg.Connection, customer_id: str) -> int:
    """Serialises this customer's balance events across replicas; returns the newest restore seq."""
    await conn.execute(
        "INSERT INTO notifier.balance_watch (customer_id) VALUES ($1) ON CONFLICT DO NOTHING", customer_id
    )
    seq = await conn.fetchval(
        "SELECT last_restored_seq FROM notifier.balance_watch WHERE customer_id = $1 FOR UPDATE", customer_id
    )
    return int(seq)


def _crossing_alert(kind: str, customer_id: str, seq: int, context: dict[str, Any]) -> NewAlert:
    return NewAlert(kind, f"{kind}:{customer_id}:{seq}", context, customer_id)


async def balance_crossing(conn: asyncpg.Connection, kind: str, ev: BalanceChanged) -> Outcome:
    last_restored = await _lock_customer(conn, ev.customer_id)
    context = _balance_context(ev)
    threshold_key = "" if ev.threshold_nanos is None else str(ev.threshold_nanos)
    state = await conn.fetchrow(
        """
        INSERT INTO notifier.alert_states AS s (customer_id, kind, threshold_key, last_seq, last_context)
        VALUES ($1, $2, $3, $4, $5::jsonb)
        ON CONFLICT (customer_id, kind, threshold_key, period_key) DO UPDATE SET
            last_seq = GREATEST(s.last_seq, EXCLUDED.last_seq),
            last_context = CASE WHEN EXCLUDED.last_seq > s.last_seq THEN EXCLUDED.last_context
                                ELSE s.last_context END
        RETURNING state, opened_seq
        """,
        ev.customer_id, kind, threshold_key, ev.seq, json.dumps(context),
    )
    assert state is not None
    if ev.seq <= last_restored:
        return Outcome(note=f"stale: seq {ev.seq} was already resolved by a top-up at seq {last_restored}")
    if state["state"] == "alarm":
        if state["opened_seq"] == ev.seq:
            return Outcome(note="duplicate of the crossing that opened the alarm")
        return Outcome(note=f"already alerted for this crossing (alarm open since seq {state['opened_seq']})")
    await conn.execute(
        """
        UPDATE notifier.alert_states SET state = 'alarm', opened_seq = $4, opened_at = now()
        WHERE customer_id = $1 AND kind = $2 AND threshold_key = $3 AND period_key = ''
        """,
        ev.customer_id, kind, threshold_key, ev.seq,
    )
    return Outcome([_crossing_alert(kind, ev.customer_id, ev.seq, context)], "alarm opened")


async def balance_restored(conn: asyncpg.Connection, ev: BalanceChanged, notify: bool) -> Outcome:
    last_restored = await _lock_customer(conn, ev.customer_id)
    if ev.seq <= last_restored:
        return Outcome(note=f"stale or duplicate restore (newest seen: seq {last_restored})")
    await conn.execute(
        "UPDATE notifier.balance_watch SET last_restored_seq = $2, updated_at = now() WHERE customer_id = $1",
        ev.customer_id, ev.seq,
    )
    rows = await conn.fetch(
        """
        SELECT kind, threshold_key, state, opened_seq, last_seq, last_context FROM notifier.alert_states
        WHERE customer_id = $1 AND kind = ANY($2::text[]) FOR UPDATE
        """,
        ev.customer_id, list(CROSSING_KINDS),
    )
    resolved = 0
    reopened: list[NewAlert] = []
    for row in rows:
        if row["state"] != "alarm" or row["opened_seq"] >= ev.seq:
            continue
        if row["last_seq"] > ev.seq:
            # A crossing newer than this top-up was seen while the alarm was still open.
            await conn.execute(
                """
                UPDATE notifier.alert_states SET opened_seq = $4, opened_at = now(), resolved_seq = $5,
                    resolved_at = now()
                WHERE customer_id = $1 AND kind = $2 AND threshold_key = $3 AND period_key = ''
                """,
                ev.customer_id, row["kind"], row["threshold_key"], row["last_seq"], ev.seq,
            )
            context = json.loads(row["last_context"])
            reopened.append(_crossing_alert(row["kind"], ev.customer_id, row["last_seq"], context))
            continue
        await conn.execute(
            """
            UPDATE notifier.alert_states SET state = 'ok', resolved_seq = $4, resolved_at = now()
            WHERE customer_id = $1 AND kind = $2 AND threshold_key = $3 AND period_key = ''
            """,
            ev.customer_id, row["kind"], row["threshold_key"], ev.seq,
        )
        resolved += 1
    if reopened:
        # The customer is below the threshold again; a "restored" notice now would mislead.
        return Outcome(reopened, "resolved and reopened by a later crossing")
    if resolved == 0:
        return Outcome(note="no open alarm to resolve")
    if not notify:
        return Outcome(note=f"resolved {resolved} alarm(s)")
    alert = NewAlert(RESTORED, f"{RESTORED}:{ev.customer_id}:{ev.seq}", _balance_context(ev), ev.customer_id)
    return Outcome([alert], f"resolved {resolved} alarm(s)")


def softcap(ev: SoftCapReached) -> NewAlert:
    period = ev.period_start.isoformat()
    context = {
        "customer_id": ev.customer_id,
        "plan": ev.plan,
        "period_start": period,
        "cap_nanos": ev.cap_nanos,
        "used_nanos": ev.used_nanos,
        "fallback_model": ev.fallback_model,
    }
    return NewAlert(SOFTCAP, f"{SOFTCAP}:{ev.customer_id}:{period}", context, ev.customer_id)


def tier_changed(ev: TierChanged) -> NewAlert:
    context = {
        "customer_id": ev.customer_id,
        "old_tier": ev.old_tier,
        "new_tier": ev.new_tier,
        "rpm": ev.rpm,
        "tpm": ev.tpm,
        "lifetime_spend_nanos": ev.lifetime_spend_nanos,
        "cause": ev.cause,
    }
    return NewAlert(TIER, f"{TIER}:{ev.msg_id}", context, ev.customer_id)


def receipt(ev: PaymentSucceeded) -> NewAlert:
    context = {
        "customer_id": ev.customer_id,
        "payment_id": ev.payment_id,
        "amount_cents": ev.amount_cents,
        "credited_nanos": ev.credited_nanos,
        "product_id": ev.product_id,
        "occurred_at": ev.occurred_at.isoformat(),
    }
    return NewAlert(RECEIPT, f"{RECEIPT}:{ev.payment_id}", context, ev.customer_id)


def payment_failed(ev: PaymentFailed) -> NewAlert:
    context = {
        "customer_id": ev.customer_id,
        "payment_id": ev.payment_id,
        "amount_cents": ev.amount_cents,
        "reason": ev.reason,
    }
    return NewAlert(PAYMENT_FAILED, f"{PAYMENT_FAILED}:{ev.payment_id}", context, ev.customer_id)


def drift(ev: DriftDetected) -> NewAlert:
    context = {
        "customer_id": ev.customer_id,
        "tollgate_nanos": ev.tollgate_nanos,
        "in_flight_nanos": ev.in_flight_nanos,
        "dodo_nanos": ev.dodo_nanos,
        "drift_nanos": ev.drift_nanos,
        "check_id": ev.check_id,
    }
    return NewAlert(DRIFT, f"{DRIFT}:{ev.check_id}:{ev.customer_id}", context, ev.customer_id, "operator")


def dead_letter(ev: DeadLetter) -> NewAlert:
    payload = ev.payload
    if ev.payload_encoding == "base64":
        try:
            payload = base64.b64decode(payload).decode("utf-8", "replace")
        except ValueError:
            pass
    context = {
        "service": ev.service,
        "original_subject": ev.original_subject,
        "original_msg_id": ev.original_msg_id,
        "reason": ev.reason,
        "deliveries": ev.deliveries,
        "payload": payload[:PAYLOAD_LIMIT],
        "payload_truncated": len(payload) > PAYLOAD_LIMIT,
        "payload_encoding": ev.payload_encoding,
    }
    return NewAlert(DEADLETTER, f"{DEADLETTER}:{ev.msg_id}", context, None, "operator")
