"""Credit entitlements engine: grants, FIFO debits, overage, expiry and low-balance alerts.

Balances are derived from grants (sum of the remaining amount of unexpired grants); every change
writes one CreditLedgerEntry and emits its `credit.*` webhook. All arithmetic is Decimal.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .decimals import ZERO, decimal_places, fmt
from .errors import ApiError, bad_request, not_found
from .ids import new_id
from .state import Obj
from .timeutil import iso, now_iso, parse_dt, utcnow

if TYPE_CHECKING:
    from .runtime import Emulator


def get_entitlement(emu: Emulator, ce_id: str, *, include_deleted: bool = False) -> Obj:
    ce = emu.state.credit_entitlements.get(ce_id)
    if ce is None or (ce.get("_deleted") and not include_deleted):
        raise not_found("credit entitlement", ce_id)
    return ce


def get_customer(emu: Emulator, customer_id: str) -> Obj:
    customer = emu.state.customers.get(customer_id)
    if customer is None:
        raise not_found("customer", customer_id)
    return customer


def check_amount_precision(ce: Obj, amount: Decimal, field: str) -> None:
    if decimal_places(amount) > ce["precision"]:
        raise bad_request(f"{field} has more decimal places than the entitlement's precision ({ce['precision']})")


def balance_key(ce_id: str, customer_id: str) -> str:
    return f"{ce_id}:{customer_id}"


def find_balance(emu: Emulator, ce_id: str, customer_id: str) -> Obj | None:
    return emu.state.balances.get(balance_key(ce_id, customer_id))


def ensure_balance(emu: Emulator, ce_id: str, customer_id: str) -> Obj:
    key = balance_key(ce_id, customer_id)
    balance = emu.state.balances.get(key)
    if balance is None:
        now = now_iso()
        balance = {
            "id": new_id("cbl"),
            "credit_entitlement_id": ce_id,
            "customer_id": customer_id,
            "overage": "0",
            "created_at": now,
            "updated_at": now,
            "last_transaction_at": None,
        }
        emu.state.balances[key] = balance
    return balance


def active_grants(emu: Emulator, ce_id: str, customer_id: str) -> list[Obj]:
    # Insertion order is creation order, which is the FIFO order Dodo documents.
    return [
        g for g in emu.state.grants.values()
        if g["credit_entitlement_id"] == ce_id and g["customer_id"] == customer_id
        and not g["is_expired"] and Decimal(g["remaining_amount"]) > 0
    ]


def balance_of(emu: Emulator, ce_id: str, customer_id: str) -> Decimal:
    return sum((Decimal(g["remaining_amount"]) for g in active_grants(emu, ce_id, customer_id)), ZERO)


def overage_of(emu: Emulator, ce_id: str, customer_id: str) -> Decimal:
    balance = find_balance(emu, ce_id, customer_id)
    return Decimal(balance["overage"]) if balance else ZERO


def render_balance(emu: Emulator, balance: Obj) -> Obj:
    ce = emu.state.credit_entitlements[balance["credit_entitlement_id"]]
    precision = ce["precision"]
    return {
        "id": balance["id"],
        "balance": fmt(balance_of(emu, ce["id"], balance["customer_id"]), precision),
        "overage": fmt(balance["overage"], precision),
        "credit_entitlement_id": ce["id"],
        "customer_id": balance["customer_id"],
        "created_at": balance["created_at"],
        "updated_at": balance["updated_at"],
        "last_transaction_at": balance["last_transaction_at"],
    }


def render_grant(emu: Emulator, grant: Obj) -> Obj:
    precision = emu.state.credit_entitlements[grant["credit_entitlement_id"]]["precision"]
    out = {k: v for k, v in grant.items() if not k.startswith("_")}
    out["initial_amount"] = fmt(grant["initial_amount"], precision)
    out["remaining_amount"] = fmt(grant["remaining_amount"], precision)
    return out


def grant_status(grant: Obj) -> str:
    if grant["is_expired"]:
        return "expired"
    return "depleted" if Decimal(grant["remaining_amount"]) <= 0 else "active"


def _write_entry(
    emu: Emulator,
    ce: Obj,
    customer_id: str,
    *,
    amount: Decimal,
    is_credit: bool,
    transaction_type: str,
    before: tuple[Decimal, Decimal],
    after: tuple[Decimal, Decimal],
    grant_id: str | None,
    reference_type: str | None,
    reference_id: str | None,
    description: str | None,
    metadata: dict[str, Any] | None,
    reason: str | None = None,
) -> Obj:
    precision = ce["precision"]
    now = now_iso()
    entry: Obj = {
        "id": new_id("cle"),
        "amount": fmt(amount, precision),
        "balance_before": fmt(before[0], precision),
        "balance_after": fmt(after[0], precision),
        "overage_before": fmt(before[1], precision),
        "overage_after": fmt(after[1], precision),
        "brand_id": emu.settings.brand_id,
        "business_id": emu.settings.business_id,
        "credit_entitlement_id": ce["id"],
        "customer_id": customer_id,
        "is_credit": is_credit,
        "metadata": dict(metadata or {}),
        "transaction_type": transaction_type,
        "description": description,
        "grant_id": grant_id,
        "reference_id": reference_id,
        "reference_type": reference_type,
        "created_at": now,
        "_reason": reason,
    }
    emu.state.ledger[entry["id"]] = entry
    balance = ensure_balance(emu, ce["id"], customer_id)
    balance["updated_at"] = now
    balance["last_transaction_at"] = now
    return entry


def grant_credits(
    emu: Emulator,
    ce_id: str,
    customer_id: str,
    amount: Decimal,
    *,
    source_type: str,
    source_id: str | None,
    transaction_type: str = "credit_added",
    webhook: str = "credit.added",
    reference_type: str | None = None,
    reference_id: str | None = None,
    expires_after_days: int | None = None,
    expires_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    description: str | None = None,
    reason: str | None = None,
) -> tuple[Obj, Obj]:
    ce = get_entitlement(emu, ce_id)
    balance = ensure_balance(emu, ce_id, customer_id)
    before = balance_of(emu, ce_id, customer_id)
    overage_before = Decimal(balance["overage"])
    days = expires_after_days if expires_after_days is not None else ce.get("expires_after_days")
    if expires_at is None and days:
        expires_at = utcnow() + timedelta(days=days)
    now = now_iso()
    grant: Obj = {
        "id": new_id("cgr"),
        "credit_entitlement_id": ce_id,
        "customer_id": customer_id,
        "initial_amount": str(amount),
        "remaining_amount": str(amount),
        "is_expired": False,
        "is_rolled_over": False,
        "rollover_count": 0,
        "source_type": source_type,
        "source_id": source_id,
        "expires_at": iso(expires_at) if expires_at else None,
        "metadata": dict(metadata or {}),
        "parent_grant_id": None,
        "created_at": now,
        "updated_at": now,
    }
    emu.state.grants[grant["id"]] = grant
    overage_after = overage_before
    if ce["overage_behavior"] == "carry_deficit_auto_repay" and overage_before > 0:
        # New credits pay down the carried deficit first.
        repay = min(overage_before, amount)
        grant["remaining_amount"] = str(amount - repay)
        overage_after = overage_before - repay
        balance["overage"] = str(overage_after)
    after = before + Decimal(grant["remaining_amount"])
    entry = _write_entry(
        emu, ce, customer_id, amount=amount, is_credit=True, transaction_type=transaction_type,
        before=(before, overage_before), after=(after, overage_after), grant_id=grant["id"],
        reference_type=reference_type, reference_id=reference_id, description=description,
        metadata=metadata, reason=reason,
    )
    emu.webhooks.emit(webhook, kind="credit_ledger_entry", ref_id=entry["id"])
    return entry, grant


def debit_credits(
    emu: Emulator,
    ce_id: str,
    customer_id: str,
    amount: Decimal,
    *,
    record_shortfall: bool,
    transaction_type: str = "credit_deducted",
    webhook: str = "credit.deducted",
    reference_type: str | None = None,
    reference_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    description: str | None = None,
    reason: str | None = None,
) -> Obj:
    """Take `amount` FIFO from the grants.

    With `record_shortfall` (usage deductions) what the grants cannot cover becomes overage;
    without it (API debits) a debit beyond the balance is refused unless overage is enabled.
    """
    ce = get_entitlement(emu, ce_id)
    balance = ensure_balance(emu, ce_id, customer_id)
    before = balance_of(emu, ce_id, customer_id)
    overage_before = Decimal(balance["overage"])
    shortfall = max(amount - before, ZERO)
    if shortfall > 0 and not record_shortfall:
        if not ce["overage_enabled"]:
            raise ApiError(400, "INSUFFICIENT_CREDIT_BALANCE",
                           f"debit of {fmt(amount, ce['precision'])} exceeds the balance of "
                           f"{fmt(before, ce['precision'])}")
        limit = ce.get("overage_limit")
        if limit is not None and overage_before + shortfall > Decimal(limit):
            raise ApiError(400, "CREDIT_OVERAGE_LIMIT_REACHED", "debit would exceed the overage limit")
    remaining = amount
    first_grant: str | None = None
    now = now_iso()
    for grant in active_grants(emu, ce_id, customer_id):
        if remaining <= 0:
            break
        take = min(remaining, Decimal(grant["remaining_amount"]))
        grant["remaining_amount"] = str(Decimal(grant["remaining_amount"]) - take)
        grant["updated_at"] = now
        remaining -= take
        first_grant = first_grant or grant["id"]
    overage_after = overage_before + remaining
    balance["overage"] = str(overage_after)
    after = before - (amount - remaining)
    entry = _write_entry(
        emu, ce, customer_id, amount=amount, is_credit=False, transaction_type=transaction_type,
        before=(before, overage_before), after=(after, overage_after), grant_id=first_grant,
        reference_type=reference_type, reference_id=reference_id, description=description,
        metadata=metadata, reason=reason,
    )
    emu.webhooks.emit(webhook, kind="credit_ledger_entry", ref_id=entry["id"])
    check_low_balance(emu, ce, customer_id, before, after)
    return entry


def expire_grant(emu: Emulator, grant: Obj, *, description: str) -> Obj | None:
    ce = emu.state.credit_entitlements[grant["credit_entitlement_id"]]
    customer_id = grant["customer_id"]
    amount = Decimal(grant["remaining_amount"])
    before = balance_of(emu, ce["id"], customer_id)
    overage = overage_of(emu, ce["id"], customer_id)
    grant["remaining_amount"] = "0"
    grant["is_expired"] = True
    grant["updated_at"] = now_iso()
    if amount <= 0:
        return None
    entry = _write_entry(
        emu, ce, customer_id, amount=amount, is_credit=False, transaction_type="credit_expired",
        before=(before, overage), after=(before - amount, overage), grant_id=grant["id"],
        reference_type="grant", reference_id=grant["id"], description=description, metadata=None,
    )
    emu.webhooks.emit("credit.expired", kind="credit_ledger_entry", ref_id=entry["id"])
    return entry


def expire_due_grants(emu: Emulator) -> int:
    now = utcnow()
    expired = 0
    for grant in list(emu.state.grants.values()):
        if not grant["is_expired"] and grant["expires_at"] and parse_dt(grant["expires_at"]) <= now:
            expire_grant(emu, grant, description="grant reached its expiry date")
            expired += 1
    return expired


def reset_overage(emu: Emulator, ce_id: str, customer_id: str, *, reference_id: str) -> Obj | None:
    ce = emu.state.credit_entitlements[ce_id]
    balance = find_balance(emu, ce_id, customer_id)
    if balance is None or ce["overage_behavior"] not in ("forgive_at_reset", "invoice_at_billing"):
        return None
    overage = Decimal(balance["overage"])
    if overage <= 0:
        return None
    current = balance_of(emu, ce_id, customer_id)
    balance["overage"] = "0"
    entry = _write_entry(
        emu, ce, customer_id, amount=overage, is_credit=True, transaction_type="overage_reset",
        before=(current, overage), after=(current, ZERO), grant_id=None,
        reference_type="subscription", reference_id=reference_id,
        description="overage reset at the start of a billing period", metadata=None,
    )
    emu.webhooks.emit("credit.overage_reset", kind="credit_ledger_entry", ref_id=entry["id"])
    return entry


def check_low_balance(emu: Emulator, ce: Obj, customer_id: str, before: Decimal, after: Decimal) -> None:
    # Dodo ties credit.balance_low to a subscription (its payload requires subscription_id).
    for sub in emu.state.subscriptions.values():
        if sub["customer_id"] != customer_id or sub["status"] != "active":
            continue
        product = emu.state.products.get(sub["product_id"])
        if product is None:
            continue
        for mapping in product["credit_entitlements"]:
            percent = mapping.get("low_balance_threshold_percent")
            if mapping["credit_entitlement_id"] != ce["id"] or percent is None:
                continue
            per_cycle = subscription_credits(sub, mapping)
            threshold = per_cycle * Decimal(percent) / Decimal(100)
            if before >= threshold > after:
                precision = ce["precision"]
                emu.webhooks.emit(
                    "credit.balance_low",
                    kind="credit_balance_low",
                    data={
                        "available_balance": fmt(after, precision),
                        "brand_id": emu.settings.brand_id,
                        "credit_entitlement_id": ce["id"],
                        "credit_entitlement_name": ce["name"],
                        "customer_id": customer_id,
                        "subscription_credits_amount": fmt(per_cycle, precision),
                        "subscription_id": sub["subscription_id"],
                        "threshold_amount": fmt(threshold, precision),
                        "threshold_percent": percent,
                    },
                )


def subscription_credits(sub: Obj, mapping: Obj) -> Decimal:
    override = (sub.get("_credit_overrides") or {}).get(mapping["credit_entitlement_id"], {})
    amount = override.get("credits_amount") or mapping["credits_amount"]
    return Decimal(amount) * int(sub["quantity"])
