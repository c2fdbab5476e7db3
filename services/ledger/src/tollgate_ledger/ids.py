"""Identifiers and API keys. Customer ids travel in Redis hash tags and NATS subject tokens, so
they are restricted to [A-Za-z0-9_]; keys are high-entropy, so a plain SHA-256 is enough."""

from __future__ import annotations

import hashlib
import secrets
import string

_BASE62 = string.digits + string.ascii_letters
_LOWER = string.digits + string.ascii_lowercase

KEY_PREFIX = "sk-tg-"
KEY_BODY_LENGTH = 40
VISIBLE_PREFIX_LENGTH = 12


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_customer_id() -> str:
    return f"cus_tg_{_random(_LOWER, 16)}"


def new_key_id() -> str:
    return f"key_{_random(_LOWER, 16)}"


def new_check_id() -> str:
    return f"drc_{_random(_LOWER, 20)}"


def new_api_key() -> str:
    return KEY_PREFIX + _random(_BASE62, KEY_BODY_LENGTH)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_PREFIX_LENGTH]


def normalize_models(models: list[str] | str | None) -> str:
    """Comma list without blanks or duplicates, in the order given; '' means every model."""
    items = models.split(",") if isinstance(models, str) else (models or [])
    seen: list[str] = []
    for item in (m.strip() for m in items):
        if item and item not in seen:
            seen.append(item)
    return ",".join(seen)
