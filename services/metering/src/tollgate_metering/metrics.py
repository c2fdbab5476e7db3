"""Prometheus metrics of the metering service (process-wide collectors, registered once)."""

from __future__ import annotations

import bisect

from prometheus_client import Counter, Gauge, Histogram

PENDING_MESSAGES = Gauge(
    "tollgate_metering_consumer_pending_messages",
    "Usage messages in the stream not yet delivered to any metering replica (consumer num_pending).",
)
ACK_PENDING_MESSAGES = Gauge(
    "tollgate_metering_consumer_ack_pending_messages",
    "Usage messages delivered to a replica and not yet acknowledged (consumer num_ack_pending).",
)
LAG_SECONDS = Gauge(
    "tollgate_metering_consumer_lag_seconds",
    "Age of the oldest usage message not yet acknowledged (0 when caught up).",
)
EVENTS_INGESTED = Counter(
    "tollgate_metering_dodo_events_sent_total",
    "Dodo usage events in ingest calls Dodo accepted (includes repeats Dodo ignored).",
)
EVENTS_NEW = Counter(
    "tollgate_metering_dodo_events_ingested_total", "Events Dodo reported as newly ingested (ingested_count)."
)
USAGE_ACKED = Counter("tollgate_metering_usage_acked_total", "Usage messages delivered to Dodo and acknowledged.")
BATCH_EVENTS = Histogram(
    "tollgate_metering_batch_events",
    "Dodo events per ingest call.",
    buckets=(1, 10, 50, 100, 250, 500, 750, 1000),
)
INGEST_SECONDS = Histogram(
    "tollgate_metering_ingest_seconds",
    "Duration of one ingest call, by outcome.",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERY_LAG = Histogram(
    "tollgate_metering_delivery_lag_seconds",
    "From the usage's time to Dodo accepting its events.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 900, 3600),
)
RETRIES = Counter(
    "tollgate_metering_ingest_retries_total",
    "Ingest calls that failed transiently and were retried, by reason.",
    ["reason"],
)
NAKS = Counter("tollgate_metering_naks_total", "Usage messages handed back to NATS for a delayed redelivery.")
SPLITS = Counter("tollgate_metering_batch_splits_total", "Batches bisected after Dodo rejected them (400/422).")
DEAD_LETTERS = Counter(
    "tollgate_metering_dead_letters_total", "Usage messages dead-lettered, by reason.", ["reason"]
)
SKIPPED = Counter(
    "tollgate_metering_skipped_total", "Usage messages acknowledged without a Dodo event, by reason.", ["reason"]
)
HELD_MESSAGES = Gauge("tollgate_metering_held_messages", "Usage messages this replica holds unacknowledged.")


def observe_many(histogram: Histogram, amounts: list[float]) -> None:
    """`histogram.observe(a)` for each amount, with one increment per bucket instead of two locked
    increments per amount (a batch acks up to 1000 usage events at once). Same resulting series;
    falls back to `observe` if prometheus_client's internals ever change."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    histogram._raise_if_not_observable()  # type: ignore[attr-defined,no-untyped-call]
    counts = [0] * len(bounds)
    for amount in amounts:
        counts[bisect.bisect_left(bounds, amount)] += 1  # first bound >= amount, as observe() finds it
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    total.inc(sum(amounts))
