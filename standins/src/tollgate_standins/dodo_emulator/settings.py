"""Runtime settings of the Dodo emulator, read from `DODO_EMULATOR_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# A fixed dev secret so that local services can be configured once and keep verifying webhooks
# across emulator restarts. base64("tollgate-dodo-emulator-dev-secret").
DEV_WEBHOOK_SECRET = "whsec_dG9sbGdhdGUtZG9kby1lbXVsYXRvci1kZXYtc2VjcmV0"  # noqa: S105 - public dev value


class EmulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DODO_EMULATOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8091
    # Where browsers reach the emulator (used in checkout_url); defaults to http://{host}:{port}.
    public_url: str | None = None
    state_file: Path | None = None
    deduct_interval_s: float = Field(default=2.0, gt=0)
    webhook_retry_factor: float = Field(default=0.001, ge=0)
    webhook_timeout_s: float = Field(default=15.0, gt=0)
    # Deliveries in flight per endpoint. Dodo (Svix) sends in parallel and promises no order;
    # 1 gives strict emission order, for tests that want it.
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    webhook_secret: str = DEV_WEBHOOK_SECRET
    api_key: str | None = None
    business_id: str = "bus_tollgatedev0000001"
    brand_id: str = "bus_tollgatedev0000001"
    log_level: str = "info"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"
