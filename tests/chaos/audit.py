"""The money audit after a drained chaos run. Every rule compares two independent records of the
same facts (what the client saw, what the ledger posted, what the upstream served, what Dodo
holds, what the sinks received); any difference is a violation that fails the run."""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import redis.asyncio as redis

from chaos.cluster import Cluster
from chaos.load import Customer, Outcome
from tollgate_contracts.streams import DEADLETTERS
from tollgate_dodo.catalogue import Catalogue
from tollgate_hotstate import CustomerKeys
from tollgate_money import NANOS_PER_CENT, credits_to_nanos
from tollgate_platform import bus

# Overspend bound of docs/gateway.md ("Overspend bound: zero").
OVERSPEND_BOUND_NANOS = 0


@dataclass
class Violation:
    rule: str
    customer_id: str | None
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.customer_id or '-'}: {self.detail}"


@dataclass
class Audit:
    violations: list[Violation] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)

    def fail(self, rule: str, customer_id: str | None, detail: str) -> None:
        self.violations.append(Violation(rule, customer_id, detail))


def expected_refund_nanos(customer: Customer) -> int:
    """The ledger's documented rule: after reversals totalling r cents of a t-cent payment that
    credited c nanos, exactly floor(c * r / t) nanos have been taken back (cumulative floor)."""
    total = 0
    for payment in customer.payments:
        refunded = sum(r["amount_cents"] for r in customer.refunds if r["payment_id"] == payment["payment_id"])
        credited = payment["credits"] * NANOS_PER_CENT
        total += credited * refunded // payment["total_cents"]
    return total


async def _paged(client: httpx.AsyncClient, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 0
    while True:
        r = await client.get(path, params={**params, "page_size": 100, "page_number": page})
        r.raise_for_status()
        batch = r.json()["items"]
        items += batch
        if len(batch) < 100:
            return items
        page += 1


async def run_audit(
    cluster: Cluster, customers: list[Customer], outcomes: list[Outcome],
    notifier_kills: list[datetime] | None = None,
) -> Audit:
    audit = Audit()
    system, infra = cluster.system, cluster.infra
    by_id = {c.customer_id: c for c in customers}
    conn = await asyncpg.connect(infra.database_url)
    try:
        accounts = {r["customer_id"]: r for r in await conn.fetch("SELECT * FROM ledger.accounts")}
        entries = await conn.fetch("SELECT customer_id, kind, amount_nanos, reference, input_tokens, output_tokens "
                                   "FROM ledger.entries ORDER BY customer_id, seq")
        plan_usage = await conn.fetch("SELECT request_id, customer_id, input_tokens, output_tokens "
                                      "FROM ledger.plan_usage")
        alerts = await conn.fetch("SELECT id, kind, audience, customer_id FROM notifier.alerts")
        deliveries = await conn.fetch(
            "SELECT id, alert_id, channel, target, status, last_error, attempts, created_at, sent_at "
            "FROM notifier.deliveries"
        )
    finally:
        await conn.close()

    # -- 1. balances: ledger balance = top-ups + grants - usage - refunds, to the nano ------------
    sums: dict[str, Counter[str]] = defaultdict(Counter)
    usage_by_request: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for e in entries:
        sums[e["customer_id"]][e["kind"]] += e["amount_nanos"]
        if e["kind"] == "usage":
            usage_by_request[e["reference"]].append(e)
    for c in customers:
        account = accounts.get(c.customer_id)
        if account is None:
            audit.fail("balance", c.customer_id, "no ledger account")
            continue
        s = sums[c.customer_id]
        topups = sum(p["credits"] * NANOS_PER_CENT for p in c.payments)
        refunds = expected_refund_nanos(c)
        usage = -s["usage"]
        expected = topups + c.grants_nanos - usage - refunds
        audit.stats["customers checked"] += 1
        audit.stats["money in (nanos)"] += topups + c.grants_nanos
        audit.stats["usage charged (nanos)"] += usage
        if s["topup"] != topups:
            audit.fail("balance", c.customer_id, f"top-ups posted {s['topup']} != paid {topups}")
        if s["grant"] != c.grants_nanos:
            audit.fail("balance", c.customer_id, f"grants posted {s['grant']} != granted {c.grants_nanos}")
        if -s["refund"] != refunds:
            audit.fail("balance", c.customer_id, f"refunds posted {-s['refund']} != expected {refunds}")
        for kind in ("dispute", "adjustment", "expiry"):
            if s[kind]:
                audit.fail("balance", c.customer_id, f"unexpected {kind} entries: {s[kind]}")
        if account["balance_nanos"] != sum(s.values()) or account["balance_nanos"] != expected:
            audit.fail("balance", c.customer_id, f"balance {account['balance_nanos']} != entries {sum(s.values())} "
                                                 f"!= top-ups+grants-usage-refunds {expected}")
        # -- 3. overspend: never more usage than the money put in, plus the documented bound ----
        if usage > topups + c.grants_nanos + OVERSPEND_BOUND_NANOS:
            audit.fail("overspend", c.customer_id,
                       f"charged {usage} nanos for {topups + c.grants_nanos} paid in (over by "
                       f"{usage - topups - c.grants_nanos})")

    # -- 2. every successful request billed once; failures never; nothing from nowhere ---------
    async with httpx.AsyncClient(timeout=60) as client:
        log = (await client.get(f"{system.url('mock-upstream')}/_mock/requests")).json()
    upstream_ids = {
        r["headers"].get("x-client-request-id") for r in log["requests"] if r.get("headers")
    }
    if log["count"] != len(log["requests"]):
        audit.stats["upstream log truncated"] = log["count"] - len(log["requests"])
    seen_ids: set[str] = set()
    unknown_without_id: Counter[str] = Counter()
    for o in outcomes:
        audit.stats[f"requests {o.kind}"] += 1
        if o.kind == "gateway_error":
            # Fail closed means 503 billing_unavailable, never an internal error (docs/gateway.md).
            audit.fail("gateway_500", o.customer_id, f"{o.request_id}: {o.detail}")
        if o.request_id is None:
            if o.kind in ("unknown", "aborted", "gateway_error"):
                unknown_without_id[o.customer_id] += 1
            continue
        seen_ids.add(o.request_id)
        billed = usage_by_request.get(o.request_id, [])
        if o.kind == "ok":
            if len(billed) != 1:
                audit.fail("billed_once", o.customer_id, f"{o.request_id} (200 seen) has {len(billed)} usage entries")
            elif o.cost_nanos is not None and -billed[0]["amount_nanos"] != o.cost_nanos:
                audit.fail("billed_once", o.customer_id, f"{o.request_id}: told the client {o.cost_nanos}, "
                                                         f"charged {-billed[0]['amount_nanos']}")
        elif o.kind == "refused":
            if billed:
                audit.fail("billed_once", o.customer_id, f"{o.request_id} refused with {o.status} but charged")
            if o.request_id in upstream_ids:
                audit.fail("no_upstream_call", o.customer_id, f"{o.request_id} refused with {o.status} "
                                                              "but the upstream was called")
        elif o.kind == "upstream_failed":
            if billed:
                audit.fail("billed_once", o.customer_id, f"{o.request_id} failed upstream ({o.status}) but charged")
        elif len(billed) > 1:
            audit.fail("billed_once", o.customer_id, f"{o.request_id} ({o.kind}) has {len(billed)} usage entries")
    orphans: Counter[str] = Counter()
    for request_id, billed in usage_by_request.items():
        customer_id = billed[0]["customer_id"]
        if request_id not in upstream_ids and "upstream log truncated" not in audit.stats:
            audit.fail("no_upstream_call", customer_id, f"{request_id} charged but never sent upstream")
        if request_id not in seen_ids:
            orphans[customer_id] += 1
    for customer_id, count in orphans.items():
        audit.stats["usage of requests whose answer was lost"] += count
        if count > unknown_without_id[customer_id]:
            audit.fail("billed_once", customer_id, f"{count} usage entries for requests the client never saw, "
                                                   f"only {unknown_without_id[customer_id]} answers were lost")

    # -- 4. Dodo holds every usage event once; 5. Dodo's balance agrees with Tollgate's ---------
    catalogue = Catalogue.load(infra.workdir / "dodo-catalogue.json")
    assert catalogue is not None
    nanos_per_unit = {name: Decimal(NANOS_PER_CENT) / Decimal(u) for name, u in catalogue.units_per_credit.items()}
    tolerance = len(nanos_per_unit)  # one credit quantum (= 1 nano at precision 7) carried per credit meter
    ledger_requests: dict[str, set[str]] = defaultdict(set)
    for request_id, billed in usage_by_request.items():
        ledger_requests[billed[0]["customer_id"]].add(request_id)
    for p in plan_usage:
        ledger_requests[p["customer_id"]].add(p["request_id"])
    ledger_tokens: dict[str, Counter[str]] = defaultdict(Counter)
    for e in [*(e for e in entries if e["kind"] == "usage"), *plan_usage]:
        ledger_tokens[e["customer_id"]]["input"] += e["input_tokens"] or 0
        ledger_tokens[e["customer_id"]]["output"] += e["output_tokens"] or 0
    async with httpx.AsyncClient(base_url=system.url("dodo-emulator"), timeout=60,
                                 headers={"Authorization": "Bearer dodo-test-key"}) as dodo:
        for c in customers:
            if not c.dodo_customer_id:
                audit.fail("dodo_events", c.customer_id, "no Dodo customer")
                continue
            events = await _paged(dodo, "/events", {"customer_id": c.dodo_customer_id})
            audit.stats["dodo events checked"] += len(events)
            ids = Counter(e["event_id"] for e in events)
            for event_id, n in ids.items():
                if n > 1:
                    audit.fail("dodo_events", c.customer_id, f"event {event_id} stored {n} times")
            per_request: dict[str, set[str]] = defaultdict(set)
            value = Decimal(0)
            dodo_tokens: Counter[str] = Counter()
            for e in events:
                request_id, _, name = e["event_id"].rpartition(":")
                per_request[request_id].add(name)
                meta = e.get("metadata") or {}
                if name in nanos_per_unit:
                    value += Decimal(str(meta["tokens"])) * nanos_per_unit[name]
                    dodo_tokens["input" if "input" in name else "output"] += int(meta.get("raw_tokens", meta["tokens"]))
            expected_requests = ledger_requests[c.customer_id]
            missing = expected_requests - per_request.keys()
            extra = per_request.keys() - expected_requests
            if missing:
                audit.fail("dodo_events", c.customer_id, f"{len(missing)} usage records never reached Dodo, "
                                                         f"e.g. {sorted(missing)[:3]}")
            if extra:
                audit.fail("dodo_events", c.customer_id, f"{len(extra)} Dodo events the ledger has no usage for, "
                                                         f"e.g. {sorted(extra)[:3]}")
            incomplete = [r for r, names in per_request.items() if len(names) != 2]
            if incomplete:
                audit.fail("dodo_events", c.customer_id, f"{len(incomplete)} requests without both meter events")
            usage = -sums[c.customer_id]["usage"]
            if value != usage:
                audit.fail("dodo_events", c.customer_id, f"Dodo's meters value the usage at {value} nanos, "
                                                         f"the ledger charged {usage}")
            if dodo_tokens != ledger_tokens[c.customer_id] and (dodo_tokens or ledger_tokens[c.customer_id]):
                audit.fail("dodo_events", c.customer_id, f"tokens at Dodo {dict(dodo_tokens)} != ledger "
                                                         f"{dict(ledger_tokens[c.customer_id])}")
            r = await dodo.get(f"/credit-entitlements/{catalogue.credit_entitlement_id}/balances/{c.dodo_customer_id}")
            r.raise_for_status()
            balance = r.json()
            dodo_nanos = credits_to_nanos(balance["balance"]) - credits_to_nanos(balance["overage"])
            tollgate = accounts[c.customer_id]["balance_nanos"] if c.customer_id in accounts else None
            audit.stats["dodo balances compared"] += 1
            if tollgate is None or abs(dodo_nanos - tollgate) > tolerance:
                audit.fail("dodo_balance", c.customer_id, f"Dodo {dodo_nanos} nanos != Tollgate {tollgate} "
                                                          f"(tolerance {tolerance})")

    # Nothing may end in a dead letter: each one is an event some service gave up on.
    nc = await bus.connect(infra.nats_url, "chaos-audit")
    try:
        js = nc.jetstream()
        state = (await js.stream_info(DEADLETTERS.name)).state
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            with contextlib.suppress(Exception):
                msg = await js.get_msg(DEADLETTERS.name, seq)
                letter = json.loads(msg.data or b"{}")
                audit.fail("dead_letters", None, f"{msg.subject}: {letter.get('reason')}")
        audit.stats["dead letters"] += state.messages
    finally:
        await nc.close()

    # Tollgate's own reconciliation must reach the same verdict as this audit.
    async with system.admin() as admin:
        for c in customers:
            r = await admin.post(f"/admin/v1/customers/{c.customer_id}/reconcile")
            verdict = r.json() if r.status_code == 200 else {"status": f"HTTP {r.status_code}"}
            audit.stats[f"ledger reconcile {verdict.get('status')}"] += 1
            if verdict.get("status") != "ok":
                audit.fail("ledger_reconcile", c.customer_id, f"the ledger's reconciliation says {verdict}")

    # -- 6. every alert sent exactly once --------------------------------------------------------
    await _audit_alerts(cluster, audit, by_id, accounts, alerts, deliveries, notifier_kills or [])
    # The hot copy is a cache, but after a drain it must agree with the ledger.
    await _audit_hot_state(cluster, audit, customers, accounts)
    return audit


def _killed_mid_send(delivery: asyncpg.Record, notifier_kills: list[datetime]) -> bool:
    """The one repeat the notifier documents (docs/notifier.md, "at-least-once at the very edge"):
    a replica SIGKILLed after the SMTP server or Slack accepted a message and before the commit;
    the lease runs out and another replica sends it again (same Message-ID for email)."""
    if delivery["attempts"] < 2 or delivery["sent_at"] is None:
        return False
    return any(delivery["created_at"] - timedelta(seconds=1) <= kill <= delivery["sent_at"] for kill in notifier_kills)


async def _audit_alerts(
    cluster: Cluster, audit: Audit, customers: dict[str, Customer], accounts: dict[str, Any],
    alerts: list[asyncpg.Record], deliveries: list[asyncpg.Record], notifier_kills: list[datetime],
) -> None:
    system = cluster.system
    tolerated_slack: Counter[str] = Counter()
    alert_by_id = {a["id"]: a for a in alerts}
    async with httpx.AsyncClient(timeout=30) as client:
        mails = (await client.get(f"{system.url('smtp-sink')}/messages")).json()
        slack = (await client.get(f"{system.url('slack-sink')}/messages")).json()
    message_ids = Counter(m["headers"].get("Message-ID") or m["headers"].get("Message-Id") for m in mails)
    slack_paths = Counter(m["path"] for m in slack)
    sent_slack: Counter[str] = Counter()
    per_alert_channel: Counter[tuple[int, str]] = Counter()
    for d in deliveries:
        alert = alert_by_id[d["alert_id"]]
        per_alert_channel[(d["alert_id"], d["channel"])] += 1
        audit.stats[f"alert deliveries {d['status']}"] += 1
        if d["status"] == "failed":
            audit.fail("alerts", alert["customer_id"], f"{alert['kind']} via {d['channel']} failed: {d['last_error']}")
        if d["status"] == "pending":
            audit.fail("alerts", alert["customer_id"], f"{alert['kind']} via {d['channel']} still pending")
        if d["status"] != "sent":
            continue
        if d["channel"] == "email":
            wanted = [mid for mid in message_ids if mid and f"alert-{d['alert_id']}@" in mid]
            count = sum(message_ids[mid] for mid in wanted)
            if count == 2 and _killed_mid_send(d, notifier_kills):
                audit.stats["alerts repeated by a SIGKILL mid-send (documented)"] += 1
            elif count != 1:
                audit.fail("alerts", alert["customer_id"], f"{alert['kind']} (alert {d['alert_id']}) emailed {count} "
                                                           "times")
        elif d["channel"] == "slack":
            sent_slack[urlsplit(d["target"]).path] += 1
            if _killed_mid_send(d, notifier_kills):
                tolerated_slack[urlsplit(d["target"]).path] += 1
    for (alert_id, channel), n in per_alert_channel.items():
        if n > 1:
            audit.fail("alerts", alert_by_id[alert_id]["customer_id"], f"alert {alert_id} has {n} {channel} deliveries")
    # Each customer's Slack alerts go to a path of its own, operator alerts to the operator's: per
    # path, the messages received must be exactly the deliveries sent.
    for path in set(sent_slack) | set(slack_paths):
        extra = slack_paths[path] - sent_slack[path]
        if 0 < extra <= tolerated_slack[path]:
            audit.stats["alerts repeated by a SIGKILL mid-send (documented)"] += extra
        elif extra:
            who = path.split("/")[3] if path.count("/") >= 4 and path.split("/")[3].startswith("cus_") else path
            audit.fail("alerts", who, f"{slack_paths[path]} Slack messages at {path} for {sent_slack[path]} "
                                      "sent Slack deliveries")
    sent_emails = sum(1 for d in deliveries if d["channel"] == "email" and d["status"] == "sent")
    repeated = sum(1 for d in deliveries if d["channel"] == "email" and _killed_mid_send(d, notifier_kills))
    if not sent_emails <= len(mails) <= sent_emails + repeated:
        audit.fail("alerts", None, f"{len(mails)} emails received for {sent_emails} sent email deliveries")
    audit.stats["alerts"] += len(alerts)
    audit.stats["emails received"] += len(mails)
    audit.stats["slack messages received"] += len(slack)
    # No alert lost: a customer the ledger holds depleted was told so.
    depleted_alerts = {a["customer_id"] for a in alerts if a["kind"] == "balance.depleted"}
    for customer_id in customers:
        account = accounts.get(customer_id)
        if account is not None and account["alert_state"] == "depleted" and customer_id not in depleted_alerts:
            audit.fail("alerts", customer_id, "the ledger holds the account depleted but no depleted alert exists")


async def _audit_hot_state(
    cluster: Cluster, audit: Audit, customers: list[Customer], accounts: dict[str, Any]
) -> None:
    r = redis.Redis.from_url(cluster.infra.redis_url, decode_responses=True)
    try:
        for c in customers:
            k = CustomerKeys(c.customer_id)
            acct = await r.hgetall(k.acct)
            if "loaded" not in acct:
                continue
            audit.stats["hot copies compared"] += 1
            posted = accounts[c.customer_id]["balance_nanos"]
            if int(acct.get("bal", 0)) != posted or int(acct.get("unposted", 0)) != 0:
                audit.fail("hot_state", c.customer_id, f"Redis bal={acct.get('bal')} unposted={acct.get('unposted')}"
                                                       f" vs ledger {posted}")
            holds = await r.hlen(k.holds)
            if holds:
                audit.stats["holds left to expire"] += holds
    finally:
        await r.aclose()


def summary_table(profile: str, seed: int, load_counts: Counter[str], faults: Counter[str], audit: Audit,
                  durations: dict[str, float]) -> str:
    rows: list[tuple[str, str]] = [("profile", profile), ("seed", str(seed))]
    rows += [(f"time {k}", f"{v:.1f} s") for k, v in durations.items()]
    rows += [(f"requests {k}", str(v)) for k, v in sorted(load_counts.items())]
    rows.append(("requests total", str(sum(load_counts.values()))))
    rows += [(f"fault {k}", str(v)) for k, v in sorted(faults.items())]
    rows += [(k, str(v)) for k, v in sorted(audit.stats.items()) if not k.startswith("requests ")]
    by_rule = Counter(v.rule for v in audit.violations)
    rows += [(f"violations {k}", str(v)) for k, v in sorted(by_rule.items())]
    rows.append(("violations total", str(len(audit.violations))))
    width = max(len(k) for k, _ in rows)
    lines = ["", "=" * (width + 24), "Billing under fire: summary", "-" * (width + 24)]
    lines += [f"{k.ljust(width)}  {v:>20}" for k, v in rows]
    lines.append("=" * (width + 24))
    return "\n".join(lines)


def dump(audit: Audit, per_rule: int = 25) -> str:
    """The violations, at most `per_rule` of each rule (so a flood of one hides none of the rest)."""
    shown: list[str] = []
    seen: Counter[str] = Counter()
    for v in audit.violations:
        seen[v.rule] += 1
        if seen[v.rule] <= per_rule:
            shown.append(str(v))
    hidden = {rule: n - per_rule for rule, n in seen.items() if n > per_rule}
    return json.dumps(shown, indent=1) + (f"\n(and more: {hidden})" if hidden else "")
