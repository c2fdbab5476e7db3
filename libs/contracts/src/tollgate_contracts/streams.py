"""The one definition of every JetStream stream and durable consumer. Only the provisioning step
(`tollgate provision`) creates or updates streams; services bind to them with declare=False."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from tollgate_contracts import subjects

DAY = 24 * 3600


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: int
    duplicate_window_s: int
    replicas: int = 1
    retention: RetentionPolicy = RetentionPolicy.LIMITS

    def config(self, replicas: int | None = None) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=self.retention,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=float(self.max_age_s),
            duplicate_window=float(self.duplicate_window_s),
            num_replicas=replicas or self.replicas,
        )


# Limits retention: several independent consumers (metering, ledger) read the same usage, and
# reconciliation can replay 30 days. The dedup window covers the gateway's spool and the ledger
# outbox relay retrying after a restart; beyond it consumers are idempotent on the event id.
USAGE = StreamSpec("USAGE", (f"{subjects.USAGE_RECORDED}.>",), max_age_s=30 * DAY, duplicate_window_s=2 * 3600)
BILLING = StreamSpec("BILLING", ("billing.>",), max_age_s=90 * DAY, duplicate_window_s=2 * 3600)
TIERS = StreamSpec("TIERS", (f"{subjects.TIER_CHANGED}.>",), max_age_s=90 * DAY, duplicate_window_s=2 * 3600)
DEADLETTERS = StreamSpec("DEADLETTER", (f"{subjects.DEADLETTER}.>",), max_age_s=90 * DAY, duplicate_window_s=DAY)

ALL_STREAMS: tuple[StreamSpec, ...] = (USAGE, BILLING, TIERS, DEADLETTERS)


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer shared by every replica of its service."""

    stream: StreamSpec
    durable: str
    filter_subject: str
    ack_wait_s: float = 30.0
    max_deliver: int = 20
    # nats-server replaces ack_wait with backoff[0] when a backoff list is set, which would
    # redeliver slow batches early; so by default there is none and handlers nak with a delay.
    backoff_s: tuple[float, ...] = field(default=())
    max_ack_pending: int = 20_000

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            backoff=list(self.backoff_s) if self.backoff_s else None,
            max_ack_pending=self.max_ack_pending,
        )


# metering: a replica heartbeats (in_progress) any message it holds longer than ack_wait/3, so
# ack_wait only decides how soon a crashed replica's batch is redelivered. max_deliver is a
# backstop above the ~55 min a usage event stays ingestible: with naks capped at 60 s the age rule
# dead-letters first, and the last delivery is dead-lettered, never silently dropped.
METERING_USAGE = ConsumerSpec(
    USAGE, "metering-usage", f"{subjects.USAGE_RECORDED}.>", ack_wait_s=15.0, max_deliver=100
)
LEDGER_USAGE = ConsumerSpec(USAGE, "ledger-usage", f"{subjects.USAGE_RECORDED}.>")
TIER_BILLING = ConsumerSpec(BILLING, "tier-billing", "billing.>")
NOTIFIER_BILLING = ConsumerSpec(BILLING, "notifier-billing", "billing.>")
NOTIFIER_TIERS = ConsumerSpec(TIERS, "notifier-tiers", f"{subjects.TIER_CHANGED}.>")
NOTIFIER_DEADLETTERS = ConsumerSpec(DEADLETTERS, "notifier-deadletters", f"{subjects.DEADLETTER}.>")

ALL_CONSUMERS: tuple[ConsumerSpec, ...] = (
    METERING_USAGE,
    LEDGER_USAGE,
    TIER_BILLING,
    NOTIFIER_BILLING,
    NOTIFIER_TIERS,
    NOTIFIER_DEADLETTERS,
)
