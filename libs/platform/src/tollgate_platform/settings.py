"""Settings shared by every service. Each service subclasses `ServiceSettings` with its own
env prefix for its own knobs; the shared variables keep the names operators already know
(NATS_URL, DATABASE_URL, ... and the Dodo SDK's own DODO_PAYMENTS_* names). Never instantiated at
import time: `create_app(settings)` receives one."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[4]


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True)

    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias=_env("NATS_URL"))
    database_url: str = Field("postgresql://postgres@127.0.0.1:5432/tollgate", validation_alias=_env("DATABASE_URL"))
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    pricing_file: Path = Field(REPO_ROOT / "config" / "pricing.toml", validation_alias=_env("TOLLGATE_PRICING_FILE"))
    tiers_file: Path = Field(REPO_ROOT / "config" / "tiers.toml", validation_alias=_env("TOLLGATE_TIERS_FILE"))
    # 1 in dev; 3 on a NATS cluster. Used only by provisioning.
    stream_replicas: int = Field(1, validation_alias=_env("TOLLGATE_STREAM_REPLICAS"))
    otlp_endpoint: str | None = Field(None, validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    log_level: str = Field("INFO", validation_alias=_env("LOG_LEVEL"))
    log_json: bool = Field(True, validation_alias=_env("LOG_JSON"))
    run_migrations: bool = Field(True, validation_alias=_env("TOLLGATE_RUN_MIGRATIONS"))
    # Operator credential for admin APIs (ledger, tier, metering). Never a customer key.
    admin_token: SecretStr = Field(SecretStr("dev-admin-token"), validation_alias=_env("TOLLGATE_ADMIN_TOKEN"))

    dodo_api_key: SecretStr = Field(SecretStr("dodo-dev-key"), validation_alias=_env("DODO_PAYMENTS_API_KEY"))
    # The Dodo emulator's public dev secret; production sets the endpoint's real one.
    dodo_webhook_key: SecretStr = Field(
        SecretStr("whsec_dG9sbGdhdGUtZG9kby1lbXVsYXRvci1kZXYtc2VjcmV0"),
        validation_alias=_env("DODO_PAYMENTS_WEBHOOK_KEY"),
    )
    dodo_base_url: str | None = Field("http://127.0.0.1:8091", validation_alias=_env("DODO_PAYMENTS_BASE_URL"))
    dodo_environment: str | None = Field(None, validation_alias=_env("DODO_PAYMENTS_ENVIRONMENT"))
    # Where bootstrap stores the ids of what it provisioned in Dodo (products, meters, entitlement).
    dodo_catalogue_file: Path = Field(
        REPO_ROOT / ".run" / "dodo-catalogue.json", validation_alias=_env("TOLLGATE_DODO_CATALOGUE_FILE")
    )
