"""The Redis key layout of the hot state. Every key of one customer shares the hash tag
`{c:<id>}`, so on Redis Cluster a customer's scripts run on one slot."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CustomerKeys:
    customer_id: str

    @property
    def tag(self) -> str:
        return f"{{c:{self.customer_id}}}"

    @property
    def acct(self) -> str:  # hash: balance mirror, limits, plan, counters
        return f"{self.tag}:acct"

    @property
    def holds(self) -> str:  # hash: request id -> reserved nanos
        return f"{self.tag}:holds"

    @property
    def holdexp(self) -> str:  # zset: request id -> hold expiry (ms)
        return f"{self.tag}:holdexp"

    @property
    def rl(self) -> str:  # zset: request id -> admission time (ms), the RPM sliding log
        return f"{self.tag}:rl"

    @property
    def unposted(self) -> str:  # hash: request id -> cost settled here, not yet in Postgres
        return f"{self.tag}:unposted"

    @property
    def unposted_ev(self) -> str:  # hash: request id -> the usage event, for re-publishing
        return f"{self.tag}:unposted_ev"


def api_key(key_hash: str) -> str:
    """hash: customer_id, key_id, status, models (comma list, empty = all), dodo_customer_id."""
    return f"apikey:{key_hash}"


UNPOSTED_INDEX = "usage:unposted"  # zset: "<customer>|<request id>" -> settle time (ms)
