"""Every NATS subject Tollgate uses. Customer-scoped subjects end in the customer id so a stream
can be filtered (or a replay done) for one customer."""

from __future__ import annotations

# USAGE stream
USAGE_RECORDED = "usage.recorded"  # usage.recorded.<customer_id>

# BILLING stream (published by the ledger's outbox)
PAYMENT_SUCCEEDED = "billing.payment.succeeded"
PAYMENT_FAILED = "billing.payment.failed"
REFUND_SUCCEEDED = "billing.refund.succeeded"
DISPUTE_LOST = "billing.dispute.lost"
BALANCE_UPDATED = "billing.balance.updated"
BALANCE_LOW = "billing.balance.low"
BALANCE_DEPLETED = "billing.balance.depleted"
BALANCE_RESTORED = "billing.balance.restored"
SUBSCRIPTION_CHANGED = "billing.subscription.changed"
SOFTCAP_REACHED = "billing.softcap.reached"
DRIFT_DETECTED = "billing.drift.detected"

# TIERS stream
TIER_CHANGED = "tier.changed"

# DEADLETTER stream: deadletter.<service>.<original subject>
DEADLETTER = "deadletter"

# Core NATS (not persisted): hints that let every gateway replica drop a cached entry at once.
CACHE_INVALIDATE_KEY = "cache.invalidate.key"  # payload: key hash
CACHE_INVALIDATE_CUSTOMER = "cache.invalidate.customer"  # payload: customer id


def for_customer(base: str, customer_id: str) -> str:
    if not customer_id or any(c in customer_id for c in ".*> \t\r\n"):
        raise ValueError(f"customer id {customer_id!r} cannot be a subject token")
    return f"{base}.{customer_id}"


def deadletter(service: str, original_subject: str) -> str:
    return f"{DEADLETTER}.{service}.{original_subject}"
