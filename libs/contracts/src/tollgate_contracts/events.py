"""Versioned event schemas. Money is integer nanos (see tollgate_money.units), tokens are ints,
times are timezone-aware UTC. A breaking change means a new `vN` model and a new subject."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)

    @property
    def msg_id(self) -> str:
        """The Nats-Msg-Id: stable per business fact, so a republish is a duplicate."""
        raise NotImplementedError


BillingMode = Literal["credits", "subscription", "free"]
UsageStatus = Literal["ok", "client_disconnected", "upstream_error", "cut_off"]


class UsageRecorded(Event):
    """One completed (or aborted) gateway request. event_id = request id, everywhere."""

    event_id: str
    customer_id: str
    dodo_customer_id: str | None = None
    key_id: str
    endpoint: str
    model: str  # the model that served (and was billed)
    requested_model: str
    input_tokens: int = Field(ge=0)
    cached_input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)
    cost_nanos: int = Field(ge=0)  # charged to credits (0 for subscription usage)
    list_price_nanos: int = Field(ge=0)  # what the tokens cost at list price (caps, Dodo meters)
    price_book_version: str
    billing_mode: BillingMode = "credits"
    plan: str | None = None
    estimated: bool = False
    status: UsageStatus = "ok"
    started_at: datetime

    @property
    def msg_id(self) -> str:
        return self.event_id


class PaymentSucceeded(Event):
    payment_id: str
    customer_id: str
    amount_cents: int
    credited_nanos: int
    product_id: str | None = None

    @property
    def msg_id(self) -> str:
        return f"payment:{self.payment_id}"


class PaymentFailed(Event):
    payment_id: str
    customer_id: str
    amount_cents: int
    reason: str | None = None

    @property
    def msg_id(self) -> str:
        return f"payment-failed:{self.payment_id}"


class RefundSucceeded(Event):
    refund_id: str
    payment_id: str
    customer_id: str
    amount_cents: int
    debited_nanos: int

    @property
    def msg_id(self) -> str:
        return f"refund:{self.refund_id}"


class DisputeLost(Event):
    dispute_id: str
    payment_id: str
    customer_id: str
    amount_cents: int

    @property
    def msg_id(self) -> str:
        return f"dispute-lost:{self.dispute_id}"


class BalanceChanged(Event):
    """balance.updated / .low / .depleted / .restored. seq is the customer's ledger version."""

    customer_id: str
    balance_nanos: int
    seq: int
    threshold_nanos: int | None = None
    last_topup_nanos: int | None = None
    reason: str

    @property
    def msg_id(self) -> str:
        return f"balance:{self.customer_id}:{self.seq}:{self.reason}"


class SubscriptionChanged(Event):
    customer_id: str
    subscription_id: str
    plan: str  # free / plus / team / enterprise
    status: str
    seats: int = 1
    period_start: datetime | None = None
    period_end: datetime | None = None
    webhook_id: str

    @property
    def msg_id(self) -> str:
        return f"subscription:{self.webhook_id}"


class SoftCapReached(Event):
    customer_id: str
    plan: str
    period_start: datetime
    cap_nanos: int
    used_nanos: int
    fallback_model: str | None = None

    @property
    def msg_id(self) -> str:
        return f"softcap:{self.customer_id}:{self.period_start.isoformat()}"


class DriftDetected(Event):
    customer_id: str
    tollgate_nanos: int
    in_flight_nanos: int
    dodo_nanos: int
    drift_nanos: int
    check_id: str

    @property
    def msg_id(self) -> str:
        return f"drift:{self.check_id}"


class TierChanged(Event):
    customer_id: str
    old_tier: str | None
    new_tier: str
    lifetime_spend_nanos: int
    rpm: int
    tpm: int
    pinned: bool = False
    cause: str  # the payment/refund/dispute id or "operator"
    # The customer's limits version (Redis `limits_v`): orders changes, and keeps two operator
    # changes to the same tier (pin, unpin, pin again) from looking like one duplicate.
    version: int | None = None

    @property
    def msg_id(self) -> str:
        if self.version is not None:
            return f"tier:{self.customer_id}:v{self.version}"
        return f"tier:{self.customer_id}:{self.cause}:{self.new_tier}"


class DeadLetter(Event):
    service: str
    original_subject: str
    original_msg_id: str | None
    reason: str
    payload: str  # the original bytes, utf-8 (base64 if not text)
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    deliveries: int = 1

    @property
    def msg_id(self) -> str:
        return f"dlq:{self.service}:{self.original_msg_id or self.occurred_at.isoformat()}"
