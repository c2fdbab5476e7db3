"""One `usage.recorded` message -> the Dodo usage events it stands for, per the catalogue's meter
strategy. Pure: no I/O, so every rule here is unit-testable and the same in every replica."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from tollgate_contracts.events import UsageRecorded
from tollgate_dodo.catalogue import Catalogue
from tollgate_dodo.meters import MeterError, MeterReading, Reference, readings
from tollgate_metering.settings import MissingCustomerPolicy
from tollgate_money import PriceBook, TokenUsage

# Dodo rejects timestamps more than 5 minutes ahead; a gateway clock a little fast is not an error.
MAX_FUTURE = timedelta(minutes=4)


class Permanent(Exception):
    """The message can never be metered as it is: dead-letter it (reason code + detail)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class Skip(Exception):
    """Acknowledge without sending anything (counted, logged; only where policy allows)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Mapped:
    request_id: str
    customer_id: str
    occurred_at: datetime
    events: list[dict[str, Any]]  # wire-shaped Dodo EventInput dicts


def event_id(request_id: str, event_name: str) -> str:
    """Deterministic per (request, meter): a retried or replayed send can never count twice."""
    return f"{request_id}:{event_name}"


def json_number(value: Decimal) -> int | float:
    """A meter reading as a JSON number. Readings have at most 15 significant digits (see
    tollgate_dodo.meters), and a double holds any 15-digit decimal exactly enough that it prints
    back as the same decimal: the JSON text carries the exact value."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


class Mapper:
    def __init__(self, catalogue: Catalogue, book: PriceBook, policy: MissingCustomerPolicy, max_age_s: float) -> None:
        self.catalogue = catalogue
        self.book = book
        self.policy = policy
        self.max_age = timedelta(seconds=max_age_s)
        self.meter_names = frozenset(catalogue.meters)
        self.reference = (
            Reference(catalogue.reference_input_per_m, catalogue.reference_output_per_m)
            if catalogue.reference_input_per_m and catalogue.reference_output_per_m
            else None
        )

    def map(self, data: bytes, *, now: datetime, replay: bool = False) -> Mapped:
        try:
            usage = UsageRecorded.model_validate_json(data)
        except ValidationError as exc:
            raise Permanent("invalid_payload", str(exc.errors(include_url=False)[:3])) from exc
        if not usage.dodo_customer_id:
            if usage.billing_mode != "credits" and self.policy == "skip_plan_usage":
                raise Skip("no_dodo_customer")
            raise Permanent("no_dodo_customer", f"customer {usage.customer_id} has no Dodo customer id")
        price = self.book.price(usage.model)
        if price is None:
            raise Permanent("unknown_model", f"model {usage.model} is not in price book {self.book.version}")
        try:
            token_usage = TokenUsage(
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                cached_input_tokens=min(usage.cached_input_tokens, usage.input_tokens),
            )
            found = readings(
                self.catalogue.meter_strategy, price=price, usage=token_usage, billing_mode=usage.billing_mode,
                cost_nanos=usage.cost_nanos, reference=self.reference, meter_names=self.meter_names,
            )
        except (MeterError, ValueError) as exc:
            raise Permanent("no_meter", str(exc)) from exc
        missing = [r.event_name for r in found if r.event_name not in self.meter_names]
        if missing:
            raise Permanent("no_meter", f"no Dodo meter for {', '.join(missing)}; re-run tollgate dodo bootstrap")
        timestamp, extra = self._timestamp(usage.occurred_at, now, replay)
        return Mapped(
            request_id=usage.event_id,
            customer_id=usage.customer_id,
            occurred_at=usage.occurred_at,
            events=[self._event(usage, r, timestamp, extra) for r in found],
        )

    def _timestamp(self, occurred_at: datetime, now: datetime, replay: bool) -> tuple[str, dict[str, Any]]:
        if occurred_at < now - self.max_age:
            if not replay:
                raise Permanent(
                    "too_old", f"usage of {occurred_at.isoformat()} is past Dodo's one-hour ingestion window"
                )
            # An operator replay after a fix: Dodo cannot take the old time, so the event is
            # stamped now and the usage's own time travels in metadata.
            return now.isoformat(), {"occurred_at": occurred_at.isoformat(), "replayed": True}
        if occurred_at > now + MAX_FUTURE:
            return now.isoformat(), {"occurred_at": occurred_at.isoformat()}
        return occurred_at.isoformat(), {}

    def _event(
        self, usage: UsageRecorded, reading: MeterReading, timestamp: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "tokens": json_number(reading.units),
            "model": usage.model,
            "billing_mode": usage.billing_mode,
            "request_id": usage.event_id,
            "tollgate_customer_id": usage.customer_id,
        }
        if reading.units != reading.raw_tokens:
            metadata["raw_tokens"] = reading.raw_tokens
        if usage.billing_mode == "credits":
            metadata["cost_nanos"] = usage.cost_nanos
        if usage.plan:
            metadata["plan"] = usage.plan
        if usage.status != "ok":
            metadata["status"] = usage.status
        if usage.estimated:
            metadata["estimated"] = True
        metadata.update(extra)
        return {
            "event_id": event_id(usage.event_id, reading.event_name),
            "customer_id": usage.dodo_customer_id,
            "event_name": reading.event_name,
            "timestamp": timestamp,
            "metadata": metadata,
        }
