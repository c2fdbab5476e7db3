"""A Hypothesis state machine over the ledger and the gateway's hot state: any interleaving of
top-ups (signed webhooks), reservations, settlements, hold expiries, usage posting (duplicated
and reordered), refunds (also before their payment), webhook replays and Redis losses keeps the
invariants:

- Postgres: balance = sum of entries = the last entry's balance_after, seq = number of entries,
  and the balance equals the model's (credits bought - refunded share - posted usage);
- no idempotency key and no request id is used twice;
- Redis: reserved = sum of open holds (and the model's), unposted = settled-but-unposted usage;
- the hot copy's posted part (bal, seq, status) equals what a rebuild from Postgres would load;
- available never goes below -(refunded credits + usage that was in flight when Redis was lost).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger.support import CENT, PACK_5, PACK_20, payment_succeeded, refund_succeeded, settings_for, signed, usage_event
from support.servers import Infra
from tollgate_contracts.events import UsageRecorded
from tollgate_hotstate import AdmitRequest, Admitted, CustomerKeys, HotState, NeedsLoad, create_redis
from tollgate_hotstate.loader import load_customer
from tollgate_ledger import MIGRATIONS_DIR, webhooks
from tollgate_ledger.catalogue import CatalogueSource
from tollgate_ledger.context import Ledger
from tollgate_ledger.usage import post_usage
from tollgate_platform.db import create_pool, migrate_async

T = TypeVar("T")


@dataclass
class Payment:
    payment_id: str
    customer: str
    credits: int
    total: int
    event: dict[str, Any]
    delivered: bool = False
    refunded_cents: int = 0  # asked for by refunds so far (delivered or parked)
    applied_reversed: int = 0  # cents reversed in the ledger
    reversed_nanos: int = 0
    parked: list[int] = field(default_factory=list)


@dataclass
class Hold:
    customer: str
    amount: int
    expired: bool = False


class Harness:
    """A private event loop and ledger runtime (no HTTP server): the state machine is synchronous."""

    def __init__(self, infra: Infra, catalogue: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.settings = settings_for(infra, catalogue)
        self.ledger = self.run(self._open())

    async def _open(self) -> Ledger:
        await migrate_async(self.settings.database_url, MIGRATIONS_DIR, "ledger")
        pool = await create_pool(self.settings.database_url, max_size=4)
        hot = HotState(create_redis(self.settings.redis_url, max_connections=16))
        return Ledger(self.settings, pool, hot, CatalogueSource(self.settings.dodo_catalogue_file))

    def run(self, work: Awaitable[T]) -> T:
        return self.loop.run_until_complete(work)

    def close(self) -> None:
        async def shut() -> None:
            await self.ledger.hot.redis.aclose()
            await self.ledger.pool.close()

        self.run(shut())
        self.loop.close()


class LedgerMachine(RuleBasedStateMachine):
    harness: Harness

    def __init__(self) -> None:
        super().__init__()
        self.h = type(self).harness
        self.customers: list[str] = []
        self.payments_by_id: dict[str, Payment] = {}
        self.open_holds: dict[str, Hold] = {}
        self.settled: dict[str, UsageRecorded] = {}  # settled in the gateway, not posted yet
        self.in_redis: set[str] = set()  # settled request ids the hot copy still counts as unposted
        self.posted: dict[str, UsageRecorded] = {}
        self.sent: list[tuple[bytes, dict[str, str]]] = []
        self.lost_in_flush: dict[str, int] = {}

    @property
    def ledger(self) -> Ledger:
        return self.h.ledger

    @property
    def hot(self) -> HotState:
        return self.h.ledger.hot

    @initialize()
    def create_customers(self) -> None:
        async def create() -> list[str]:
            ids = [f"cus_tg_sm{uuid.uuid4().hex[:12]}" for _ in range(2)]
            async with self.ledger.pool.acquire() as conn:
                for cid in ids:
                    await conn.execute("INSERT INTO ledger.customers (customer_id, email, name) VALUES ($1, $2, 'SM')",
                                       cid, f"{cid}@example.com")
                    await conn.execute("INSERT INTO ledger.accounts (customer_id) VALUES ($1)", cid)
            return ids

        self.customers = self.h.run(create())
        self.lost_in_flush = dict.fromkeys(self.customers, 0)
        for index in range(len(self.customers)):  # start funded, so reservations have money to hold
            self.deliver_payment(self.create_payment(index, 1, 0, 0))

    # -- webhooks ---------------------------------------------------------------------------

    def _send(self, event: dict[str, Any]) -> str:
        body, headers = signed(event)
        reply = self.h.run(webhooks.receive(self.ledger, headers, body))
        assert reply.status_code == 200, reply.body
        self.sent.append((body, headers))
        return str(reply.body["status"])

    @rule(customer=st.integers(0, 1), fives=st.integers(0, 2), twenties=st.integers(0, 1), tax=st.integers(0, 99))
    def new_payment(self, customer: int, fives: int, twenties: int, tax: int) -> None:
        self.create_payment(customer, fives, twenties, tax)

    def create_payment(self, customer: int, fives: int, twenties: int, tax: int) -> str:
        packs = [(p, q) for p, q in ((PACK_5, fives), (PACK_20, twenties)) if q]
        if not packs:
            packs = [(PACK_5, 1)]
        cid = self.customers[customer]
        event = payment_succeeded(cid, packs=packs, tax=tax)
        pid = str(event["data"]["payment_id"])
        credits = sum(p.credits * q for p, q in packs)
        self.payments_by_id[pid] = Payment(pid, cid, credits, event["data"]["total_amount"], event)
        return pid

    @precondition(lambda self: self.payments_by_id)
    @rule(data=st.data())
    def deliver_a_payment(self, data: st.DataObject) -> None:
        self.deliver_payment(data.draw(st.sampled_from(list(self.payments_by_id))))

    def deliver_payment(self, pid: str) -> None:
        payment = self.payments_by_id[pid]
        status = self._send(payment.event)
        assert status == ("duplicate" if payment.delivered else "applied")
        if not payment.delivered:
            payment.delivered = True
            for amount in payment.parked:
                self._model_reverse(payment, amount)
            payment.parked.clear()

    @precondition(lambda self: self.payments_by_id)
    @rule(data=st.data(), share=st.integers(1, 100))
    def refund(self, data: st.DataObject, share: int) -> None:
        payment = self.payments_by_id[data.draw(st.sampled_from(list(self.payments_by_id)))]
        pid = payment.payment_id
        left = payment.total - payment.refunded_cents
        if left <= 0:
            return
        amount = max(1, left * share // 100)
        payment.refunded_cents += amount
        status = self._send(refund_succeeded(pid, amount))
        if payment.delivered:
            assert status == "applied"
            self._model_reverse(payment, amount)
        else:
            assert status == "parked"
            payment.parked.append(amount)

    def _model_reverse(self, payment: Payment, amount: int) -> None:
        payment.applied_reversed = min(payment.total, payment.applied_reversed + amount)
        payment.reversed_nanos = payment.credits * CENT * payment.applied_reversed // payment.total

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def replay_webhook(self, data: st.DataObject) -> None:
        body, headers = data.draw(st.sampled_from(self.sent))
        reply = self.h.run(webhooks.receive(self.ledger, headers, body))
        assert reply.status_code == 200 and reply.body["status"] == "duplicate"

    # -- the gateway's side -----------------------------------------------------------------

    @rule(customer=st.integers(0, 1), amount=st.integers(1, 150 * CENT), percent=st.none() | st.integers(0, 100))
    def request(self, customer: int, amount: int, percent: int | None) -> None:
        """Admit a request; settle it at once at `percent` of its hold, or leave it in flight."""
        rid = self.admit(customer, amount)
        if rid is not None and percent is not None:
            self.settle_hold(rid, percent)

    def admit(self, customer: int, amount: int) -> str | None:
        cid = self.customers[customer]
        rid = f"req_{uuid.uuid4().hex}"
        request = AdmitRequest(rid, "gpt-4o-mini", 1, amount, 0, 0, 0, 600_000, 0, check_rate=False)
        result = self.h.run(self.hot.admit(cid, request))
        if isinstance(result, NeedsLoad):
            self.h.run(load_customer(self.ledger.pool, self.hot, cid, 0, 0))
            result = self.h.run(self.hot.admit(cid, request))
        # Every admission first sweeps expired holds, whatever its own verdict.
        for old, hold in list(self.open_holds.items()):
            if hold.customer == cid and hold.expired:
                del self.open_holds[old]
        if isinstance(result, Admitted):
            assert result.hold == amount
            self.open_holds[rid] = Hold(cid, amount)
            return rid
        return None

    @precondition(lambda self: self.open_holds)
    @rule(data=st.data(), percent=st.integers(0, 100))
    def settle(self, data: st.DataObject, percent: int) -> None:
        self.settle_hold(data.draw(st.sampled_from(list(self.open_holds))), percent)

    def settle_hold(self, rid: str, percent: int) -> None:
        hold = self.open_holds.pop(rid)
        event = usage_event(hold.customer, hold.amount * percent // 100, request_id=rid)
        self.h.run(self.hot.settle(hold.customer, rid, cost=event.cost_nanos, mode="credits",
                                   list_price=event.cost_nanos, tokens_refund=0,
                                   event_json=event.model_dump_json().encode()))
        if event.cost_nanos > 0:
            self.settled[rid] = event
            self.in_redis.add(rid)
        else:
            self.posted[rid] = event  # nothing to post: zero-cost requests are not charged

    @precondition(lambda self: self.open_holds)
    @rule(data=st.data())
    def expire_hold(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(list(self.open_holds)))
        hold = self.open_holds[rid]
        self.h.run(self.hot.redis.zadd(CustomerKeys(hold.customer).holdexp, {rid: 0}))  # type: ignore[arg-type]
        hold.expired = True

    @precondition(lambda self: self.settled)
    @rule(data=st.data())
    def post_some_usage(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(list(self.settled)), min_size=1, max_size=8))
        duplicates = data.draw(st.lists(st.sampled_from(list(self.posted) or chosen), max_size=3))
        batch = [self.settled.get(r) or self.posted[r] for r in chosen + duplicates]
        batch = data.draw(st.permutations(batch))
        self.h.run(post_usage(self.ledger, list(batch)))
        for rid in chosen:
            if rid in self.settled:
                self.posted[rid] = self.settled.pop(rid)
                self.in_redis.discard(rid)

    @precondition(lambda self: self.open_holds or self.in_redis)
    @rule(customer=st.integers(0, 1))
    def lose_and_reload_hot_state(self, customer: int) -> None:
        """Redis loses the customer's state while requests are in flight, then reloads it."""
        cid = self.customers[customer]
        k = CustomerKeys(cid)
        self.h.run(self.hot.redis.delete(k.acct, k.holds, k.holdexp, k.unposted, k.unposted_ev, k.rl))
        lost = [r for r in self.in_redis if self.settled[r].customer_id == cid]
        self.lost_in_flush[cid] += sum(self.settled[r].cost_nanos for r in lost)
        self.in_redis -= set(lost)
        for rid in [r for r, h in self.open_holds.items() if h.customer == cid]:
            del self.open_holds[rid]
        self.h.run(load_customer(self.ledger.pool, self.hot, cid, 0, 0))

    # -- invariants -------------------------------------------------------------------------

    def _expected_balance(self, cid: str) -> int:
        credited = sum(p.credits * CENT for p in self.payments_by_id.values() if p.customer == cid and p.delivered)
        reversed_ = sum(p.reversed_nanos for p in self.payments_by_id.values() if p.customer == cid)
        spent = sum(e.cost_nanos for e in self.posted.values() if e.customer_id == cid)
        return int(credited - reversed_ - spent)

    @invariant()
    def postgres_balance_is_the_sum_of_entries_and_the_model(self) -> None:
        if not self.customers:
            return
        rows = self.h.run(self.ledger.pool.fetch(
            "SELECT a.customer_id, a.balance_nanos, a.seq, COALESCE(sum(e.amount_nanos), 0) AS total, "
            "count(e.id) AS n, (array_agg(e.balance_after ORDER BY e.seq DESC))[1] AS last "
            "FROM ledger.accounts a LEFT JOIN ledger.entries e USING (customer_id) "
            "WHERE a.customer_id = ANY($1::text[]) GROUP BY a.customer_id", self.customers,
        ))
        for row in rows:
            assert row["balance_nanos"] == row["total"] == (row["last"] or 0)
            assert row["seq"] == row["n"]
            assert row["balance_nanos"] == self._expected_balance(row["customer_id"])

    @invariant()
    def no_key_or_request_is_used_twice(self) -> None:
        if not self.customers:
            return
        row = self.h.run(self.ledger.pool.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT idempotency_key) AS keys, "
            "count(*) FILTER (WHERE kind = 'usage') AS usage, "
            "count(DISTINCT reference) FILTER (WHERE kind = 'usage') AS requests "
            "FROM ledger.entries WHERE customer_id = ANY($1::text[])", self.customers,
        ))
        assert row["n"] == row["keys"] and row["usage"] == row["requests"]
        assert row["usage"] == sum(1 for e in self.posted.values() if e.cost_nanos > 0)

    @invariant()
    def hot_copy_agrees_with_postgres_and_the_model(self) -> None:
        for cid in self.customers:
            snap = self.h.run(self.hot.snapshot(cid))
            if "loaded" not in snap:
                continue
            holds: dict[bytes, bytes] = self.h.run(self.hot.redis.hgetall(CustomerKeys(cid).holds))  # type: ignore[arg-type]
            unposted: dict[bytes, bytes] = self.h.run(
                self.hot.redis.hgetall(CustomerKeys(cid).unposted)  # type: ignore[arg-type]
            )
            reserved = int(snap["reserved"])
            assert reserved == sum(int(v) for v in holds.values())
            assert reserved == sum(h.amount for h in self.open_holds.values() if h.customer == cid)
            expected_unposted = sum(self.settled[r].cost_nanos for r in self.in_redis
                                    if self.settled[r].customer_id == cid)
            assert int(snap["unposted"]) == sum(int(v) for v in unposted.values()) == expected_unposted
            rebuilt = self.h.run(self.ledger.pool.fetchrow(
                "SELECT bal, seq, status FROM ledger.hot_account WHERE customer_id = $1", cid
            ))
            assert (int(snap["bal"]), int(snap["seq"]), snap["status"]) == (
                rebuilt["bal"], rebuilt["seq"], rebuilt["status"],
            )
            available = int(snap["bal"]) - int(snap["unposted"]) - reserved
            reversed_ = sum(p.reversed_nanos for p in self.payments_by_id.values() if p.customer == cid)
            assert available >= -(reversed_ + self.lost_in_flush[cid])


@pytest.mark.timeout(600)  # a failure is shrunk to a minimal sequence, which takes a while
def test_ledger_and_hot_state_keep_their_invariants(
    provisioned: Infra, clean_redis: Infra, catalogue_file: Path
) -> None:
    harness = Harness(provisioned, catalogue_file)
    LedgerMachine.harness = harness
    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(max_examples=30, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
        )
    finally:
        harness.close()
