"""The hot state in Redis: balance mirror, reservations, rate limits and plan counters."""

from tollgate_hotstate.hotstate import (
    AdmitRequest,
    AdmitResult,
    Admitted,
    Frozen,
    HotState,
    NeedsLoad,
    NoFunds,
    RateLimited,
    create_redis,
)
from tollgate_hotstate.keys import CustomerKeys, api_key

__all__ = [
    "AdmitRequest",
    "AdmitResult",
    "Admitted",
    "CustomerKeys",
    "Frozen",
    "HotState",
    "NeedsLoad",
    "NoFunds",
    "RateLimited",
    "api_key",
    "create_redis",
]
