"""Notifier settings (env prefix NOTIFIER_). Defaults point at the local stand-ins (SMTP sink on
1025, Slack sink on 8092) so a dev box sends somewhere harmless; production swaps them by env."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from tollgate_platform.settings import ServiceSettings

Channel = Literal["email", "slack", "webhook"]
SmtpTls = Literal["none", "starttls", "implicit"]


def _default_channels() -> list[Channel]:
    return ["email", "slack"]


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(**{**ServiceSettings.model_config, "env_prefix": "NOTIFIER_"})

    host: str = "0.0.0.0"
    port: int = 8084

    # --- email (SMTP)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_tls: SmtpTls = "none"
    smtp_validate_certs: bool = True
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = 15.0
    email_from: str = "Tollgate <alerts@tollgate.local>"
    # Used for the deterministic Message-ID of each alert email (same id on every retry).
    message_id_domain: str = "notifier.tollgate.local"

    # --- Slack. Webhook URLs are credentials (anyone holding one can post), hence SecretStr.
    slack_default_webhook_url: SecretStr | None = SecretStr("http://127.0.0.1:8092/services/T000/B000/XXXX")
    http_timeout_s: float = 10.0

    # --- who gets what
    default_channels: list[Channel] = Field(default_factory=_default_channels)
    # Customer alerts for a customer with no known address go here (None: the email is skipped).
    fallback_customer_email: str | None = None
    operator_email: str | None = "ops@tollgate.local"
    operator_slack_webhook_url: SecretStr | None = SecretStr(
        "http://127.0.0.1:8092/services/T000/B000/OPERATOR"
    )
    notify_on_restore: bool = True
    topup_url: str = "http://127.0.0.1:8081/billing/top-up?customer_id={customer_id}"
    product_name: str = "Tollgate"

    # --- delivery retries: exponential from retry_base_s, doubling, capped at retry_max_s, with
    # +/- retry_jitter. Production keeps the defaults (seconds to an hour); tests compress them.
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0
    retry_jitter: float = 0.2
    # How long each channel keeps trying before a delivery is marked failed. Mail relays retry
    # for days, so email keeps going for 3 days; a Slack alert older than a day is noise.
    email_give_up_after_s: float = 3 * 24 * 3600.0
    slack_give_up_after_s: float = 24 * 3600.0
    webhook_give_up_after_s: float = 3 * 24 * 3600.0

    # --- worker
    worker_concurrency: int = Field(8, ge=1)
    worker_batch: int = Field(32, ge=1)
    worker_poll_s: float = Field(1.0, gt=0)
    # A claimed delivery is invisible to other replicas for this long; if this replica dies
    # mid-send another one retries after the lease. Must exceed the slowest send.
    claim_lease_s: float = Field(120.0, gt=0)
    # How long a replica keeps trying to record an attempt's outcome (a sent alert left unrecorded
    # is sent again after the lease): long enough for a Postgres restart or failover.
    record_retry_s: float = Field(300.0, gt=0)
    shutdown_drain_s: float = 15.0

    # Handlers wait for a connection when all are busy; 3 replicas x 10 stays well inside
    # Postgres' default 100 connections next to the other services.
    db_pool_max: int = Field(10, ge=2)

    # --- consumers
    consumer_batch: int = Field(16, ge=1)
    # Transient failures (Postgres down) nak with this delay so the message comes back later.
    nak_delay_s: float = 5.0

    @model_validator(mode="after")
    def _lease_outlives_a_send(self) -> NotifierSettings:
        if self.claim_lease_s <= max(self.smtp_timeout_s, self.http_timeout_s) * 2:
            raise ValueError("claim_lease_s must exceed twice the SMTP/HTTP timeouts")
        return self

    def give_up_after_s(self, channel: str) -> float:
        return {
            "email": self.email_give_up_after_s,
            "slack": self.slack_give_up_after_s,
            "webhook": self.webhook_give_up_after_s,
        }[channel]
