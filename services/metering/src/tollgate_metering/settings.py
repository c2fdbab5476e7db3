"""Metering settings: `METERING_*` knobs on top of the shared service settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tollgate_platform.settings import ServiceSettings

MissingCustomerPolicy = Literal["deadletter", "skip_plan_usage"]


class MeteringSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="METERING_", env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 8083

    # Batching: Dodo takes at most 1000 events per ingest call.
    batch_max_events: int = Field(1000, ge=1, le=1000)
    flush_interval_ms: int = Field(200, ge=1)
    fetch_batch: int = Field(1000, ge=1)
    # Messages fetched but not yet acked, per replica (memory bound; stays well under the
    # consumer's max_ack_pending so several replicas can share it).
    max_held_messages: int = Field(6000, ge=1)
    senders: int = Field(4, ge=1)  # concurrent ingest calls per replica

    # Dodo calls: the SDK never retries (max_retries=0), this service does.
    dodo_timeout_s: float = Field(10.0, gt=0)
    local_attempts: int = Field(4, ge=1)  # tries of one batch before its messages go back to NATS
    backoff_base_s: float = Field(0.25, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    nak_delay_max_s: float = Field(60.0, gt=0)

    # Dodo rejects events stamped more than 1 hour ago; stop short of it.
    max_event_age_s: float = Field(55 * 60, gt=0)
    # Credit usage without a Dodo customer is always dead-lettered (it is money); plan usage may be
    # skipped (counted and logged) when such customers are expected, e.g. Free plan sign-ups that
    # never reached Dodo.
    missing_customer_policy: MissingCustomerPolicy = "deadletter"

    lag_poll_s: float = Field(2.0, gt=0)
    # How long a catalogue-less start waits between looks for the bootstrap's file.
    catalogue_poll_s: float = Field(2.0, gt=0)
    drain_timeout_s: float = Field(15.0, gt=0)
