"""Request bodies, modelled on the SDK's `*_params.py` TypedDicts (unknown fields are ignored)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
TaxCategory = Literal["digital_products", "saas", "e_book", "edtech", "live_tutoring"]
TimeInterval = Literal["Day", "Week", "Month", "Year"]
OverageBehavior = Literal["forgive_at_reset", "invoice_at_billing", "carry_deficit", "carry_deficit_auto_repay"]
MetadataValue = str | bool | int | float
Metadata = dict[str, MetadataValue]
SubscriptionStatus = Literal["pending", "active", "on_hold", "paused", "cancelled", "failed", "expired", "past_due"]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]

WEBHOOK_EVENT_TYPES = (
    "payment.succeeded", "payment.failed", "payment.processing", "payment.cancelled", "refund.succeeded",
    "refund.failed", "dispute.opened", "dispute.expired", "dispute.accepted", "dispute.cancelled",
    "dispute.challenged", "dispute.won", "dispute.lost", "subscription.active", "subscription.renewed",
    "subscription.on_hold", "subscription.past_due", "subscription.paused", "subscription.unpaused",
    "subscription.cancelled", "subscription.failed", "subscription.expired", "subscription.plan_changed",
    "subscription.updated", "subscription.update_payment_method", "license_key.created", "payout.created",
    "payout.on_hold", "payout.in_progress", "payout.failed", "payout.success", "credit.added",
    "credit.deducted", "credit.expired", "credit.rolled_over", "credit.rollover_forfeited",
    "credit.overage_charged", "credit.overage_reset", "credit.manual_adjustment", "credit.balance_low",
    "abandoned_checkout.detected", "abandoned_checkout.recovered", "dunning.started", "dunning.recovered",
    "entitlement_grant.created", "entitlement_grant.delivered", "entitlement_grant.failed",
    "entitlement_grant.revoked",
)
WebhookEventType = Literal[WEBHOOK_EVENT_TYPES]  # type: ignore[valid-type]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- customers --------------------------------------------------------------------------------

class CustomerCreate(Body):
    email: NonEmpty
    name: str
    metadata: Metadata | None = None
    phone_number: str | None = None
    preferred_locale: str | None = None


class CustomerUpdate(Body):
    email: NonEmpty | None = None
    name: str | None = None
    metadata: Metadata | None = None
    phone_number: str | None = None
    preferred_locale: str | None = None


# -- products, prices, add-ons ----------------------------------------------------------------

class _PriceBase(BaseModel):
    # Extra price fields (trial options, PPP, ...) are kept and echoed back as given.
    model_config = ConfigDict(extra="allow")

    currency: Currency
    discount: int | None = None
    discount_bps: int | None = Field(default=None, ge=0, le=10000)
    purchasing_power_parity: bool | None = None
    tax_inclusive: bool | None = None


class OneTimePriceIn(_PriceBase):
    type: Literal["one_time_price"]
    price: int = Field(ge=0)
    pay_what_you_want: bool | None = None
    suggested_price: int | None = None


class _RecurringFields(_PriceBase):
    payment_frequency_count: int = Field(ge=1)
    payment_frequency_interval: TimeInterval
    subscription_period_count: int = Field(ge=1)
    subscription_period_interval: TimeInterval
    trial_period_days: int | None = Field(default=None, ge=0)


class RecurringPriceIn(_RecurringFields):
    type: Literal["recurring_price"]
    price: int = Field(ge=0)
    trial_amount: int | None = Field(default=None, ge=0)


class MeterPriceIn(Body):
    meter_id: NonEmpty
    credit_entitlement_id: str | None = None
    meter_units_per_credit: str | None = None
    price_per_unit: str | None = None
    free_threshold: int | None = Field(default=None, ge=0)


class UsageBasedPriceIn(_RecurringFields):
    type: Literal["usage_based_price"]
    fixed_price: int = Field(ge=0)
    meters: list[MeterPriceIn] | None = None


PriceIn = Annotated[OneTimePriceIn | RecurringPriceIn | UsageBasedPriceIn, Field(discriminator="type")]


class AttachCreditIn(Body):
    credit_entitlement_id: NonEmpty
    credits_amount: str
    currency: Currency | None = None
    expires_after_days: int | None = Field(default=None, ge=0)
    low_balance_threshold_percent: int | None = Field(default=None, ge=0, le=100)
    max_rollover_count: int | None = None
    overage_behavior: OverageBehavior | None = None
    overage_enabled: bool | None = None
    overage_limit: str | None = None
    price_per_unit: str | None = None
    proration_behavior: Literal["prorate", "no_prorate"] | None = None
    rollover_enabled: bool | None = None
    rollover_percentage: int | None = Field(default=None, ge=0, le=100)
    rollover_timeframe_count: int | None = None
    rollover_timeframe_interval: TimeInterval | None = None
    trial_credits: str | None = None
    trial_credits_expire_after_trial: bool | None = None


class ProductCreate(Body):
    name: str
    price: PriceIn
    tax_category: TaxCategory
    addons: list[str] | None = None
    brand_id: str | None = None
    credit_entitlements: list[AttachCreditIn] | None = Field(default=None, max_length=5)
    description: str | None = None
    metadata: Metadata | None = None
    pricing_mode: Literal["by_currency", "by_country"] | None = None
    license_key_enabled: bool | None = None


class ProductUpdate(Body):
    name: str | None = None
    price: PriceIn | None = None
    tax_category: TaxCategory | None = None
    addons: list[str] | None = None
    brand_id: str | None = None
    credit_entitlements: list[AttachCreditIn] | None = Field(default=None, max_length=5)
    description: str | None = None
    metadata: Metadata | None = None
    pricing_mode: Literal["by_currency", "by_country"] | None = None


class AddonCreate(Body):
    currency: Currency
    name: NonEmpty
    price: int = Field(ge=0)
    tax_category: TaxCategory
    description: str | None = None


class AddonUpdate(Body):
    currency: Currency | None = None
    name: NonEmpty | None = None
    price: int | None = Field(default=None, ge=0)
    tax_category: TaxCategory | None = None
    description: str | None = None


# -- checkout ---------------------------------------------------------------------------------

class AddonQuantityIn(Body):
    addon_id: NonEmpty
    quantity: int = Field(ge=0)


class CartCreditIn(Body):
    credit_entitlement_id: NonEmpty
    credits_amount: str


class CartItemIn(Body):
    product_id: NonEmpty
    quantity: int = Field(ge=1)
    addons: list[AddonQuantityIn] | None = None
    amount: int | None = Field(default=None, ge=0)
    credit_entitlements: list[CartCreditIn] | None = None


class CheckoutCustomerIn(Body):
    customer_id: str | None = None
    email: str | None = None
    name: str | None = None
    phone_number: str | None = None


class BillingIn(Body):
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    city: str | None = None
    state: str | None = None
    street: str | None = None
    zipcode: str | None = None


class OnDemandIn(Body):
    mandate_only: bool
    product_price: int | None = Field(default=None, ge=0)
    product_currency: Currency | None = None
    product_description: str | None = None


class SubscriptionDataIn(Body):
    trial_period_days: int | None = Field(default=None, ge=0)
    on_demand: OnDemandIn | None = None


class CheckoutCreate(Body):
    product_cart: list[CartItemIn] = Field(max_length=20)
    customer: CheckoutCustomerIn | None = None
    billing_address: BillingIn | None = None
    billing_currency: Currency | None = None
    return_url: str | None = None
    cancel_url: str | None = None
    metadata: Metadata | None = None
    subscription_data: SubscriptionDataIn | None = None
    confirm: bool = False
    payment_method_id: str | None = None
    discount_codes: list[str] | None = None


class CheckoutPayIn(Body):
    email: str | None = None
    name: str | None = None


# -- refunds, disputes ------------------------------------------------------------------------

class RefundItemIn(Body):
    item_id: NonEmpty
    amount: int | None = Field(default=None, ge=1)
    tax_inclusive: bool = True


class RefundCreate(Body):
    payment_id: NonEmpty
    items: list[RefundItemIn] | None = None
    metadata: Metadata | None = None
    reason: str | None = None
    currency: Currency | None = None


class DisputeControlIn(Body):
    outcome: Literal["opened", "lost", "won"]
    amount: int | None = Field(default=None, ge=1)
    remarks: str | None = None


# -- subscriptions ----------------------------------------------------------------------------

class SubscriptionCreditCartIn(Body):
    credit_entitlement_id: NonEmpty
    credits_amount: str | None = None
    expires_after_days: int | None = None
    low_balance_threshold_percent: int | None = Field(default=None, ge=0, le=100)
    max_rollover_count: int | None = None
    overage_enabled: bool | None = None
    overage_limit: str | None = None
    rollover_enabled: bool | None = None
    rollover_percentage: int | None = None
    rollover_timeframe_count: int | None = None
    rollover_timeframe_interval: TimeInterval | None = None


class SubscriptionUpdate(Body):
    billing: BillingIn | None = None
    cancel_at_next_billing_date: bool | None = None
    cancel_reason: str | None = None
    cancellation_comment: str | None = None
    cancellation_feedback: Literal[
        "too_expensive", "missing_features", "switched_service", "unused", "customer_service", "low_quality",
        "too_complex", "other",
    ] | None = None
    credit_entitlement_cart: list[SubscriptionCreditCartIn] | None = None
    customer_business_name: str | None = None
    customer_name: str | None = None
    metadata: Metadata | None = None
    next_billing_date: datetime | None = None
    pause: bool | None = None
    status: SubscriptionStatus | None = None
    subscription_period_count: int | None = None
    subscription_period_interval: TimeInterval | None = None
    tax_id: str | None = None


ProrationMode = Literal[
    "prorated_immediately", "full_immediately", "difference_immediately", "do_not_bill",
    "prorated_immediately_keep_cycle",
]


class ChangePlanIn(Body):
    product_id: NonEmpty
    quantity: int = Field(ge=1)
    proration_billing_mode: ProrationMode
    addons: list[AddonQuantityIn] | None = None
    effective_at: Literal["immediately", "next_billing_date"] = "immediately"
    metadata: Metadata | None = None
    on_payment_failure: Literal["prevent_change", "apply_change"] | None = None


class ChargeIn(Body):
    product_price: int = Field(ge=1)
    product_currency: Currency | None = None
    product_description: str | None = None
    metadata: Metadata | None = None


# -- meters and events ------------------------------------------------------------------------

class AggregationIn(Body):
    type: Literal["count", "sum", "max", "last"]
    key: str | None = None


class FilterConditionIn(Body):
    key: NonEmpty
    operator: Literal[
        "equals", "not_equals", "greater_than", "greater_than_or_equals", "less_than", "less_than_or_equals",
        "contains", "does_not_contain",
    ]
    value: MetadataValue


class MeterFilterIn(Body):
    conjunction: Literal["and", "or"]
    clauses: list[FilterConditionIn] | list[MeterFilterIn]


class MeterCreate(Body):
    aggregation: AggregationIn
    event_name: NonEmpty
    measurement_unit: NonEmpty
    name: NonEmpty
    description: str | None = None
    filter: MeterFilterIn | None = None


class MeterUpdate(Body):
    description: str | None = None
    measurement_unit: NonEmpty | None = None
    name: NonEmpty | None = None


class EventIn(Body):
    event_id: NonEmpty
    customer_id: NonEmpty
    event_name: NonEmpty
    timestamp: datetime | None = None
    metadata: Metadata | None = None


class IngestIn(Body):
    events: list[EventIn]


# -- credit entitlements ----------------------------------------------------------------------

class CreditEntitlementCreate(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    overage_enabled: bool
    precision: int = Field(ge=0, le=10)
    rollover_enabled: bool
    unit: NonEmpty
    currency: Currency | None = None
    description: Annotated[str, StringConstraints(max_length=1000)] | None = None
    expires_after_days: int | None = Field(default=None, ge=0)
    max_rollover_count: int | None = Field(default=None, ge=0)
    overage_behavior: OverageBehavior | None = None
    overage_limit: int | None = Field(default=None, ge=0)
    price_per_unit: str | None = None
    rollover_percentage: int | None = Field(default=None, ge=0, le=100)
    rollover_timeframe_count: int | None = Field(default=None, ge=1)
    rollover_timeframe_interval: TimeInterval | None = None


class CreditEntitlementUpdate(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    unit: NonEmpty | None = None
    currency: Currency | None = None
    description: Annotated[str, StringConstraints(max_length=1000)] | None = None
    expires_after_days: int | None = Field(default=None, ge=0)
    max_rollover_count: int | None = Field(default=None, ge=0)
    overage_behavior: OverageBehavior | None = None
    overage_enabled: bool | None = None
    overage_limit: int | None = Field(default=None, ge=0)
    price_per_unit: str | None = None
    rollover_enabled: bool | None = None
    rollover_percentage: int | None = Field(default=None, ge=0, le=100)
    rollover_timeframe_count: int | None = Field(default=None, ge=1)
    rollover_timeframe_interval: TimeInterval | None = None


class LedgerEntryIn(Body):
    amount: str
    entry_type: Literal["credit", "debit"]
    expires_at: datetime | None = None
    idempotency_key: str | None = None
    metadata: Metadata | None = None
    reason: str | None = None


# -- webhook endpoints ------------------------------------------------------------------------

class WebhookCreate(Body):
    url: NonEmpty
    description: str | None = None
    disabled: bool | None = None
    filter_types: list[WebhookEventType] | None = None
    headers: dict[str, str] | None = None
    idempotency_key: str | None = None
    metadata: dict[str, str] | None = None
    rate_limit: int | None = Field(default=None, ge=0)


class WebhookUpdate(Body):
    url: NonEmpty | None = None
    description: str | None = None
    disabled: bool | None = None
    filter_types: list[WebhookEventType] | None = None
    metadata: dict[str, str] | None = None
    rate_limit: int | None = Field(default=None, ge=0)


class WebhookHeadersIn(Body):
    headers: dict[str, str]
