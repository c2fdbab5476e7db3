"""Exact decimal handling for credit amounts (always strings on the wire, never floats)."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Context, Decimal, InvalidOperation
from typing import Any

from .errors import ApiError

ZERO = Decimal(0)
# Enough digits that floor division of any realistic unit count never rounds before the floor.
_DIV_CONTEXT = Context(prec=80, rounding=ROUND_FLOOR)


def parse_decimal(value: Any, field: str, *, status: int = 422) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise ApiError(status, "INVALID_REQUEST_BODY", f"{field} must be a decimal string")
    try:
        dec = Decimal(str(value))
    except InvalidOperation as exc:
        raise ApiError(status, "INVALID_REQUEST_BODY", f"{field} is not a valid decimal: {value!r}") from exc
    if not dec.is_finite():
        raise ApiError(status, "INVALID_REQUEST_BODY", f"{field} must be finite")
    return dec


def quantum(precision: int) -> Decimal:
    return Decimal(1).scaleb(-precision)


def fmt(value: Decimal | str, precision: int) -> str:
    return format(Decimal(value).quantize(quantum(precision)), "f")


def decimal_places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def floor_div(numerator: Decimal, denominator: Decimal, precision: int) -> Decimal:
    """numerator / denominator rounded down to `precision` places, never up."""
    return _DIV_CONTEXT.divide(numerator, denominator).quantize(quantum(precision), rounding=ROUND_FLOOR)


def as_number(value: Any) -> Decimal | None:
    """A metadata value as an exact Decimal, or None when it is not numeric."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # repr() gives the shortest string that round-trips, i.e. what the client wrote.
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            dec = Decimal(value)
        except InvalidOperation:
            return None
        return dec if dec.is_finite() else None
    return None
