"""Chaos profiles: how much load and how many faults. `reduced` runs in the normal suite (and is
`make test-chaos`'s default); `full` on demand with CHAOS_PROFILE=full. CHAOS_SEED replays a run."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    grant_customers: int  # small operator grants: they run dry during the run
    pack_customers: int  # bought a pack through the Dodo checkout (webhooks), a few refunded
    refunds: int
    concurrency: int  # requests in flight at once, across both gateways
    max_requests: int
    load_s: float  # the pace is max_requests over load_s; the load stops when the faults are done
    fault_rounds: int  # how often the fault catalogue is walked through
    drain_timeout_s: float


REDUCED = Profile(
    name="reduced", grant_customers=22, pack_customers=8, refunds=2, concurrency=12, max_requests=2500,
    load_s=55.0, fault_rounds=1, drain_timeout_s=120.0,
)
FULL = Profile(
    name="full", grant_customers=160, pack_customers=40, refunds=8, concurrency=24, max_requests=30_000,
    load_s=480.0, fault_rounds=4, drain_timeout_s=300.0,
)
PROFILES = {p.name: p for p in (REDUCED, FULL)}


def chosen_profile(default: str = "reduced") -> Profile:
    name = os.environ.get("CHAOS_PROFILE", default)
    if name not in PROFILES:
        raise ValueError(f"CHAOS_PROFILE must be one of {sorted(PROFILES)}, not {name!r}")
    return PROFILES[name]


def chosen_seed() -> int:
    raw = os.environ.get("CHAOS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(1, 2**31)
