"""`POST /webhooks/dodo`: verify (Standard Webhooks signature and timestamp, on the raw body),
store the raw event in the inbox keyed by webhook-id and apply it in the same transaction.

Answers: 200 once stored (applied, replayed, parked, ignored); 401 for a bad or stale signature,
whatever the body (nothing stored); 400 for a validly signed body that is not UTF-8, not JSON or
not an event (nothing stored); 413 above the size limit; 503 when the event cannot be applied
correctly yet (nothing stored, Dodo retries).
A replay re-mirrors the customer's balance and plan, so a delivery retried after a Redis failure
heals the hot copy."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tollgate_ledger import dodo_events, metrics, planstate, postings, subscriptions
from tollgate_ledger.context import Ledger
from tollgate_ledger.effects import Effects
from tollgate_platform.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    status_code: int
    body: dict[str, Any]


def _error(status: int, message: str, type_: str, code: str) -> Reply:
    return Reply(status, {"error": {"message": message, "type": type_, "code": code}})


TIMESTAMP_TOLERANCE_S = 5 * 60


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Standard Webhooks v1, as the `standardwebhooks` library checks it but over the body's raw
    bytes (the library verifies text only, so a body that is not UTF-8 could never be judged on
    its signature): HMAC-SHA256, keyed by the base64 secret after `whsec_`, of
    `{webhook-id}.{webhook-timestamp}.` + the body exactly as received, compared in constant time
    with each `v1,<base64>` of `webhook-signature`; the timestamp within ±5 minutes. Any missing or
    malformed header (or secret) is simply "not verified"."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    msg_timestamp = lowered.get("webhook-timestamp")
    msg_signature = lowered.get("webhook-signature")
    if not (msg_id and msg_timestamp and msg_signature):
        return False
    try:
        key = base64.b64decode(secret.removeprefix("whsec_") + "==")  # padding optional, as in the library
        timestamp = float(msg_timestamp)
    except (binascii.Error, ValueError):
        return False
    if not key or not math.isfinite(timestamp) or abs(time.time() - timestamp) > TIMESTAMP_TOLERANCE_S:
        return False
    # Whole seconds are signed, as the library does (a sender writes an integer anyway).
    expected = hmac.new(key, f"{msg_id}.{math.floor(timestamp)}.".encode() + body, hashlib.sha256).digest()
    for versioned in msg_signature.split(" "):
        parts = versioned.split(",")
        if len(parts) != 2 or parts[0] != "v1":
            continue
        try:
            candidate = base64.b64decode(parts[1])
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            return True
    return False


async def receive(ledger: Ledger, headers: Mapping[str, str], body: bytes) -> Reply:
    lowered = {k.lower(): v for k, v in headers.items()}
    if len(body) > ledger.settings.webhook_max_bytes:
        return _error(413, "webhook body too large", "invalid_request_error", "payload_too_large")
    if not verify(ledger.settings.dodo_webhook_key.get_secret_value(), lowered, body):
        metrics.WEBHOOKS.labels("unknown", "unauthorized").inc()
        return _error(401, "invalid or expired webhook signature", "authentication_error", "invalid_signature")
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "webhook body is not valid UTF-8", "invalid_request_error", "invalid_encoding")
    try:
        envelope = json.loads(raw)
    except ValueError:
        return _error(400, "webhook body is not valid JSON", "invalid_request_error", "invalid_json")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
        return _error(400, "webhook body is not an event envelope", "invalid_request_error", "invalid_event")
    data = envelope.get("data")
    if not isinstance(data, dict):
        data = {}
    webhook_id = lowered["webhook-id"]
    event_type: str = envelope["type"]
    prefetched = await _prefetch_payment(ledger, event_type, data)
    env = dodo_events.Env(ledger.settings, ledger.catalogue)
    event_at = dodo_events.parse_time(envelope.get("timestamp"))

    async def work(conn: asyncpg.Connection, effects: Effects) -> tuple[str, str | None]:
        inserted = await conn.fetchval(
            "INSERT INTO ledger.webhook_inbox (webhook_id, type, payload, event_timestamp, outcome) "
            "VALUES ($1, $2, $3, $4, 'received') ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id",
            webhook_id, event_type, raw, event_at,
        )
        if inserted is None:
            customer_id = await conn.fetchval(
                "SELECT customer_id FROM ledger.webhook_inbox WHERE webhook_id = $1", webhook_id
            )
            if customer_id:
                account = await postings.read_account(conn, customer_id)
                if account is not None:
                    effects.mirror(customer_id, account.balance, account.seq)
                await planstate.repush(conn, effects, customer_id)
            return "duplicate", customer_id
        outcome = await _apply_stored(env, conn, effects, webhook_id, event_type, data, prefetched, event_at)
        return outcome.outcome, outcome.customer_id

    try:
        (outcome, customer_id), effects = await ledger.transaction(work)
    except dodo_events.RetryLater as exc:
        metrics.WEBHOOKS.labels(event_type, "retry_later").inc()
        return _error(503, str(exc), "api_error", "retry_later")
    metrics.WEBHOOKS.labels(event_type if _known_type(event_type) else "other", outcome).inc()
    if outcome in ("rejected", "unmatched", "parked"):
        log.warning("webhook stored but not applied", webhook_id=webhook_id, type=event_type, outcome=outcome)
    mirrored = await ledger.after_commit(effects)
    if not mirrored:
        # Stored and applied, but the gateway's copy is stale: ask Dodo to deliver again (the
        # replay is a no-op for money and re-mirrors).
        return _error(503, "applied; hot state not updated yet", "api_error", "retry_later")
    return Reply(200, {"status": outcome, "webhook_id": webhook_id, "customer_id": customer_id})


async def _apply_stored(
    env: dodo_events.Env, conn: asyncpg.Connection, effects: Effects, webhook_id: str, event_type: str,
    data: dict[str, Any], prefetched: dict[str, dict[str, Any]], event_at: datetime,
) -> dodo_events.Outcome:
    """Apply an event already in the inbox and record the outcome on its row. `event_at` is
    Dodo's envelope timestamp (orders subscription states)."""
    applied = Effects()  # kept apart: a rolled-back savepoint must leave no effects behind
    try:
        async with conn.transaction():  # a savepoint: a malformed event still gets stored
            if event_type.startswith("subscription."):
                outcome = await subscriptions.apply_event(
                    env, conn, applied, event_type, data, event_at=event_at, webhook_id=webhook_id
                )
            else:
                outcome = await dodo_events.apply(env, conn, applied, event_type, data, prefetched)
        effects.merge(applied)
    except dodo_events.Malformed as exc:
        outcome = dodo_events.Outcome("rejected", detail=str(exc))
    await conn.execute(
        "UPDATE ledger.webhook_inbox SET outcome = $2, detail = $3, customer_id = $4, parked_payment_id = $5, "
        "applied_at = CASE WHEN $6 THEN now() END WHERE webhook_id = $1",
        webhook_id, outcome.outcome, outcome.detail, outcome.customer_id, outcome.parked_payment_id,
        outcome.applied,
    )
    return outcome


async def reapply(ledger: Ledger, webhook_id: str) -> dict[str, Any] | None:
    """Apply a stored event that was not applied (unmatched customer, parked, rejected) again,
    e.g. after the operator linked the customer. None when there is no such webhook."""
    row = await ledger.pool.fetchrow(
        "SELECT type, payload, applied_at, COALESCE(event_timestamp, received_at) AS event_at "
        "FROM ledger.webhook_inbox WHERE webhook_id = $1",
        webhook_id,
    )
    if row is None:
        return None
    if row["applied_at"] is not None:
        return {"webhook_id": webhook_id, "status": "already_applied"}
    data = json.loads(row["payload"]).get("data") or {}
    prefetched = await _prefetch_payment(ledger, row["type"], data)
    env = dodo_events.Env(ledger.settings, ledger.catalogue)

    async def work(conn: asyncpg.Connection, effects: Effects) -> dodo_events.Outcome:
        locked = await conn.fetchval(
            "SELECT applied_at IS NULL FROM ledger.webhook_inbox WHERE webhook_id = $1 FOR UPDATE", webhook_id
        )
        if not locked:
            return dodo_events.Outcome("already_applied")
        return await _apply_stored(env, conn, effects, webhook_id, row["type"], data, prefetched, row["event_at"])

    outcome, effects = await ledger.transaction(work)
    await ledger.after_commit(effects)
    return {"webhook_id": webhook_id, "status": outcome.outcome, "customer_id": outcome.customer_id}


def _known_type(event_type: str) -> bool:
    return event_type.split(".")[0] in ("payment", "refund", "dispute", "credit", "subscription")


async def _prefetch_payment(ledger: Ledger, event_type: str, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For a refund/dispute whose payment Tollgate has not seen, ask Dodo for the payment now,
    outside any transaction (no lock is held across a network call)."""
    payment_id = dodo_events.payment_id_of(event_type, data)
    if payment_id is None or ledger.dodo is None:
        return {}
    known = await ledger.pool.fetchval("SELECT 1 FROM ledger.payments WHERE payment_id = $1", payment_id)
    if known:
        return {}
    try:
        payment = await asyncio.wait_for(
            ledger.dodo.payments.retrieve(payment_id), timeout=ledger.settings.dodo_timeout_s
        )
    except Exception as exc:  # Dodo unreachable or unknown payment: the event is parked instead
        log.info("payment fetch failed; event will be parked", payment_id=payment_id, error=type(exc).__name__)
        return {}
    fetched = payment.model_dump(mode="json")
    if fetched.get("status") not in (None, "succeeded"):
        return {}
    return {payment_id: fetched}


router = APIRouter()


@router.post(
    "/webhooks/dodo",
    tags=["webhooks"],
    summary="Receive a Dodo Payments webhook (Standard Webhooks signature required)",
    responses={401: {"description": "bad signature"}, 400: {"description": "not UTF-8 JSON or not an event"},
               413: {"description": "too large"}},
)
async def dodo_webhook(request: Request) -> JSONResponse:
    ledger: Ledger = request.app.state.ledger
    limit = ledger.settings.webhook_max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        reply = _error(413, "webhook body too large", "invalid_request_error", "payload_too_large")
        return JSONResponse(reply.body, status_code=reply.status_code)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            reply = _error(413, "webhook body too large", "invalid_request_error", "payload_too_large")
            return JSONResponse(reply.body, status_code=reply.status_code)
        chunks.append(chunk)
    reply = await receive(ledger, request.headers, b"".join(chunks))
    return JSONResponse(reply.body, status_code=reply.status_code)
