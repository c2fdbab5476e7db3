"""Meters: event filters, aggregation, and the background meter -> credit deduction pass."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .credits import debit_credits
from .decimals import ZERO, as_number, floor_div
from .state import Obj

if TYPE_CHECKING:
    from .runtime import Emulator


def _coerce(value: Any) -> Decimal | bool | str:
    # Dodo parses filter values as a number first, then a bool, then a string.
    if isinstance(value, bool):
        return value
    number = as_number(value)
    if number is not None:
        return number
    text = str(value)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _clause_matches(clause: Obj, metadata: dict[str, Any]) -> bool:
    if clause["key"] not in metadata:
        return False
    actual = _coerce(metadata[clause["key"]])
    expected = _coerce(clause["value"])
    op = clause["operator"]
    if op == "equals":
        return type(actual) is type(expected) and actual == expected
    if op == "not_equals":
        return not (type(actual) is type(expected) and actual == expected)
    if op == "contains":
        return str(expected) in str(metadata[clause["key"]])
    if op == "does_not_contain":
        return str(expected) not in str(metadata[clause["key"]])
    if not (isinstance(actual, Decimal) and isinstance(expected, Decimal)):
        return False
    if op == "greater_than":
        return actual > expected
    if op == "greater_than_or_equals":
        return actual >= expected
    if op == "less_than":
        return actual < expected
    if op == "less_than_or_equals":
        return actual <= expected
    return False


def filter_matches(meter_filter: Obj | None, metadata: dict[str, Any] | None) -> bool:
    if not meter_filter:
        return True
    metadata = metadata or {}
    results = []
    for clause in meter_filter["clauses"]:
        if "conjunction" in clause:
            results.append(filter_matches(clause, metadata))
        else:
            results.append(_clause_matches(clause, metadata))
    return all(results) if meter_filter["conjunction"] == "and" else any(results)


def filter_depth(meter_filter: Obj) -> int:
    nested = [c for c in meter_filter["clauses"] if "conjunction" in c]
    return 1 + max((filter_depth(c) for c in nested), default=0)


def event_matches_meter(event: Obj, meter: Obj) -> bool:
    return event["event_name"] == meter["event_name"] and filter_matches(meter.get("filter"), event.get("metadata"))


def aggregate(meter: Obj, events: list[Obj]) -> Decimal:
    aggregation = meter["aggregation"]
    if aggregation["type"] == "count":
        return Decimal(len(events))
    key = aggregation.get("key") or ""
    values = [v for v in (as_number((e.get("metadata") or {}).get(key)) for e in events) if v is not None]
    if not values:
        return ZERO
    if aggregation["type"] == "sum":
        return sum(values, ZERO)
    if aggregation["type"] == "max":
        return max(values)
    return values[-1]  # "last": events are in ingestion order


@dataclass(frozen=True)
class CreditLink:
    meter_id: str
    credit_entitlement_id: str
    meter_units_per_credit: Decimal
    product_id: str

    @property
    def key(self) -> str:
        return f"{self.meter_id}:{self.credit_entitlement_id}"


def credit_links(emu: Emulator) -> list[CreditLink]:
    """Every meter linked to a credit entitlement on any live product; the oldest product wins."""
    links: dict[str, CreditLink] = {}
    for product in emu.state.products.values():
        if product.get("_archived"):
            continue
        price = product["price"]
        if price.get("type") != "usage_based_price":
            continue
        for meter in price.get("meters") or []:
            if not meter.get("credit_entitlement_id") or not meter.get("meter_units_per_credit"):
                continue
            link = CreditLink(meter["meter_id"], meter["credit_entitlement_id"],
                              Decimal(meter["meter_units_per_credit"]), product["product_id"])
            links.setdefault(link.key, link)
    return list(links.values())


def register_links(emu: Emulator) -> None:
    # A new link only charges events ingested after it was configured.
    for link in credit_links(emu):
        emu.state.link_cursors.setdefault(link.key, len(emu.state.event_log))


def run_deduction_pass(emu: Emulator) -> int:
    """Deduct credits for usage ingested since the last pass; returns the number of debits."""
    state = emu.state
    debits = 0
    register_links(emu)
    for link in credit_links(emu):
        start = state.link_cursors.get(link.key, len(state.event_log))
        new_ids = state.event_log[start:]
        state.link_cursors[link.key] = len(state.event_log)
        meter = state.meters.get(link.meter_id)
        ce = state.credit_entitlements.get(link.credit_entitlement_id)
        if not new_ids or meter is None or ce is None or meter.get("_archived") or ce.get("_deleted"):
            continue
        per_customer: dict[str, list[Obj]] = {}
        for event_id in new_ids:
            event = state.events[event_id]
            if event_matches_meter(event, meter):
                per_customer.setdefault(event["customer_id"], []).append(event)
        for customer_id, events in per_customer.items():
            remainder_key = f"{link.key}:{customer_id}"
            units = Decimal(state.unit_remainders.get(remainder_key, "0")) + aggregate(meter, events)
            credits = floor_div(units, link.meter_units_per_credit, ce["precision"]) if units > 0 else ZERO
            # Whatever is not worth a whole credit quantum waits, exactly, for the next pass.
            state.unit_remainders[remainder_key] = str(units - credits * link.meter_units_per_credit)
            state.bump("events_deducted", len(events))
            if credits <= 0:
                continue
            debit_credits(
                emu, ce["id"], customer_id, credits, record_shortfall=True,
                reference_type="meter", reference_id=meter["id"],
                description=f"usage of meter {meter['name']}",
                metadata={"meter_id": meter["id"], "event_count": len(events), "product_id": link.product_id},
            )
            debits += 1
    if debits:
        emu.mark_dirty()
    return debits
