"""Posting usage from the gateway's `usage.recorded` events, a batch per transaction.

Credits usage becomes a `usage` entry keyed `usage:<request id>`; subscription and free usage
(and zero-cost requests) go to ledger.plan_usage without touching the balance, and a period's
subscription usage crossing the plan's soft cap publishes softcap.reached (once per period).
After commit the hot copy is mirrored once per customer with every request id of the batch
(uncharged ones too: the gateway keeps every settled event until it is posted), including those
that were already posted: a redelivery after a crash between commit and ack must
still clear them from the gateway's unposted set.

A balance may go negative here: the request already ran, and the gateway's reservation bounds
how far (zero for settled costs within their hold); the ledger records what happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from tollgate_contracts.events import UsageRecorded
from tollgate_ledger import alerts, metrics, softcap
from tollgate_ledger.context import Ledger
from tollgate_ledger.effects import Effects
from tollgate_ledger.postings import SELECT_ACCOUNTS, Account, publish_balance


def usage_key(request_id: str) -> str:
    return f"usage:{request_id}"


class BatchConflict(RuntimeError):
    """An entry of the batch was inserted concurrently under another customer's lock: retry."""


@dataclass
class BatchResult:
    posted: int = 0
    duplicates: int = 0
    uncharged: int = 0
    unknown_customers: list[UsageRecorded] = field(default_factory=list)


def charges_credits(event: UsageRecorded) -> bool:
    return event.billing_mode == "credits" and event.cost_nanos > 0


async def post_usage(ledger: Ledger, events: list[UsageRecorded], *, strict_mirror: bool = True) -> BatchResult:
    unique: dict[str, UsageRecorded] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    batch = list(unique.values())

    async def work(conn: asyncpg.Connection, effects: Effects) -> BatchResult:
        return await _post_in_transaction(conn, effects, batch, ledger.settings.default_low_threshold_percent)

    with metrics.USAGE_BATCH_SECONDS.time():
        result, effects = await ledger.transaction(work)
        await ledger.after_commit(effects, strict=strict_mirror)
    metrics.USAGE_BATCH_SIZE.observe(len(events))
    metrics.USAGE_DUPLICATES.inc(result.duplicates + len(events) - len(batch))
    return result


async def _post_in_transaction(
    conn: asyncpg.Connection, effects: Effects, batch: list[UsageRecorded], default_low_percent: int
) -> BatchResult:
    result = BatchResult()
    charged = [e for e in batch if charges_credits(e)]
    uncharged = [e for e in batch if not charges_credits(e)]

    # Lock every account the batch charges, in one order (no deadlock between replicas).
    accounts: dict[str, Account] = {}
    if charged:
        rows = await conn.fetch(
            SELECT_ACCOUNTS + " WHERE customer_id = ANY($1::text[]) ORDER BY customer_id FOR UPDATE",
            sorted({e.customer_id for e in charged}),
        )
        accounts = {r["customer_id"]: Account.from_row(r) for r in rows}
    known_uncharged: set[str] = set()
    if uncharged:
        known_uncharged = {
            r["customer_id"]
            for r in await conn.fetch(
                "SELECT customer_id FROM ledger.customers WHERE customer_id = ANY($1::text[])",
                sorted({e.customer_id for e in uncharged}),
            )
        }
    result.unknown_customers = [e for e in charged if e.customer_id not in accounts] + [
        e for e in uncharged if e.customer_id not in known_uncharged
    ]
    charged = [e for e in charged if e.customer_id in accounts]
    uncharged = [e for e in uncharged if e.customer_id in known_uncharged]

    # Under the locks nobody else can post these customers' entries: what exists now is final.
    existing = {
        r["idempotency_key"]
        for r in await conn.fetch(
            "SELECT idempotency_key FROM ledger.entries WHERE idempotency_key = ANY($1::text[])",
            [usage_key(e.event_id) for e in charged],
        )
    } if charged else set()

    new_by_customer: dict[str, list[UsageRecorded]] = {}
    for event in charged:
        if usage_key(event.event_id) in existing:
            result.duplicates += 1
        else:
            new_by_customer.setdefault(event.customer_id, []).append(event)
        # Every request id of the batch is posted after this commit (now or earlier).
        account = accounts[event.customer_id]
        effects.mirror(event.customer_id, account.balance, account.seq, [event.event_id])

    if new_by_customer:
        await _insert_entries(conn, effects, accounts, new_by_customer, default_low_percent)
        result.posted = sum(len(v) for v in new_by_customer.values())
        metrics.USAGE_POSTED.labels("credits").inc(result.posted)

    if uncharged:
        inserted = await _insert_plan_usage(conn, uncharged)
        result.uncharged = len(inserted)
        result.duplicates += len(uncharged) - len(inserted)
        for event in uncharged:
            metrics.USAGE_POSTED.labels(event.billing_mode).inc()
        await softcap.record(conn, effects, [e for e in uncharged if e.event_id in inserted])
        for event in uncharged:
            effects.posted(event.customer_id, [event.event_id])

    await _touch_keys(conn, charged + uncharged)
    return result


async def _insert_entries(
    conn: asyncpg.Connection,
    effects: Effects,
    accounts: dict[str, Account],
    new_by_customer: dict[str, list[UsageRecorded]],
    default_low_percent: int,
) -> None:
    cols: dict[str, list[object]] = {name: [] for name in (
        "customer_id", "seq", "amount", "balance_after", "key", "reference", "model", "input", "cached",
        "output", "reasoning", "list_price", "book", "estimated", "key_id", "reason", "occurred_at",
    )}
    final: list[tuple[str, int, int, str]] = []
    for customer_id in sorted(new_by_customer):
        account = accounts[customer_id]
        balance, seq = account.balance, account.seq
        for event in new_by_customer[customer_id]:
            seq += 1
            balance -= event.cost_nanos
            for name, value in (
                ("customer_id", customer_id), ("seq", seq), ("amount", -event.cost_nanos),
                ("balance_after", balance), ("key", usage_key(event.event_id)), ("reference", event.event_id),
                ("model", event.model), ("input", event.input_tokens), ("cached", event.cached_input_tokens),
                ("output", event.output_tokens), ("reasoning", event.reasoning_tokens),
                ("list_price", event.list_price_nanos), ("book", event.price_book_version),
                ("estimated", event.estimated), ("key_id", event.key_id),
                ("reason", None if event.status == "ok" else event.status), ("occurred_at", event.occurred_at),
            ):
                cols[name].append(value)
        threshold = alerts.low_threshold(account.low_threshold, account.last_topup, default_low_percent)
        crossing = alerts.evaluate(account.alert_state, balance, threshold)
        final.append((customer_id, balance, seq, crossing.state))
        effects.mirror(customer_id, balance, seq)
        if crossing.event is not None:
            await publish_balance(
                conn, effects, customer_id=customer_id, balance=balance, seq=seq, threshold=threshold,
                last_topup=account.last_topup, reason="usage", alert=crossing.event, updated=False,
            )
    inserted = await conn.fetch(
        "INSERT INTO ledger.entries (customer_id, seq, kind, amount_nanos, balance_after, idempotency_key, "
        "reference, model, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, list_price_nanos, "
        "price_book_version, estimated, key_id, reason, occurred_at) "
        "SELECT c, s, 'usage', a, b, k, r, m, it, ct, ot, rt, lp, pv, est, kid, rsn, oat FROM unnest("
        "$1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::int[], "
        "$9::int[], $10::int[], $11::int[], $12::bigint[], $13::text[], $14::bool[], $15::text[], $16::text[], "
        "$17::timestamptz[]) AS t(c, s, a, b, k, r, m, it, ct, ot, rt, lp, pv, est, kid, rsn, oat) "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key",
        *cols.values(),
    )
    if len(inserted) != len(cols["key"]):
        # A request id reused under another customer: never guess, roll back and let the caller
        # retry (the retry sees it as existing) or dead-letter it.
        raise BatchConflict(f"{len(cols['key']) - len(inserted)} usage entries collided")
    await conn.execute(
        "UPDATE ledger.accounts a SET balance_nanos = v.b, seq = v.s, alert_state = v.st, updated_at = now() "
        "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) AS v(c, b, s, st) "
        "WHERE a.customer_id = v.c",
        [f[0] for f in final], [f[1] for f in final], [f[2] for f in final], [f[3] for f in final],
    )


async def _insert_plan_usage(conn: asyncpg.Connection, events: list[UsageRecorded]) -> set[str]:
    rows = await conn.fetch(
        "INSERT INTO ledger.plan_usage (request_id, customer_id, billing_mode, plan, model, input_tokens, "
        "output_tokens, list_price_nanos, occurred_at) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[], "
        "$8::bigint[], $9::timestamptz[]) ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        [e.event_id for e in events], [e.customer_id for e in events], [e.billing_mode for e in events],
        [e.plan for e in events], [e.model for e in events], [e.input_tokens for e in events],
        [e.output_tokens for e in events], [e.list_price_nanos for e in events], [e.occurred_at for e in events],
    )
    return {r["request_id"] for r in rows}


async def _touch_keys(conn: asyncpg.Connection, events: list[UsageRecorded]) -> None:
    latest: dict[str, datetime] = {}
    for event in events:
        if event.key_id and (event.key_id not in latest or event.occurred_at > latest[event.key_id]):
            latest[event.key_id] = event.occurred_at
    if not latest:
        return
    ordered = sorted(latest)
    await conn.execute(
        "UPDATE ledger.api_keys k SET last_used_at = GREATEST(COALESCE(k.last_used_at, v.t), v.t) "
        "FROM unnest($1::text[], $2::timestamptz[]) AS v(id, t) WHERE k.key_id = v.id",
        ordered, [latest[k] for k in ordered],
    )
