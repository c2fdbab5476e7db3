"""Per-customer preferences (notifier.preferences) and who receives an alert on which channel."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from tollgate_money.units import format_usd
from tollgate_notifier.settings import Channel, NotifierSettings

CHANNELS: tuple[Channel, ...] = ("email", "slack", "webhook")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return value


def mask_url(url: str | None) -> str | None:
    """Slack and webhook URLs carry their credential in the path/query: show where, not what."""
    if not url:
        return None
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    shown = "/".join(segments[:1])
    tail = "/…" if len(segments) > 1 or parts.query else ""
    return f"{parts.scheme}://{parts.netloc}/{shown}{tail}"


class PreferencesUpdate(BaseModel):
    """PUT body. A field left out keeps its stored value; an explicit null clears it (so a console
    can change the email without re-sending a webhook secret it is never shown)."""

    model_config = ConfigDict(extra="forbid")

    channels: list[Channel] | None = None
    email: str | None = None
    slack_webhook_url: str | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    low_balance_threshold_nanos: int | None = Field(None, ge=0)
    low_balance_threshold_percent: Decimal | None = Field(None, gt=0, le=100, decimal_places=3)

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: list[Channel] | None) -> list[Channel] | None:
        return None if value is None else [c for c in CHANNELS if c in value]

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError("not an email address")
        return value

    @field_validator("slack_webhook_url", "webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must be a Standard Webhooks secret (whsec_...)")
        return value


@dataclass(frozen=True, slots=True)
class Preferences:
    customer_id: str
    channels: tuple[str, ...]
    email: str | None
    slack_webhook_url: str | None
    webhook_url: str | None
    webhook_secret: str | None
    low_balance_threshold_nanos: int | None
    low_balance_threshold_percent: Decimal | None
    updated_at: datetime | None

    def public(self, stored: bool, effective_email: str | None) -> dict[str, Any]:
        threshold: dict[str, Any] | None = None
        if self.low_balance_threshold_nanos is not None:
            threshold = {
                "type": "absolute",
                "nanos": self.low_balance_threshold_nanos,
                "display": format_usd(self.low_balance_threshold_nanos),
            }
        elif self.low_balance_threshold_percent is not None:
            threshold = {
                "type": "percent_of_last_topup",
                "percent": str(self.low_balance_threshold_percent.normalize()),
            }
        return {
            "customer_id": self.customer_id,
            "stored": stored,
            "channels": list(self.channels),
            "email": self.email,
            "effective_email": effective_email,
            "slack_webhook_url": mask_url(self.slack_webhook_url),
            "slack_uses_default": self.slack_webhook_url is None,
            "webhook_url": mask_url(self.webhook_url),
            "webhook_secret_set": self.webhook_secret is not None,
            "low_balance_threshold": threshold,
            "low_balance_threshold_nanos": self.low_balance_threshold_nanos,
            "low_balance_threshold_percent": (
                str(self.low_balance_threshold_percent.normalize())
                if self.low_balance_threshold_percent is not None
                else None
            ),
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


def defaults(customer_id: str, settings: NotifierSettings) -> Preferences:
    return Preferences(customer_id, tuple(settings.default_channels), None, None, None, None, None, None, None)


def _from_row(row: asyncpg.Record) -> Preferences:
    return Preferences(
        customer_id=row["customer_id"],
        channels=tuple(row["channels"]),
        email=row["email"],
        slack_webhook_url=row["slack_webhook_url"],
        webhook_url=row["webhook_url"],
        webhook_secret=row["webhook_secret"],
        low_balance_threshold_nanos=row["low_balance_threshold_nanos"],
        low_balance_threshold_percent=row["low_balance_threshold_percent"],
        updated_at=row["updated_at"],
    )


async def load(conn: asyncpg.Connection | asyncpg.Pool, customer_id: str) -> Preferences | None:
    row = await conn.fetchrow("SELECT * FROM notifier.preferences WHERE customer_id = $1", customer_id)
    return _from_row(row) if row else None


class InvalidPreferences(ValueError):
    pass


async def update(
    pool: asyncpg.Pool, customer_id: str, change: PreferencesUpdate, settings: NotifierSettings
) -> Preferences:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('notifier.prefs:' || $1))", customer_id)
        current = await load(conn, customer_id) or defaults(customer_id, settings)
        given = change.model_fields_set
        merged: dict[str, Any] = {
            "channels": list(current.channels),
            "email": current.email,
            "slack_webhook_url": current.slack_webhook_url,
            "webhook_url": current.webhook_url,
            "webhook_secret": current.webhook_secret,
            "low_balance_threshold_nanos": current.low_balance_threshold_nanos,
            "low_balance_threshold_percent": current.low_balance_threshold_percent,
        }
        for name in given:
            value = getattr(change, name)
            merged[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
        # Setting one kind of threshold replaces the other.
        if "low_balance_threshold_nanos" in given and change.low_balance_threshold_nanos is not None:
            merged["low_balance_threshold_percent"] = None
        if "low_balance_threshold_percent" in given and change.low_balance_threshold_percent is not None:
            merged["low_balance_threshold_nanos"] = None
        if "channels" in given and merged["channels"] is None:
            merged["channels"] = list(settings.default_channels)
        if "webhook" in merged["channels"] and not (merged["webhook_url"] and merged["webhook_secret"]):
            raise InvalidPreferences("the webhook channel needs webhook_url and webhook_secret")
        row = await conn.fetchrow(
            """
            INSERT INTO notifier.preferences AS p (customer_id, channels, email, slack_webhook_url, webhook_url,
                webhook_secret, low_balance_threshold_nanos, low_balance_threshold_percent, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
            ON CONFLICT (customer_id) DO UPDATE SET channels = EXCLUDED.channels, email = EXCLUDED.email,
                slack_webhook_url = EXCLUDED.slack_webhook_url, webhook_url = EXCLUDED.webhook_url,
                webhook_secret = EXCLUDED.webhook_secret,
                low_balance_threshold_nanos = EXCLUDED.low_balance_threshold_nanos,
                low_balance_threshold_percent = EXCLUDED.low_balance_threshold_percent, updated_at = now()
            RETURNING *
            """,
            customer_id,
            merged["channels"],
            merged["email"],
            merged["slack_webhook_url"],
            merged["webhook_url"],
            merged["webhook_secret"],
            merged["low_balance_threshold_nanos"],
            merged["low_balance_threshold_percent"],
        )
        assert row is not None
        return _from_row(row)


async def ledger_email(conn: asyncpg.Connection, customer_id: str) -> str | None:
    """The ledger owns customers; read its table if it is there (the notifier may run without it)."""
    try:
        async with conn.transaction():  # a savepoint: a missing table must not abort the caller's work
            value = await conn.fetchval(
                "SELECT email FROM ledger.customers WHERE customer_id = $1", customer_id
            )
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError, asyncpg.UndefinedColumnError):
        return None
    return str(value) if value else None


@dataclass(frozen=True, slots=True)
class Target:
    channel: Channel
    address: str | None  # email address or URL; None = nowhere to send (recorded as skipped)
    skipped_reason: str | None = None


async def effective_email(conn: asyncpg.Connection, prefs: Preferences | None, customer_id: str,
                          settings: NotifierSettings) -> str | None:
    if prefs and prefs.email:
        return prefs.email
    return await ledger_email(conn, customer_id) or settings.fallback_customer_email


async def customer_targets(conn: asyncpg.Connection, customer_id: str, settings: NotifierSettings) -> list[Target]:
    prefs = await load(conn, customer_id)
    channels = prefs.channels if prefs else tuple(settings.default_channels)
    targets: list[Target] = []
    for channel in CHANNELS:
        if channel not in channels:
            continue
        if channel == "email":
            address = await effective_email(conn, prefs, customer_id, settings)
            targets.append(Target("email", address, None if address else "no email address known"))
        elif channel == "slack":
            default = settings.slack_default_webhook_url
            url = (prefs.slack_webhook_url if prefs else None) or (default.get_secret_value() if default else None)
            targets.append(Target("slack", url, None if url else "no Slack webhook configured"))
        else:
            url = prefs.webhook_url if prefs else None
            targets.append(Target("webhook", url, None if url else "no webhook URL configured"))
    return targets


def operator_targets(settings: NotifierSettings) -> list[Target]:
    slack = settings.operator_slack_webhook_url
    return [
        Target("email", settings.operator_email, None if settings.operator_email else "no operator email set"),
        Target(
            "slack",
            slack.get_secret_value() if slack else None,
            None if slack else "no operator Slack webhook set",
        ),
    ]
