"""Admission: the model must be priced and allowed, the worst case is computed, and one `admit`
script call rate-limits, decides who pays and reserves. What the script decided is applied to the
body (max_tokens lowered, model substituted, usage requested from the upstream) and announced in
response headers."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from opentelemetry.trace import SpanContext

from tollgate_gateway.auth import KeyRecord
from tollgate_gateway.billing import usd_exact
from tollgate_gateway.errors import NO_RETRY, GatewayError, Header, bad_request, billing_unavailable, model_not_found
from tollgate_gateway.estimate import prompt_bound
from tollgate_gateway.parsing import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Parsed
from tollgate_gateway.ratelimit import admitted_headers, rate_limited
from tollgate_gateway.runtime import Runtime
from tollgate_gateway.settlement import Call
from tollgate_hotstate import AdmitRequest, Admitted, Frozen, NeedsLoad, NoFunds, RateLimited
from tollgate_money import format_usd

# Where a lowered cap goes when the client set none: the field the endpoint's models all accept.
_DEFAULT_MAX_FIELD = {CHAT: "max_completion_tokens", COMPLETIONS: "max_tokens", RESPONSES: "max_output_tokens"}


async def admit(
    rt: Runtime, request_id: str, key: KeyRecord, path: str, raw: bytes, parsed: Parsed,
    span: SpanContext | None, client_request_id: bytes | None,
) -> tuple[Call, bytes]:
    """The admitted call and the bytes to forward (the client's own body when nothing changed)."""
    model = parsed.model
    price = rt.book.price(model)
    if price is None or not key.allows(model):
        raise model_not_found(model)
    started_at = datetime.now(UTC)
    model_max = price.max_output_tokens
    if parsed.kind == EMBEDDINGS:
        max_out = 0
    elif parsed.max_out is None:
        max_out = model_max
    else:
        max_out = min(parsed.max_out, model_max) if model_max > 0 else parsed.max_out
    bound = await prompt_bound(
        raw, parsed.body, exact_max_bytes=rt.settings.exact_bound_max_bytes,
        margin_pct=rt.settings.tokenizer_margin_pct, image_allowance=rt.settings.image_token_allowance,
        context_window=price.context_window, stateful=parsed.stateful,
    )
    if not parsed.stateful and len(raw) > rt.settings.exact_bound_max_bytes and price.context_window > 0:
        # Only a tokenizer count can prove a prompt too long (the byte bound of small bodies only
        # caps it): with the safety margin taken back out and 10 % to spare for tokenizer
        # differences, a prompt still over the window is one the provider can only refuse.
        counted = (bound - 64) * 100 // (100 + rt.settings.tokenizer_margin_pct)
        if counted > price.context_window * 11 // 10:
            raise bad_request(
                f"This model's maximum context length is {price.context_window} tokens; the messages are "
                f"about {counted} tokens.", param="messages", code="context_length_exceeded",
            )
    input_cost = -(-bound * price.input_per_m // 1_000_000)
    out_per_m = price.output_per_m * parsed.choices  # n choices: every output token is paid n times
    est_tokens = bound + max_out * parsed.choices
    request = AdmitRequest(
        request_id=request_id, model=model, est_tokens=est_tokens, input_cost=input_cost,
        out_per_m=out_per_m, max_out=max_out, min_out=min(rt.settings.min_output_tokens, max_out),
        hold_ttl_ms=rt.settings.hold_ttl_ms,
        list_worst=input_cost + -(-max_out * out_per_m // 1_000_000),
    )
    admitted = await _admit(rt, key.customer_id, request)

    headers: list[Header] = [(b"x-request-id", request_id.encode()), *admitted_headers(admitted)]
    if client_request_id is not None and len(client_request_id) <= 512:
        headers.append((b"x-client-request-id", client_request_id))
    body = parsed.body
    changed = False
    if admitted.mode == "credits" and admitted.max_out < max_out:
        for name in parsed.max_fields or (_DEFAULT_MAX_FIELD[parsed.kind],):
            body[name] = admitted.max_out
        changed = True
        headers.append((b"x-tollgate-max-tokens-lowered", str(admitted.max_out).encode()))
    served_price = price
    served = admitted.served_model or model
    if not key.allows(served):
        # Past the soft cap the plan serves its fallback model; a key kept off that model gets a
        # clear refusal rather than a model it was never meant to use (or a charge to credits).
        raise GatewayError(
            403, f"Your plan's usage cap for this period is reached, so `{model}` is now served by "
            f"`{served}`, which this API key is not allowed to use.", "invalid_request_error",
            "fallback_model_not_allowed", "model", headers=[NO_RETRY],
        )
    if served != model:
        body["model"] = served
        changed = True
        served_price = rt.book.price(served) or price
        headers.append((b"x-tollgate-downgraded-from", model.encode()))
    if parsed.stream and parsed.kind in (CHAT, COMPLETIONS) and not parsed.client_wants_usage:
        # Usage is always asked for; the relay strips the usage chunk before the client sees it.
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        changed = True
    headers.append((b"x-tollgate-billing-mode", admitted.mode.encode()))
    call = Call(request_id, key, path, parsed, served_price, admitted, est_tokens, started_at, span, headers=headers)
    return call, orjson.dumps(body) if changed else raw


async def _admit(rt: Runtime, customer_id: str, request: AdmitRequest) -> Admitted:
    for _ in range(3):
        result = await rt.hot.admit(customer_id, request)
        if isinstance(result, Admitted):
            return result
        if isinstance(result, NeedsLoad):
            if not await rt.loader.load(customer_id):
                raise no_funds(rt, 0)
            continue
        if isinstance(result, RateLimited):
            raise await rate_limited(rt.redis, customer_id, result)
        if isinstance(result, NoFunds):
            raise no_funds(rt, result.available, result.free_left)
        if isinstance(result, Frozen):
            raise GatewayError(
                403, "This account is under review because of a payment dispute; API access is suspended. "
                "Contact support.", "invalid_request_error", "account_frozen", headers=[NO_RETRY],
            )
    raise billing_unavailable()  # the state vanished between loading and admitting, repeatedly


def no_funds(rt: Runtime, available: int, free_left: int | None = None) -> GatewayError:
    funds = f"Your balance is {format_usd(available)}"
    if free_left is not None:
        funds += f" and your Free plan has {format_usd(free_left)} of today's allowance left"
    return GatewayError(
        402,
        f"{funds}, which does not cover this request. Add credits at {rt.settings.topup_url}",
        "insufficient_quota", "insufficient_quota",
        headers=[NO_RETRY, (b"x-tollgate-balance-usd", usd_exact(available).encode())],
    )
