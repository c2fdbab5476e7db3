"""Configuration of the tier service (env prefix TIER_; shared variables keep their own names)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from tollgate_platform.settings import ServiceSettings


class TierSettings(ServiceSettings):
    model_config = SettingsConfigDict(**{**ServiceSettings.model_config, "env_prefix": "TIER_"})

    host: str = "127.0.0.1"
    port: int = 8082
    # A preset of config/tiers.toml ("tollgate", "openai"); None = the file's own `preset`.
    tier_preset: str | None = Field(
        None, validation_alias=AliasChoices("TIER_TIER_PRESET", "TIER_PRESET", "tier_preset")
    )
    # How often customers are re-evaluated without a billing event: an account growing old
    # enough for a higher tier (openai preset), or a changed tiers file.
    sweep_interval_s: float = Field(300.0, gt=0)
    # The outbox relay wakes at once after each commit; this poll only picks up rows another
    # replica left behind or a failed publish.
    relay_poll_s: float = Field(1.0, gt=0)
    relay_batch: int = Field(200, ge=1)
    consumer_batch: int = Field(32, ge=1)
    # Published outbox rows are kept this long for operators, then pruned.
    outbox_retention_days: int = Field(7, ge=1)
