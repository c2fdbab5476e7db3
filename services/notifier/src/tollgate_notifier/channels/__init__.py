"""Delivery channels. Each one sends a rendered alert or raises TransientError (retry later) or
PermanentError (record and stop)."""

from tollgate_notifier.channels.base import PermanentError, TransientError

__all__ = ["PermanentError", "TransientError"]
