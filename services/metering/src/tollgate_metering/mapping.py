"""One `usage.recorded` message -> the Dodo usage events it stands for, per the catalogue's meter
strategy. Pure: no I/O, so every rule here is unit-testable and the same in every replica.

Cost: this runs once per usage event (20,000/s is the target), so the common case is cheap, and
everything else takes the exact, slower path (tests/metering/test_mapping.py checks that both
give the same result, field for field):

- Decoding: `UsageRecorded` (pydantic) is the contract. Messages are first decoded strictly with
  msgspec into `_Plain`, a mirror of the model (every field of its JSON type, counts >= 0, the
  literals, times as RFC 3339 with an offset and at most microseconds, which pydantic and
  `datetime.fromisoformat` read identically): ~3x cheaper than `model_validate_json`. Whatever
  that refuses - a missing time (the model defaults it), a number as a string, more than 6
  fraction digits, malformed JSON - is validated by the model itself, so every message gets the
  model's result or its error. A test keeps the mirror's fields and defaults equal to the model's.
- Readings: weighted meters with credit usage are computed with integer arithmetic straight to
  JSON numbers (`ratio_number`) instead of `tollgate_dodo.meters.readings` (Decimal objects,
  `MeterReading`s, `TokenUsage`); the same numbers. Every other case uses `readings` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, Protocol

import msgspec
from pydantic import ValidationError

from tollgate_contracts.events import UsageRecorded
from tollgate_dodo.catalogue import Catalogue
from tollgate_dodo.meters import (
    INPUT_TOKENS,
    MAX_DIGITS,
    MAX_PLACES,
    OUTPUT_TOKENS,
    MeterError,
    MeterReading,
    Reference,
    readings,
)
from tollgate_metering.settings import MissingCustomerPolicy
from tollgate_money import PriceBook, TokenUsage
from tollgate_money.units import TOKENS_PER_PRICE_UNIT

# Dodo rejects timestamps more than 5 minutes ahead; a gateway clock a little fast is not an error.
MAX_FUTURE = timedelta(minutes=4)
_MAX_WHOLE = 10**MAX_DIGITS
_MAX_WHOLE_FULL_PLACES = 10 ** (MAX_DIGITS - MAX_PLACES)


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


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class Mapped:
    request_id: str
    customer_id: str
    occurred_at: datetime
    events: list[dict[str, Any]]  # wire-shaped Dodo EventInput dicts


class Usage(Protocol):
    """What mapping reads of a usage event (the model, or the fast decoder's mirror of it)."""

    @property
    def event_id(self) -> str: ...
    @property
    def customer_id(self) -> str: ...
    @property
    def dodo_customer_id(self) -> str | None: ...
    @property
    def model(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_nanos(self) -> int: ...
    @property
    def billing_mode(self) -> str: ...
    @property
    def plan(self) -> str | None: ...
    @property
    def estimated(self) -> bool: ...
    @property
    def status(self) -> str: ...


_Count = Annotated[int, msgspec.Meta(ge=0)]


class _Plain(msgspec.Struct, gc=False):
    """`UsageRecorded` as plain JSON types."""

    event_id: str
    customer_id: str
    key_id: str
    endpoint: str
    model: str
    requested_model: str
    input_tokens: _Count
    output_tokens: _Count
    cost_nanos: _Count
    list_price_nanos: _Count
    price_book_version: str
    # Validated only: msgspec accepts no time pydantic refuses (it refuses some pydantic takes).
    started_at: Annotated[datetime, msgspec.Meta(tz=True)]
    occurred_at: str  # read by _plain_time; required here: when absent the model fills in "now"
    schema_version: int = 1
    dodo_customer_id: str | None = None
    cached_input_tokens: _Count = 0
    reasoning_tokens: _Count = 0
    billing_mode: Literal["credits", "subscription", "free"] = "credits"
    plan: str | None = None
    estimated: bool = False
    status: Literal["ok", "client_disconnected", "upstream_error", "cut_off"] = "ok"


_PLAIN = msgspec.json.Decoder(_Plain)


def _plain_time(value: str) -> datetime | None:
    """An RFC 3339 time with an offset and at most microseconds (`2026-01-01T00:00:00.123456+00:00`
    or `...Z`), which pydantic and datetime.fromisoformat read identically; None for any other
    form (fromisoformat is laxer, e.g. about an empty fraction, and pydantic truncates digits
    past microseconds)."""
    if (
        len(value) < 20 or value[4] != "-" or value[7] != "-" or value[10] != "T" or value[13] != ":"
        or value[16] != ":"
    ):
        return None
    if value[-1] == "Z":
        fraction = value[19:-1]
    elif value[-6] in "+-" and value[-3] == ":":
        fraction = value[19:-6]
    else:
        return None
    if fraction and not (
        fraction[0] == "." and 2 <= len(fraction) <= 7 and fraction[1:].isdigit() and fraction.isascii()
    ):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _isoformat_of(text: str, parsed: datetime) -> str:
    """`parsed.isoformat()`, read off the text when it already is in that form (microseconds
    present and not all zero, an offset other than "-00:00"): formatting costs more than the rest
    of the mapping."""
    if len(text) == 27 and text[19] == "." and text[26] == "Z" and parsed.microsecond:
        return text[:26] + "+00:00"
    if len(text) == 32 and text[19] == "." and parsed.microsecond and not text.endswith("-00:00"):
        return text
    return parsed.isoformat()


def decode(data: bytes) -> tuple[Usage, datetime, str | None]:
    """The usage, its time, and the time's isoformat() when it came for free."""
    try:
        plain = _PLAIN.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        plain = None
    if plain is not None:
        occurred_at = _plain_time(plain.occurred_at)
        if occurred_at is not None:
            return plain, occurred_at, _isoformat_of(plain.occurred_at, occurred_at)
    try:
        usage = UsageRecorded.model_validate_json(data)
    except ValidationError as exc:
        raise Permanent("invalid_payload", str(exc.errors(include_url=False)[:3])) from exc
    return usage, usage.occurred_at, None


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


def ratio_number(numerator: int, denominator: int) -> int | float:
    """`json_number(to_decimal(numerator, denominator))` (round up, 15 significant digits, at most
    12 places) without building a Decimal. Integers stay integers; otherwise the float is the
    correctly rounded value of the same decimal (int / int is correctly rounded in CPython, as is
    float(Decimal)), so it is the very number the Decimal path gives."""
    whole, remainder = divmod(numerator, denominator)
    if not remainder and whole < _MAX_WHOLE:
        return whole
    if whole < _MAX_WHOLE_FULL_PLACES:  # whole has at most 3 digits: all 12 places fit
        places = MAX_PLACES
    else:
        places = max(0, MAX_DIGITS - len(str(whole)))
    scale: int = 10**places
    scaled, remainder = divmod(numerator * scale, denominator)
    if remainder:
        scaled += 1
    if scaled % scale == 0:
        return scaled // scale
    return scaled / scale


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
        self._now: datetime | None = None
        self._oldest = self._newest = datetime.min
        # The weighted credit path needs nothing but integers (see ratio_number).
        self.fast_weighted = (
            catalogue.meter_strategy == "weighted"
            and self.reference is not None
            and INPUT_TOKENS in self.meter_names
            and OUTPUT_TOKENS in self.meter_names
        )
        self._ref_input = self.reference.input_per_m if self.reference else 0
        self._ref_output = self.reference.output_per_m if self.reference else 0

    def map(self, data: bytes, *, now: datetime, replay: bool = False) -> Mapped:
        usage, occurred_at, occurred_iso = decode(data)
        dodo_customer = usage.dodo_customer_id
        billing_mode = usage.billing_mode
        model = usage.model
        if not dodo_customer:
            if billing_mode != "credits" and self.policy == "skip_plan_usage":
                raise Skip("no_dodo_customer")
            raise Permanent("no_dodo_customer", f"customer {usage.customer_id} has no Dodo customer id")
        price = self.book.models.get(model)
        if price is None:
            raise Permanent("unknown_model", f"model {model} is not in price book {self.book.version}")
        credits = billing_mode == "credits"
        if credits and self.fast_weighted:
            input_tokens = usage.input_tokens
            cached = usage.cached_input_tokens
            if cached > input_tokens:
                cached = input_tokens
            scaled_input = (input_tokens - cached) * price.input_per_m + cached * price.cached_input_per_m
            scaled_total = usage.cost_nanos * TOKENS_PER_PRICE_UNIT
            if scaled_input > scaled_total:
                scaled_input = scaled_total
            found: list[tuple[str, int | float, int]] = [
                (INPUT_TOKENS, ratio_number(scaled_input, self._ref_input), input_tokens),
                (OUTPUT_TOKENS, ratio_number(scaled_total - scaled_input, self._ref_output), usage.output_tokens),
            ]
        else:
            found = [(r.event_name, json_number(r.units), r.raw_tokens) for r in self._readings(usage, price)]

        if now is not self._now:  # the consumer passes one `now` for all messages of a read
            self._now = now
            self._oldest = now - self.max_age
            self._newest = now + MAX_FUTURE
        if occurred_iso is not None and self._oldest <= occurred_at <= self._newest:
            timestamp, extra = occurred_iso, None
        else:
            timestamp, extra = self._timestamp(occurred_at, now, replay)

        request_id = usage.event_id
        customer_id = usage.customer_id
        plan = usage.plan
        status = usage.status
        estimated = usage.estimated
        cost_nanos = usage.cost_nanos
        events = []
        for event_name, units, raw_tokens in found:
            metadata: dict[str, Any] = {
                "tokens": units,
                "model": model,
                "billing_mode": billing_mode,
                "request_id": request_id,
                "tollgate_customer_id": customer_id,
            }
            if units != raw_tokens:
                metadata["raw_tokens"] = raw_tokens
            if credits:
                metadata["cost_nanos"] = cost_nanos
            if plan:
                metadata["plan"] = plan
            if status != "ok":
                metadata["status"] = status
            if estimated:
                metadata["estimated"] = True
            if extra:
                metadata.update(extra)
            events.append({
                "event_id": f"{request_id}:{event_name}",  # = event_id(request_id, event_name)
                "customer_id": dodo_customer,
                "event_name": event_name,
                "timestamp": timestamp,
                "metadata": metadata,
            })
        return Mapped(request_id, customer_id, occurred_at, events)

    def _readings(self, usage: Usage, price: Any) -> list[MeterReading]:
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
        return found

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
