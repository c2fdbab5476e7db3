"""Low-balance alerts with hysteresis: each crossing fires once, and only a balance lifted back
to the threshold re-arms it. The state lives in ledger.accounts.alert_state, changed in the same
transaction as the entry that caused it, so replicas and redeliveries cannot fire twice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AlertState = Literal["ok", "low", "depleted"]
AlertEvent = Literal["low", "depleted", "restored"]


@dataclass(frozen=True, slots=True)
class Crossing:
    state: AlertState
    event: AlertEvent | None


def low_threshold(explicit_nanos: int | None, last_topup_nanos: int, default_percent: int) -> int:
    """An explicit threshold wins; otherwise a share of the last top-up (0 before any top-up)."""
    if explicit_nanos is not None:
        return explicit_nanos
    return max(last_topup_nanos, 0) * default_percent // 100


def evaluate(state: str, balance: int, threshold: int) -> Crossing:
    if balance <= 0:
        return Crossing("depleted", None if state == "depleted" else "depleted")
    if balance < threshold:
        # From depleted, a top-up too small to reach the threshold is not a restoration, and the
        # customer already heard the worse news: stay quiet.
        return Crossing("low", "low" if state == "ok" else None)
    return Crossing("ok", None if state == "ok" else "restored")
