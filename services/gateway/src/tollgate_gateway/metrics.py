"""Prometheus metrics of the hot path (per worker process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REQUESTS = Counter("gateway_requests_total", "Requests answered", ["endpoint", "status"])
INFLIGHT = Gauge("gateway_inflight_requests", "Requests in progress in this worker")
SHED = Counter("gateway_shed_total", "Requests refused because the worker was at max_inflight")
UPSTREAM_FAILURES = Counter("gateway_upstream_failures_total", "Upstream calls that failed", ["kind"])
ESTIMATED = Counter("gateway_usage_estimated_total", "Requests billed from a local token count", ["reason"])
OVERRUN = Counter(
    "gateway_overrun_nanos_total",
    "List price the reservation did not cover and the customer was not charged (upstream over max_tokens)",
)
SETTLE_FAILURES = Counter("gateway_settle_failures_total", "Settle calls to Redis that failed")
CUTOFFS = Counter("gateway_stream_cutoffs_total", "Streams ended by the gateway at the reservation")
