"""Schema-driven fuzzing (schemathesis) of the HTTP APIs a caller can reach: the ledger's admin
API from its own OpenAPI document, and the gateway's customer endpoints from the OpenAI-shaped
document below (the gateway serves /v1 outside FastAPI's router, so it publishes none). Valid and
invalid inputs, a bounded number of examples per operation; no answer may be a 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from security.conftest import Tollgate

EXAMPLES = 8  # per operation and generation mode: ~700 calls in all, well under a minute

PRICED = ["gpt-4o-mini", "gpt-4o"]
MESSAGE = {
    "type": "object", "required": ["role", "content"], "additionalProperties": False,
    "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]},
                   "content": {"type": "string", "maxLength": 200}},
}
ERROR = {"description": "OpenAI-shaped error", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "object"}}}}}}


def _post(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {"200": {"description": "ok"}, "400": ERROR, "402": ERROR, "404": ERROR, "429": ERROR},
    }


def _get(parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"parameters": parameters or [], "responses": {"200": {"description": "ok"}, "404": ERROR}}


GATEWAY_OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Tollgate gateway: customer endpoints", "version": "1"},
    "paths": {
        "/v1/models": {"get": _get()},
        "/v1/models/{model}": {"get": _get([{"name": "model", "in": "path", "required": True,
                                              "schema": {"type": "string"}}])},
        "/v1/billing/balance": {"get": _get()},
        "/v1/billing/tier": {"get": _get()},
        "/v1/chat/completions": {"post": _post({
            "type": "object", "required": ["model", "messages"], "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "enum": PRICED},
                "messages": {"type": "array", "minItems": 1, "maxItems": 4, "items": MESSAGE},
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": 64},
                "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 64},
                "n": {"type": "integer", "minimum": 1, "maximum": 2},
                "stream": {"type": "boolean"},
                "stream_options": {"type": "object", "additionalProperties": False,
                                   "properties": {"include_usage": {"type": "boolean"}}},
            },
        })},
        "/v1/completions": {"post": _post({
            "type": "object", "required": ["model", "prompt"], "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "enum": PRICED},
                "prompt": {"oneOf": [{"type": "string", "maxLength": 200},
                                     {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 50}}]},
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": 64},
                "stream": {"type": "boolean"},
            },
        })},
        "/v1/embeddings": {"post": _post({
            "type": "object", "required": ["model", "input"], "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "enum": ["text-embedding-3-small"]},
                "input": {"oneOf": [{"type": "string", "maxLength": 200},
                                    {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 50}}]},
            },
        })},
        "/v1/responses": {"post": _post({
            "type": "object", "required": ["model", "input"], "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "enum": PRICED},
                "input": {"type": "string", "maxLength": 200},
                "max_output_tokens": {"type": "integer", "minimum": 16, "maximum": 64},
                "stream": {"type": "boolean"},
            },
        })},
    },
}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return " ".join(str(exc).split())[:300]


def fuzz(schema: schemathesis.BaseSchema, base_url: str, headers: dict[str, str],
         keep: Callable[[str], bool] = lambda label: True) -> tuple[int, list[str]]:
    """Every operation, valid and invalid inputs; returns (calls made, server errors seen)."""
    failures: list[str] = []
    calls = 0
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if not keep(operation.label):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                try:
                    case.call_and_validate(base_url=base_url, session=session, headers=headers, timeout=30,
                                           checks=[not_a_server_error])
                except (Exception, BaseExceptionGroup) as exc:  # collected, not raised: no shrinking
                    failures.append(f"{case.operation.label}: {_describe(exc)} <- {case.as_curl_command()}")

            try:
                run()
            except Unsatisfiable:
                pass  # nothing to make invalid (e.g. a GET without parameters)
    return calls, failures


async def test_the_ledger_api_never_answers_with_a_server_error(tollgate: Tollgate) -> None:
    schema = schemathesis.openapi.from_url(f"{tollgate.ledger}/openapi.json")
    headers = {"Authorization": f"Bearer {tollgate.secrets.admin_token}"}
    calls, failures = await asyncio.to_thread(fuzz, schema, tollgate.ledger, headers)
    print(f"ledger: {calls} fuzzed calls")
    assert calls > 100
    assert not failures, "\n".join(sorted(set(failures))[:30])


@pytest.mark.parametrize("service", ["tier", "notifier"])
async def test_the_other_operator_apis_never_answer_with_a_server_error(tollgate: Tollgate, service: str) -> None:
    base = tollgate.system.url(service)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    headers = {"Authorization": f"Bearer {tollgate.secrets.admin_token}"}
    calls, failures = await asyncio.to_thread(fuzz, schema, base, headers)
    print(f"{service}: {calls} fuzzed calls")
    assert calls > 10
    assert not failures, "\n".join(sorted(set(failures))[:30])


@pytest.mark.parametrize("gateway", [0, 1])
async def test_the_gateway_customer_api_never_answers_with_a_server_error(tollgate: Tollgate, gateway: int) -> None:
    customer = await tollgate.customer(cents=1000, name=f"fuzz-{gateway}")
    schema = schemathesis.openapi.from_dict(GATEWAY_OPENAPI)
    headers = {"Authorization": f"Bearer {customer.key}"}
    base = tollgate.gateways[gateway]
    # Both replicas get the read endpoints; the priced calls are spread over them.
    keep: Callable[[str], bool] = (lambda label: True) if gateway == 0 else (lambda label: label.startswith("GET"))
    calls, failures = await asyncio.to_thread(fuzz, schema, base, headers, keep)
    print(f"gateway {gateway}: {calls} fuzzed calls")
    assert calls > (60 if gateway == 0 else 10)
    assert not failures, "\n".join(sorted(set(failures))[:30])
