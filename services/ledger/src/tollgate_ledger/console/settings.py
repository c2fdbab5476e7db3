"""Console knobs (env prefix LEDGER_CONSOLE_). Read when the ledger app is created, next to the
ledger's own settings, whose admin token, public URL and tiers file the console reuses."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_ledger.settings import LedgerSettings


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEDGER_CONSOLE_", env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    # Signs the session cookie. Unset: derived from the admin token, so every replica agrees
    # without more configuration; set it to rotate sessions independently of the admin token.
    secret: SecretStr | None = None
    session_ttl_s: int = Field(12 * 3600, ge=60)
    link_ttl_s: int = Field(24 * 3600, ge=60)
    # None: Secure cookies exactly when the ledger's public URL is https.
    secure_cookies: bool | None = None
    # Alert channels live in the notifier; its admin API is called with this token (default: the
    # shared TOLLGATE_ADMIN_TOKEN, which is what the notifier checks).
    notifier_url: str = "http://127.0.0.1:8084"
    notifier_token: SecretStr | None = None
    notifier_timeout_s: float = Field(2.0, gt=0)
    # Failed sign-ins per client address and 5 minutes before the form answers 429.
    sign_in_failures: int = Field(20, ge=1)
    page_size: int = Field(50, ge=5, le=500)


def signing_secret(console: ConsoleSettings, ledger: LedgerSettings) -> bytes:
    if console.secret is not None:
        return console.secret.get_secret_value().encode()
    admin = ledger.admin_token.get_secret_value().encode()
    return hmac.new(admin, b"tollgate-console-session", hashlib.sha256).digest()


def notifier_token(console: ConsoleSettings, ledger: LedgerSettings) -> str:
    token = console.notifier_token or ledger.admin_token
    return token.get_secret_value()


def secure_cookies(console: ConsoleSettings, ledger: LedgerSettings) -> bool:
    if console.secure_cookies is not None:
        return console.secure_cookies
    return ledger.public_base_url.startswith("https://")
