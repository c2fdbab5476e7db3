"""Settling a request: the exact cost (or the local count when the upstream gave no usage), one
`settle` script call that releases the hold and records the charge, and the usage event queued
for publishing. Runs exactly once per admitted request, whatever happened to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.trace import SpanContext

from tollgate_contracts import subjects
from tollgate_contracts.events import UsageRecorded
from tollgate_gateway import metrics, tokens
from tollgate_gateway.auth import KeyRecord
from tollgate_gateway.billing import Usage, charge
from tollgate_gateway.errors import Header, state_unreachable
from tollgate_gateway.parsing import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Parsed
from tollgate_gateway.runtime import Runtime
from tollgate_hotstate import Admitted
from tollgate_money import ModelPrice
from tollgate_platform.logging import get_logger

log = get_logger("tollgate.gateway.settlement")


@dataclass(frozen=True, slots=True)
class Bill:
    cost: int  # charged to credits
    balance: int  # available after this call (as of its admission; exact once recorded)
    usage: Usage
    status: str
    list_price: int
    payload: bytes  # the UsageRecorded event


@dataclass(slots=True)
class Call:
    """One admitted request on its way through the upstream."""

    request_id: str
    key: KeyRecord
    path: str
    parsed: Parsed
    price: ModelPrice  # of the model that serves
    admitted: Admitted
    est_tokens: int
    started_at: datetime
    span: SpanContext | None
    status: str = "ok"
    bill: Bill | None = None
    recorded: bool = False
    local_prompt: int | None = None
    headers: list[Header] = field(default_factory=list)


def local_usage(call: Call, output: int) -> Usage:
    """The gateway's own count: prompt from the request, output as generated (marked estimated)."""
    if call.local_prompt is None:
        call.local_prompt = prompt_tokens(call.parsed)
    return Usage(call.local_prompt, output, estimated=True)


def bill(rt: Runtime, call: Call, usage: Usage, status: str) -> Bill:
    """What the call costs and the event that says so. No I/O, so a response can carry the cost
    before the charge is recorded; the first bill of a call is the only one."""
    if call.bill is not None:
        return call.bill
    admitted = call.admitted
    billed = charge(call.price, usage, admitted.mode, admitted.hold, failed=status == "upstream_error")
    if billed.overrun:
        metrics.OVERRUN.inc(billed.overrun)
        log.warning("upstream exceeded the reservation; not charged", request_id=call.request_id,
                    overrun_nanos=billed.overrun)
    event = UsageRecorded(
        event_id=call.request_id,
        customer_id=call.key.customer_id,
        dodo_customer_id=call.key.dodo_customer_id,
        key_id=call.key.key_id,
        endpoint=call.path,
        model=call.price.model,
        requested_model=call.parsed.model,
        input_tokens=usage.input_tokens,
        cached_input_tokens=min(usage.cached_input_tokens, usage.input_tokens),
        output_tokens=usage.output_tokens,
        reasoning_tokens=min(usage.reasoning_tokens, usage.output_tokens),
        cost_nanos=billed.cost,
        list_price_nanos=billed.list_price,
        price_book_version=rt.book.version,
        billing_mode=admitted.mode,
        plan=admitted.plan,
        estimated=usage.estimated,
        status=status,  # type: ignore[arg-type]
        started_at=call.started_at,
    )
    # The hold comes back, the cost goes out: the balance this call leaves behind.
    balance = admitted.available_after + admitted.hold - billed.cost
    call.bill = Bill(billed.cost, balance, usage, status, billed.list_price, event.model_dump_json().encode())
    return call.bill


async def record(rt: Runtime, call: Call) -> int:
    """One `settle` script call releases the hold and records the charge as unposted usage, then
    the event is queued. Once per call; returns the available balance Redis reports afterwards."""
    billed = call.bill
    assert billed is not None, "bill() first"
    if call.recorded:
        return billed.balance
    call.recorded = True
    usage = billed.usage
    balance = billed.balance
    try:
        balance, _ = await rt.hot.settle(
            call.key.customer_id, call.request_id, cost=billed.cost, mode=call.admitted.mode,
            list_price=billed.list_price, tokens_refund=call.est_tokens - usage.input_tokens - usage.output_tokens,
            event_json=billed.payload,
        )
    except Exception as exc:
        if not state_unreachable(exc):
            raise
        # The event still goes out: the ledger posts it and its mirror corrects the hot copy; the
        # hold expires by itself.
        metrics.SETTLE_FAILURES.inc()
        log.error("settle failed; usage still published", request_id=call.request_id, error=type(exc).__name__)
    finally:
        # Only after the settle: the ledger's mirror removes posted usage from `unposted`, so the
        # charge must be there before the ledger can see the event.
        rt.publisher.submit(
            subjects.for_customer(subjects.USAGE_RECORDED, call.key.customer_id), call.request_id,
            billed.payload, call.span,
        )
    return int(balance)


async def settle(rt: Runtime, call: Call, usage: Usage, status: str) -> Bill:
    billed = bill(rt, call, usage, status)
    await record(rt, call)
    return billed


def prompt_tokens(parsed: Parsed) -> int:
    body = parsed.body
    if parsed.kind == CHAT:
        return tokens.chat(body.get("messages"))
    if parsed.kind == COMPLETIONS:
        return tokens.prompt_items(body.get("prompt"))
    if parsed.kind == EMBEDDINGS:
        return tokens.prompt_items(body.get("input"))
    return tokens.responses_input(body.get("instructions"), body.get("input"))


def output_tokens(kind: str, obj: Any) -> int:
    """Output of a non-streamed answer that came without usage, counted locally."""
    if not isinstance(obj, dict) or kind == EMBEDDINGS:
        return 0
    if kind == RESPONSES:
        texts: list[str] = []
        for item in obj.get("output") or []:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("arguments"), str):
                texts.append(item["arguments"])
            for part in item.get("content") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        return sum(tokens.count(t) for t in texts)
    total = 0
    for choice in obj.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if kind == COMPLETIONS:
            total += tokens.count(choice.get("text") or "")
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            parts = [message.get("content"), message.get("refusal")]
            for tool_call in message.get("tool_calls") or []:
                fn = tool_call.get("function") if isinstance(tool_call, dict) else None
                if isinstance(fn, dict):
                    parts += [fn.get("name"), fn.get("arguments")]
            total += tokens.count("".join(p for p in parts if isinstance(p, str)))
    return total
