"""Prometheus metrics of the ledger (process-wide collectors, registered once)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

USAGE_POSTED = Counter("tollgate_ledger_usage_posted_total", "Usage events posted", ["billing_mode"])
USAGE_DUPLICATES = Counter("tollgate_ledger_usage_duplicates_total", "Usage events already posted")
USAGE_BATCH_SECONDS = Histogram(
    "tollgate_ledger_usage_batch_seconds", "Time to post one usage batch (transaction + mirror)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
USAGE_BATCH_SIZE = Histogram(
    "tollgate_ledger_usage_batch_size", "Usage events per batch", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000)
)
DEAD_LETTERS = Counter("tollgate_ledger_dead_letters_total", "Messages sent to the dead-letter stream", ["reason"])
WEBHOOKS = Counter("tollgate_ledger_webhooks_total", "Dodo webhooks received", ["type", "outcome"])
OUTBOX_PUBLISHED = Counter("tollgate_ledger_outbox_published_total", "Outbox events published")
OUTBOX_FAILURES = Counter("tollgate_ledger_outbox_publish_failures_total", "Outbox publish attempts that failed")
MIRROR_FAILURES = Counter("tollgate_ledger_mirror_failures_total", "Redis mirror calls that failed after commit")
DODO_SYNC = Counter("tollgate_ledger_dodo_sync_total", "Credit movements sent to Dodo", ["outcome"])
DRIFT_NANOS = Gauge(
    "tollgate_ledger_drift_nanos", "Dodo credit balance minus Tollgate's expectation, for drifting customers",
    ["customer_id"],
)
DRIFTING_CUSTOMERS = Gauge("tollgate_ledger_drifting_customers", "Customers whose last check found drift")
RECONCILE_RUNS = Counter("tollgate_ledger_reconcile_checks_total", "Per-customer reconciliation checks", ["status"])
SOFTCAP_REACHED = Counter(
    "tollgate_ledger_softcap_reached_total", "Billing periods whose usage crossed the plan's soft cap", ["plan"]
)
PLAN_CHANGES = Counter("tollgate_ledger_plan_changes_total", "Customer plan changes published", ["plan", "status"])
