"""What a committed transaction still has to do outside Postgres: mirror balances into Redis,
push a status or plan change to the hot copy, wake the outbox relay, reconcile. Collected while the
transaction runs and carried out only after it commits."""

from __future__ import annotations

from dataclasses import dataclass, field

NO_BALANCE = -1  # a Mirror's seq when it only carries posted request ids


@dataclass(slots=True)
class Mirror:
    balance: int
    seq: int
    posted: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Effects:
    mirrors: dict[str, Mirror] = field(default_factory=dict)
    statuses: dict[str, tuple[int, str]] = field(default_factory=dict)  # customer -> (version, status)
    # customer -> (plan_v, hot fields): the plan as the gateway's hot copy must see it
    plans: dict[str, tuple[int, dict[str, str | int]]] = field(default_factory=dict)
    reconcile: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)  # customers whose cached key hashes must be rewritten
    outbox: bool = False
    dodo_sync: bool = False

    def mirror(self, customer_id: str, balance: int, seq: int, posted: list[str] | None = None) -> None:
        current = self.mirrors.get(customer_id)
        if current is None:
            current = self.mirrors[customer_id] = Mirror(balance, seq)
        elif seq > current.seq:
            current.balance, current.seq = balance, seq
        current.posted.update(posted or ())

    def posted(self, customer_id: str, request_ids: list[str]) -> None:
        """Usage that moved no balance (plan, Free, zero-cost) leaves the gateway's unposted set
        without a balance to mirror: seq -1 is never newer than the hot copy's."""
        self.mirror(customer_id, 0, NO_BALANCE, request_ids)

    def status(self, customer_id: str, version: int, status: str) -> None:
        current = self.statuses.get(customer_id)
        if current is None or version > current[0]:
            self.statuses[customer_id] = (version, status)

    def plan(self, customer_id: str, version: int, fields: dict[str, str | int]) -> None:
        current = self.plans.get(customer_id)
        if current is None or version > current[0]:
            self.plans[customer_id] = (version, fields)

    def merge(self, other: Effects) -> None:
        for cid, m in other.mirrors.items():
            self.mirror(cid, m.balance, m.seq, sorted(m.posted))
        for cid, (version, status) in other.statuses.items():
            self.status(cid, version, status)
        for cid, (version, fields) in other.plans.items():
            self.plan(cid, version, fields)
        self.reconcile |= other.reconcile
        self.keys |= other.keys
        self.outbox = self.outbox or other.outbox
        self.dodo_sync = self.dodo_sync or other.dodo_sync
