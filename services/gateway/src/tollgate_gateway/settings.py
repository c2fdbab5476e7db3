"""Gateway configuration: `GATEWAY_*` for the gateway's own knobs, plus the unprefixed
`UPSTREAM_BASE_URL` / `UPSTREAM_API_KEY` every OpenAI-compatible deployment already knows."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from tollgate_platform.settings import REPO_ROOT, ServiceSettings


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(**{**ServiceSettings.model_config, "env_prefix": "GATEWAY_"})

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)

    upstream_base_url: str = Field("http://127.0.0.1:8090/v1", validation_alias=_alias("UPSTREAM_BASE_URL"))
    upstream_api_key: SecretStr = Field(SecretStr(""), validation_alias=_alias("UPSTREAM_API_KEY"))
    # Time to the upstream's first byte, and the longest silence between two stream chunks.
    upstream_timeout_s: float = Field(300.0, gt=0)
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    upstream_pool_size: int = Field(512, ge=1)

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # A reservation outlives the longest request it covers; streams are cut off cleanly before it
    # expires (see docs/gateway.md), so an expired hold never releases money still being spent.
    hold_ttl_ms: int = Field(900_000, ge=1000)
    min_output_tokens: int = Field(16, ge=1)
    max_inflight: int = Field(1024, ge=1)
    topup_url: str = "http://127.0.0.1:8081/billing/topup"

    key_cache_ttl_s: float = Field(1.0, gt=0)
    key_negative_ttl_s: float = Field(0.5, gt=0)
    key_cache_size: int = Field(100_000, ge=1)
    auth_failures_per_minute: int = Field(30, ge=1)

    # Bodies up to this size are bounded by their byte length (exact upper bound, no tokenizer);
    # larger ones are counted with the offline tokenizer plus a margin.
    exact_bound_max_bytes: int = Field(64 * 1024, ge=0)
    tokenizer_margin_pct: int = Field(10, ge=0)
    image_token_allowance: int = Field(1_500, ge=0)

    spool_dir: Path = REPO_ROOT / ".run" / "gateway-spool"
    publish_queue_size: int = Field(50_000, ge=1)
    # Events gather this long before one write sends them all (usage latency is not user-facing).
    publish_linger_ms: float = Field(2.0, ge=0)
    publish_max_unacked: int = Field(20_000, ge=1)
    publish_timeout_s: float = Field(2.0, gt=0)
    spool_drain_interval_s: float = Field(1.0, gt=0)
    republish_after_s: float = Field(300.0, gt=0)
    republish_interval_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _hold_outlives_upstream(self) -> GatewaySettings:
        if self.hold_ttl_ms <= self.upstream_timeout_s * 1000 + self.stream_grace_ms:
            raise ValueError("GATEWAY_HOLD_TTL_MS must exceed GATEWAY_UPSTREAM_TIMEOUT_S plus a safety margin")
        return self

    @property
    def stream_grace_ms(self) -> int:
        """How long before its hold expires a stream is ended, so settling happens under the hold."""
        return min(30_000, self.hold_ttl_ms // 10)

    @property
    def max_request_s(self) -> float:
        return (self.hold_ttl_ms - self.stream_grace_ms) / 1000
