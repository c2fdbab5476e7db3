"""What each Dodo webhook does to the ledger, inside the transaction that stores it in the inbox.

Ordering rules (Dodo does not guarantee order, and each delivery carries the latest state):
- A payment is applied once, keyed by payment id, whichever way it arrives first: its own
  `payment.succeeded` or a fetch through the SDK made on behalf of a refund/dispute about it.
- A refund or dispute about a payment Tollgate has not applied yet is *parked* in the inbox
  (outcome `parked`, parked_payment_id set) when the payment cannot be fetched; applying that
  payment later applies every parked event for it, in arrival order, in the same transaction.
- Disputes move open -> won/lost/closed once; a terminal status is never reopened by a late
  `dispute.opened`.
- `credit.*` balances only move forward in Dodo's time (`created_at` of the ledger entry).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from tollgate_contracts import subjects
from tollgate_contracts.events import DisputeLost, PaymentFailed, PaymentSucceeded, RefundSucceeded
from tollgate_ledger import outbox, postings
from tollgate_ledger.catalogue import CatalogueSource
from tollgate_ledger.effects import Effects
from tollgate_ledger.settings import LedgerSettings
from tollgate_money import NANOS_PER_CENT, credits_to_nanos

Data = dict[str, Any]

DISPUTE_STATUS = {
    "dispute.opened": "open",
    "dispute.challenged": "open",
    "dispute.won": "won",
    "dispute.lost": "lost",
    "dispute.accepted": "lost",
    "dispute.cancelled": "closed",
    "dispute.expired": "closed",
}
PAYMENT_EVENTS = ("refund.succeeded", *DISPUTE_STATUS)


class RetryLater(RuntimeError):
    """Cannot be applied correctly right now (e.g. no catalogue): answer 503, store nothing."""


class Malformed(ValueError):
    """The event is signed but lacks what its type needs; stored as rejected."""


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str  # applied | duplicate | parked | ignored | unmatched | rejected
    customer_id: str | None = None
    detail: str | None = None
    parked_payment_id: str | None = None

    @property
    def applied(self) -> bool:
        return self.outcome in ("applied", "duplicate", "ignored")


@dataclass(frozen=True, slots=True)
class Env:
    settings: LedgerSettings
    catalogue: CatalogueSource


def _req(data: Data, key: str) -> Any:
    value = data.get(key)
    if value is None or value == "":
        raise Malformed(f"data.{key} is missing")
    return value


def _int(value: Any, field: str) -> int:
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise Malformed(f"{field} is not a number") from exc
    if number != number.to_integral_value():
        raise Malformed(f"{field} is not a whole number of minor units")
    return int(number)


def parse_time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)


def payment_id_of(event_type: str, data: Data) -> str | None:
    if event_type in PAYMENT_EVENTS:
        value = data.get("payment_id")
        return str(value) if value else None
    return None


async def apply(env: Env, conn: asyncpg.Connection, effects: Effects, event_type: str, data: Data,
                prefetched: dict[str, Data]) -> Outcome:
    """Apply one event; `prefetched` holds payments fetched from Dodo before the transaction."""
    if event_type == "payment.succeeded":
        return await apply_payment(env, conn, effects, data, source="webhook")
    if event_type == "payment.failed":
        return await _payment_failed(conn, effects, data)
    if event_type in PAYMENT_EVENTS:
        payment_id = str(_req(data, "payment_id"))
        if payment_id in prefetched and not await _payment_known(conn, payment_id):
            await apply_payment(env, conn, effects, prefetched[payment_id], source="api")
        if event_type == "refund.succeeded":
            return await _refund(env, conn, effects, data)
        return await _dispute(env, conn, effects, event_type, data)
    if event_type.startswith("credit.") and event_type != "credit.balance_low":
        return await _credit_balance(env, conn, effects, event_type, data)
    return Outcome("ignored", detail="no effect on the ledger")


async def _payment_known(conn: asyncpg.Connection, payment_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM ledger.payments WHERE payment_id = $1", payment_id))


async def resolve_customer(conn: asyncpg.Connection, data: Data, effects: Effects | None = None) -> str | None:
    """metadata.tollgate_customer_id (set by our checkout links) first, else the Dodo customer."""
    metadata = data.get("metadata") or {}
    customer = data.get("customer") or {}
    dodo_id = customer.get("customer_id") if isinstance(customer, dict) else None
    wanted = metadata.get("tollgate_customer_id") if isinstance(metadata, dict) else None
    if wanted:
        found = await conn.fetchval("SELECT customer_id FROM ledger.customers WHERE customer_id = $1", str(wanted))
        if found:
            if dodo_id:
                # Learn the Dodo customer a checkout created for a customer that had none yet.
                linked = await conn.execute(
                    "UPDATE ledger.customers SET dodo_customer_id = $2 WHERE customer_id = $1 "
                    "AND dodo_customer_id IS NULL AND NOT EXISTS "
                    "(SELECT 1 FROM ledger.customers WHERE dodo_customer_id = $2)",
                    found, str(dodo_id),
                )
                if linked.endswith(" 1") and effects is not None:
                    effects.keys.add(str(found))  # the gateway's key cache carries the Dodo id
            return str(found)
    if dodo_id:
        found = await conn.fetchval(
            "SELECT customer_id FROM ledger.customers WHERE dodo_customer_id = $1", str(dodo_id)
        )
        return str(found) if found else None
    return None


def pack_credits(catalogue: CatalogueSource, data: Data) -> tuple[int, str | None]:
    """Credits the payment buys: pack credits x quantity (never total_amount, which has tax)."""
    cart = data.get("product_cart") or []
    if cart and catalogue.get() is None:
        raise RetryLater("the Dodo catalogue is not available, so packs cannot be recognised")
    credits = 0
    first_pack: str | None = None
    for item in cart:
        pack = catalogue.pack(str(item.get("product_id")))
        if pack is None:
            continue
        credits += pack.credits * _int(item.get("quantity", 1), "product_cart.quantity")
        first_pack = first_pack or pack.product_id
    return credits, first_pack


async def apply_payment(env: Env, conn: asyncpg.Connection, effects: Effects, data: Data, *, source: str) -> Outcome:
    payment_id = str(_req(data, "payment_id"))
    customer_id = await resolve_customer(conn, data, effects)
    if customer_id is None:
        return Outcome("unmatched", detail="no Tollgate customer for this payment")
    total = _int(_req(data, "total_amount"), "total_amount")
    tax = _int(data.get("tax") or 0, "tax")
    credits, product_id = pack_credits(env.catalogue, data)
    credited = credits * NANOS_PER_CENT
    inserted = await conn.fetchval(
        "INSERT INTO ledger.payments (payment_id, customer_id, total_cents, tax_cents, currency, credited_nanos, "
        "product_id, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (payment_id) DO NOTHING "
        "RETURNING payment_id",
        payment_id, customer_id, total, tax, str(data.get("currency") or "USD"), credited, product_id, source,
    )
    if inserted is None:
        return Outcome("duplicate", customer_id, "payment already applied")
    if credited > 0:
        await postings.post_entry(
            conn, effects, customer_id=customer_id, kind="topup", amount=credited,
            idempotency_key=f"payment:{payment_id}", reference=payment_id,
            reason=f"{credits} credits ({product_id})", occurred_at=parse_time(data.get("created_at")),
            default_low_percent=env.settings.default_low_threshold_percent,
        )
    await outbox.enqueue(
        conn, subjects.for_customer(subjects.PAYMENT_SUCCEEDED, customer_id),
        PaymentSucceeded(payment_id=payment_id, customer_id=customer_id, amount_cents=total - tax,
                         credited_nanos=credited, product_id=product_id),
        effects,
    )
    await _release_parked(env, conn, effects, payment_id)
    return Outcome("applied", customer_id)


async def _release_parked(env: Env, conn: asyncpg.Connection, effects: Effects, payment_id: str) -> None:
    parked = await conn.fetch(
        "SELECT webhook_id, type, payload FROM ledger.webhook_inbox WHERE parked_payment_id = $1 "
        "AND applied_at IS NULL ORDER BY received_at, webhook_id FOR UPDATE",
        payment_id,
    )
    for row in parked:
        data = json.loads(row["payload"]).get("data") or {}
        outcome = await apply(env, conn, effects, row["type"], data, {})
        await conn.execute(
            "UPDATE ledger.webhook_inbox SET outcome = $2, detail = $3, customer_id = $4, "
            "applied_at = CASE WHEN $5 THEN now() END WHERE webhook_id = $1",
            row["webhook_id"], outcome.outcome, f"released after payment {payment_id}", outcome.customer_id,
            outcome.applied,
        )


async def _payment_failed(conn: asyncpg.Connection, effects: Effects, data: Data) -> Outcome:
    payment_id = str(_req(data, "payment_id"))
    customer_id = await resolve_customer(conn, data)
    if customer_id is None:
        return Outcome("unmatched", detail="no Tollgate customer for this payment")
    total = _int(data.get("total_amount") or 0, "total_amount")
    tax = _int(data.get("tax") or 0, "tax")
    await outbox.enqueue(
        conn, subjects.for_customer(subjects.PAYMENT_FAILED, customer_id),
        PaymentFailed(payment_id=payment_id, customer_id=customer_id, amount_cents=total - tax,
                      reason=data.get("error_message") or data.get("error_code")),
        effects,
    )
    return Outcome("applied", customer_id)


@dataclass(frozen=True, slots=True)
class Reversal:
    debit_nanos: int
    net_cents: int
    reversed_cents: int
    reversed_nanos: int


def reversal(payment: asyncpg.Record, amount_cents: int) -> Reversal:
    """Take back the share amount/total of what the payment credited. Cumulative floor: each
    reversal takes floor(credited x reversed_so_far / total) minus what earlier ones took, so
    partial refunds never take a nano too much and a full refund takes back exactly everything."""
    total = payment["total_cents"]
    before = payment["reversed_cents"]
    after = min(total, before + max(amount_cents, 0))
    if total <= 0:
        return Reversal(0, 0, after, payment["reversed_nanos"])
    credited = payment["credited_nanos"]
    net = total - payment["tax_cents"]
    reversed_nanos = credited * after // total
    return Reversal(
        debit_nanos=reversed_nanos - payment["reversed_nanos"],
        net_cents=net * after // total - net * before // total,
        reversed_cents=after,
        reversed_nanos=reversed_nanos,
    )


async def _lock_payment(conn: asyncpg.Connection, payment_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM ledger.payments WHERE payment_id = $1 FOR UPDATE", payment_id)


async def _apply_reversal(conn: asyncpg.Connection, payment: asyncpg.Record, rev: Reversal) -> None:
    await conn.execute(
        "UPDATE ledger.payments SET reversed_cents = $2, reversed_nanos = $3 WHERE payment_id = $1",
        payment["payment_id"], rev.reversed_cents, rev.reversed_nanos,
    )


async def _queue_dodo_debit(env: Env, conn: asyncpg.Connection, effects: Effects, customer_id: str,
                            key: str, amount: int, reason: str) -> None:
    if amount > 0 and env.settings.dodo_sync_credits and env.settings.dodo_reverse_credits_on_refund:
        await queue_dodo_sync(conn, effects, customer_id=customer_id, key=key, entry_type="debit",
                              amount=amount, reason=reason)


async def queue_dodo_sync(conn: asyncpg.Connection, effects: Effects, *, customer_id: str, key: str,
                          entry_type: str, amount: int, reason: str) -> None:
    await conn.execute(
        "INSERT INTO ledger.dodo_sync (idempotency_key, customer_id, entry_type, amount_nanos, reason) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING",
        key, customer_id, entry_type, amount, reason,
    )
    effects.dodo_sync = True


async def _refund(env: Env, conn: asyncpg.Connection, effects: Effects, data: Data) -> Outcome:
    refund_id = str(_req(data, "refund_id"))
    payment_id = str(_req(data, "payment_id"))
    if data.get("status") not in (None, "succeeded"):
        return Outcome("ignored", detail=f"refund status {data.get('status')}")
    payment = await _lock_payment(conn, payment_id)
    if payment is None:
        return Outcome("parked", detail="payment not applied yet", parked_payment_id=payment_id)
    customer_id = payment["customer_id"]
    amount = data.get("amount")
    amount_cents = _int(amount, "amount") if amount is not None else payment["total_cents"] - payment["reversed_cents"]
    rev = reversal(payment, amount_cents)
    inserted = await conn.fetchval(
        "INSERT INTO ledger.refunds (refund_id, payment_id, amount_cents, debited_nanos) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (refund_id) DO NOTHING RETURNING refund_id",
        refund_id, payment_id, amount_cents, rev.debit_nanos,
    )
    if inserted is None:
        return Outcome("duplicate", customer_id, "refund already applied")
    await _apply_reversal(conn, payment, rev)
    if rev.debit_nanos > 0:
        await postings.post_entry(
            conn, effects, customer_id=customer_id, kind="refund", amount=-rev.debit_nanos,
            idempotency_key=f"refund:{refund_id}", reference=refund_id,
            reason=f"refund of {amount_cents} cents of payment {payment_id}",
            occurred_at=parse_time(data.get("created_at")),
            default_low_percent=env.settings.default_low_threshold_percent,
        )
    await outbox.enqueue(
        conn, subjects.for_customer(subjects.REFUND_SUCCEEDED, customer_id),
        RefundSucceeded(refund_id=refund_id, payment_id=payment_id, customer_id=customer_id,
                        amount_cents=rev.net_cents, debited_nanos=rev.debit_nanos),
        effects,
    )
    await _queue_dodo_debit(env, conn, effects, customer_id, f"refund:{refund_id}", rev.debit_nanos,
                            f"refund {refund_id}")
    return Outcome("applied", customer_id)


async def _dispute(env: Env, conn: asyncpg.Connection, effects: Effects, event_type: str, data: Data) -> Outcome:
    dispute_id = str(_req(data, "dispute_id"))
    payment_id = str(_req(data, "payment_id"))
    new_status = DISPUTE_STATUS[event_type]
    payment = await _lock_payment(conn, payment_id)
    if payment is None:
        return Outcome("parked", detail="payment not applied yet", parked_payment_id=payment_id)
    customer_id = payment["customer_id"]
    amount = data.get("amount")
    amount_cents = _int(amount, "amount") if amount not in (None, "") else payment["total_cents"]
    current = await conn.fetchval(
        "SELECT status FROM ledger.disputes WHERE dispute_id = $1 FOR UPDATE", dispute_id
    )
    if current is None:
        await conn.execute(
            "INSERT INTO ledger.disputes (dispute_id, payment_id, customer_id, status, amount_cents, closed_at) "
            "VALUES ($1, $2, $3, $4, $5, CASE WHEN $4 <> 'open' THEN now() END)",
            dispute_id, payment_id, customer_id, new_status, amount_cents,
        )
    elif current == "open" and new_status != "open":
        await conn.execute(
            "UPDATE ledger.disputes SET status = $2, closed_at = now() WHERE dispute_id = $1", dispute_id, new_status
        )
    else:
        return Outcome("duplicate", customer_id, f"dispute already {current}")
    if new_status == "lost":
        rev = reversal(payment, amount_cents)
        await _apply_reversal(conn, payment, rev)
        await conn.execute("UPDATE ledger.disputes SET debited_nanos = $2 WHERE dispute_id = $1", dispute_id,
                           rev.debit_nanos)
        if rev.debit_nanos > 0:
            await postings.post_entry(
                conn, effects, customer_id=customer_id, kind="dispute", amount=-rev.debit_nanos,
                idempotency_key=f"dispute:{dispute_id}", reference=dispute_id,
                reason=f"lost dispute of payment {payment_id}", occurred_at=parse_time(data.get("created_at")),
                default_low_percent=env.settings.default_low_threshold_percent,
            )
        await outbox.enqueue(
            conn, subjects.for_customer(subjects.DISPUTE_LOST, customer_id),
            DisputeLost(dispute_id=dispute_id, payment_id=payment_id, customer_id=customer_id,
                        amount_cents=rev.net_cents),
            effects,
        )
        await _queue_dodo_debit(env, conn, effects, customer_id, f"dispute:{dispute_id}", rev.debit_nanos,
                                f"lost dispute {dispute_id}")
    await refresh_status(conn, effects, customer_id)
    return Outcome("applied", customer_id)


async def refresh_status(conn: asyncpg.Connection, effects: Effects, customer_id: str) -> None:
    """Bump the status version and push frozen/active to the hot copy after commit."""
    row = await conn.fetchrow(
        "UPDATE ledger.accounts SET status_v = status_v + 1, updated_at = now() WHERE customer_id = $1 "
        "RETURNING status_v, "
        "EXISTS (SELECT 1 FROM ledger.disputes WHERE customer_id = $1 AND status = 'open') AS frozen",
        customer_id,
    )
    if row is not None:
        effects.status(customer_id, row["status_v"], "frozen" if row["frozen"] else "active")


async def _credit_balance(env: Env, conn: asyncpg.Connection, effects: Effects, event_type: str, data: Data) -> Outcome:
    wanted = env.catalogue.credit_entitlement_id
    entitlement = str(_req(data, "credit_entitlement_id"))
    if wanted is not None and entitlement != wanted:
        return Outcome("ignored", detail="another credit entitlement")
    dodo_customer = str(_req(data, "customer_id"))
    balance_raw = str(_req(data, "balance_after"))
    try:
        balance_nanos = credits_to_nanos(balance_raw)
    except InvalidOperation as exc:
        raise Malformed("balance_after is not a decimal") from exc
    as_of = parse_time(data.get("created_at"))
    deducted = data.get("transaction_type") in ("credit_deducted", "overage_charged") or event_type in (
        "credit.deducted", "credit.overage_charged",
    )
    await conn.execute(
        "INSERT INTO ledger.dodo_credit_balances (dodo_customer_id, credit_entitlement_id, balance, balance_nanos, "
        "overage, as_of, last_entry_id, last_deduction_at, source) VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $7, "
        "CASE WHEN $8::boolean THEN $6::timestamptz END, 'webhook') "
        "ON CONFLICT (dodo_customer_id, credit_entitlement_id) DO UPDATE SET "
        "balance = CASE WHEN EXCLUDED.as_of >= ledger.dodo_credit_balances.as_of THEN EXCLUDED.balance "
        "  ELSE ledger.dodo_credit_balances.balance END, "
        "balance_nanos = CASE WHEN EXCLUDED.as_of >= ledger.dodo_credit_balances.as_of THEN EXCLUDED.balance_nanos "
        "  ELSE ledger.dodo_credit_balances.balance_nanos END, "
        "overage = CASE WHEN EXCLUDED.as_of >= ledger.dodo_credit_balances.as_of THEN EXCLUDED.overage "
        "  ELSE ledger.dodo_credit_balances.overage END, "
        "last_entry_id = CASE WHEN EXCLUDED.as_of >= ledger.dodo_credit_balances.as_of THEN EXCLUDED.last_entry_id "
        "  ELSE ledger.dodo_credit_balances.last_entry_id END, "
        "as_of = GREATEST(EXCLUDED.as_of, ledger.dodo_credit_balances.as_of), "
        "last_deduction_at = GREATEST(EXCLUDED.last_deduction_at, ledger.dodo_credit_balances.last_deduction_at), "
        "source = 'webhook', updated_at = now()",
        dodo_customer, entitlement, balance_raw, balance_nanos, str(data.get("overage_after") or "0"), as_of,
        data.get("id"), deducted,
    )
    customer_id = await conn.fetchval(
        "SELECT customer_id FROM ledger.customers WHERE dodo_customer_id = $1", dodo_customer
    )
    if customer_id is None:
        return Outcome("applied", None, "Dodo customer not linked to a Tollgate customer")
    effects.reconcile.add(customer_id)
    return Outcome("applied", customer_id)
