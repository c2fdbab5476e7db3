"""In-memory state of the emulated Dodo account, with optional JSON persistence.

Objects are stored as plain JSON-compatible dicts close to their wire shape (decimal strings for
credits, integer cents for money, ISO strings for times), so that persistence is a plain dump and
renderers only add the fields that are derived from other objects. Keys starting with `_` are
internal and never rendered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

Obj = dict[str, Any]

TABLES = (
    "customers",
    "products",
    "addons",
    "meters",
    "credit_entitlements",
    "balances",
    "grants",
    "ledger",
    "payments",
    "refunds",
    "disputes",
    "subscriptions",
    "checkouts",
    "events",
    "webhook_endpoints",
    "messages",
    "deliveries",
)


class State:
    def __init__(self) -> None:
        self.customers: dict[str, Obj] = {}
        self.products: dict[str, Obj] = {}
        self.addons: dict[str, Obj] = {}
        self.meters: dict[str, Obj] = {}
        self.credit_entitlements: dict[str, Obj] = {}
        # Keyed by f"{credit_entitlement_id}:{customer_id}".
        self.balances: dict[str, Obj] = {}
        self.grants: dict[str, Obj] = {}
        self.ledger: dict[str, Obj] = {}
        self.payments: dict[str, Obj] = {}
        self.refunds: dict[str, Obj] = {}
        self.disputes: dict[str, Obj] = {}
        self.subscriptions: dict[str, Obj] = {}
        self.checkouts: dict[str, Obj] = {}
        self.events: dict[str, Obj] = {}
        self.webhook_endpoints: dict[str, Obj] = {}
        self.messages: dict[str, Obj] = {}
        self.deliveries: dict[str, Obj] = {}
        # Ingestion order of events; meter->credit links keep a cursor into it.
        self.event_log: list[str] = []
        self.link_cursors: dict[str, int] = {}
        # Meter units not yet worth a whole credit quantum, per link and customer (exact strings).
        self.unit_remainders: dict[str, str] = {}
        self.ledger_idempotency: dict[str, str] = {}
        self.webhook_idempotency: dict[str, str] = {}
        self.counters: dict[str, int] = {}

    def bump(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def to_json(self) -> bytes:
        doc: Obj = {name: getattr(self, name) for name in TABLES}
        doc.update(
            event_log=self.event_log,
            link_cursors=self.link_cursors,
            unit_remainders=self.unit_remainders,
            ledger_idempotency=self.ledger_idempotency,
            webhook_idempotency=self.webhook_idempotency,
            counters=self.counters,
        )
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, raw: bytes) -> State:
        doc = orjson.loads(raw)
        state = cls()
        for name in (*TABLES, "event_log", "link_cursors", "unit_remainders", "ledger_idempotency",
                     "webhook_idempotency", "counters"):
            if name in doc:
                setattr(state, name, doc[name])
        return state

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.to_json())
        # Atomic replace so that a crash mid-write never leaves a truncated state file.
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls()
        return cls.from_json(path.read_bytes())


def public(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if not k.startswith("_")}
