"""The two ways a send can fail, as the worker sees them."""

from __future__ import annotations


class DeliveryError(Exception):
    """A failed send. The message must never contain a secret (it lands in the delivery log)."""


class TransientError(DeliveryError):
    """Try again later: connection refused, timeout, 4xx SMTP reply, HTTP 429/5xx."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(DeliveryError):
    """Retrying cannot help: mailbox does not exist, webhook gone, payload rejected."""
