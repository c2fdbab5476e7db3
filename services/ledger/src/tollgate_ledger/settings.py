"""Settings of the ledger service (env prefix LEDGER_; shared variables keep their usual names)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tollgate_money import NANOS_PER_CENT
from tollgate_platform.settings import ServiceSettings


class LedgerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEDGER_", env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 8081
    workers: int = 1
    db_pool_max: int = 20

    # Where customers land after a checkout (Dodo appends its own status query parameters).
    public_base_url: str = "http://127.0.0.1:8081"

    # Usage consumer: one transaction and one mirror per customer per batch.
    consume_usage: bool = True
    usage_batch_size: int = Field(500, ge=1, le=5000)
    usage_batch_timeout_s: float = Field(0.05, gt=0)

    # Transactional outbox relay (LISTEN/NOTIFY wakes it; the poll is the safety net).
    run_outbox_relay: bool = True
    outbox_poll_interval_s: float = Field(1.0, gt=0)
    outbox_batch_size: int = Field(200, ge=1)
    outbox_retention_days: int = Field(7, ge=1)

    # Low-balance alerts: without an explicit threshold, this share of the last top-up.
    default_low_threshold_percent: int = Field(20, ge=0, le=100)

    # Reconciliation with Dodo's credit balances.
    run_reconciler: bool = True
    reconcile_interval_s: float = Field(60.0, gt=0)
    drift_tolerance_nanos: int = Field(NANOS_PER_CENT, ge=0)
    # A difference must outlast this (two checks apart) before it counts as drift.
    drift_confirm_s: float = Field(30.0, ge=0)
    reconcile_fetch_from_dodo: bool = True

    # Mirror money movements that Dodo does not make by itself onto the Dodo credit entitlement
    # (grants always; refunds and lost disputes when Dodo does not reverse credits itself).
    dodo_sync_credits: bool = True
    dodo_reverse_credits_on_refund: bool = True
    dodo_timeout_s: float = Field(5.0, gt=0)

    webhook_max_bytes: int = Field(1024 * 1024, ge=1024)

    # A mirror that found a customer's hot state unloaded is repeated after this delay (a
    # gateway may have been loading it from a snapshot older than the change).
    remirror_delay_s: float = Field(1.0, ge=0)

    # Subscriptions: how often a cancellation scheduled for the period end is checked (Dodo's own
    # cancelled/expired event normally ends the plan first), and how seat changes are billed.
    run_plan_sweeper: bool = True
    plan_sweep_interval_s: float = Field(60.0, gt=0)
    seat_change_proration: Literal[
        "prorated_immediately", "full_immediately", "difference_immediately", "do_not_bill",
        "prorated_immediately_keep_cycle",
    ] = "prorated_immediately_keep_cycle"

    # Defaults for loading a customer's hot state when the tier service has no limits yet.
    default_rpm: int = 0
    default_tpm: int = 0
