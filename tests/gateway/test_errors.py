"""Every refusal comes in OpenAI's shape with OpenAI's status, so the SDK raises the exception
class its users already handle; a refused or failed call never costs anything and a bad request
never reaches the upstream."""

from __future__ import annotations

import hashlib

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from support.servers import eventually
from tollgate_hotstate import HotState

from .conftest import Gateway, GatewayFactory, Seeder, TapFactory, Upstream

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


async def test_missing_wrong_and_revoked_keys_are_401(gateway: Gateway, seed: Seeder, hot: HotState) -> None:
    customer = await seed()
    revoked = await seed(key_status="revoked")
    attempts = [
        (gateway.client(customer.key), {"Authorization": openai.omit}),  # no key at all
        (gateway.client("sk-tg-" + "x" * 40), {}),
        (gateway.client(revoked.key), {}),
    ]
    for client, headers in attempts:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)
        assert caught.value.code == "invalid_api_key"
        assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert await hot.available(customer.id) == 10**9


async def test_repeated_auth_failures_from_one_address_are_slowed_down(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(auth_failures_per_minute=5) as gw:
        client = gw.client("sk-tg-" + "guess" * 8)
        for _ in range(5):
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.models.list()
        assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_unknown_or_forbidden_model_is_404_and_never_reaches_upstream(
    gateway: Gateway, seed: Seeder, upstream: Upstream
) -> None:
    customer = await seed(models="gpt-4o-mini")
    client = gateway.client(customer.key)
    for model in ("gpt-unpriced", "gpt-4o"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model=model, messages=HELLO)
        assert caught.value.code == "model_not_found"
    assert await upstream.requests() == []


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": "not a list"}, "messages"),
        ({"messages": HELLO, "max_tokens": "ten"}, "max_tokens"),
        ({"messages": HELLO, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
        ({"messages": HELLO, "n": 1000}, "n"),
    ],
)
async def test_wrong_field_types_are_400(
    gateway: Gateway, seed: Seeder, upstream: Upstream, kwargs: dict[str, object], param: str
) -> None:
    customer = await seed()
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client(customer.key).chat.completions.create(model="gpt-4o-mini", **kwargs)  # type: ignore[call-overload]
    assert caught.value.param == param and caught.value.type == "invalid_request_error"
    assert await upstream.requests() == []


async def test_malformed_json_is_400(gateway: Gateway, seed: Seeder, upstream: Upstream) -> None:
    customer = await seed()
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client(customer.key).post(
            "/chat/completions", cast_to=object, content=b'{"model": "gpt-4o-mini", "messages": [',
            options={"headers": {"content-type": "application/json"}},
        )
    assert caught.value.code == "invalid_json"
    assert await upstream.requests() == []


async def test_oversized_body_is_413(gateway_factory: GatewayFactory, seed: Seeder, upstream: Upstream) -> None:
    customer = await seed()
    async with gateway_factory(max_body_bytes=16 * 1024) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.client(customer.key).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 20_000}]
            )
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
    assert await upstream.requests() == []


async def test_rate_limit_is_429_with_openai_headers(gateway: Gateway, seed: Seeder, hot: HotState) -> None:
    customer = await seed(rpm=2, tpm=100_000)
    client = gateway.client(customer.key)
    first = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, max_tokens=10)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=10)
    await eventually(lambda: _no_holds(hot, customer.id))
    balance = await hot.available(customer.id)

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=10)

    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(headers["x-ratelimit-remaining-tokens"]) > 0 and headers["x-ratelimit-reset-tokens"]
    assert await hot.available(customer.id) == balance


async def test_token_rate_limit_is_429_too(gateway: Gateway, seed: Seeder) -> None:
    customer = await seed(tpm=1_000)
    client = gateway.client(customer.key)
    # TPM counts what was really used: this one really generates 600 tokens
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=600, extra_body={"mock": {"output_tokens": 600}}
    )
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=600)
    headers = caught.value.response.headers
    assert caught.value.type == "tokens" and headers["x-ratelimit-limit-tokens"] == "1000"
    assert "x-ratelimit-limit-requests" not in headers  # this customer has no request limit


async def test_empty_balance_is_402_insufficient_quota_with_topup_link(
    gateway: Gateway, seed: Seeder, upstream: Upstream
) -> None:
    customer = await seed(balance=1_000)
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.client(customer.key).chat.completions.create(model="gpt-4o", messages=HELLO)
    error = caught.value
    assert error.status_code == 402 and error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert "$0.00" in error.message and gateway.settings.topup_url in error.message
    assert error.response.headers["x-should-retry"] == "false"
    assert await upstream.requests() == []


async def test_frozen_account_is_403(gateway: Gateway, seed: Seeder, upstream: Upstream) -> None:
    customer = await seed(status="frozen")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await gateway.client(customer.key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert caught.value.code == "account_frozen"
    assert await upstream.requests() == []


@pytest.mark.parametrize("fail", ["500", "503"])
async def test_upstream_server_error_is_502_and_costs_nothing(
    gateway: Gateway, seed: Seeder, usage_tap: TapFactory, hot: HotState, fail: str
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.client(customer.key).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_body={"mock": {"fail": fail}}
        )
    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"
    await eventually(lambda: tap.events)
    assert tap.events[0]["status"] == "upstream_error" and tap.events[0]["cost_nanos"] == 0
    assert await hot.available(customer.id) == 10**9
    assert (await hot.snapshot(customer.id))["reserved"] == "0"


async def test_upstream_4xx_passes_through_and_costs_nothing(
    gateway: Gateway, seed: Seeder, hot: HotState
) -> None:
    customer = await seed()
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client(customer.key).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_body={"mock": {"no_such_knob": 1}}
        )
    assert caught.value.param == "mock"
    with pytest.raises(openai.RateLimitError):
        await gateway.client(customer.key).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_body={"mock": {"fail": "429"}}
        )
    assert await hot.available(customer.id) == 10**9


async def test_upstream_timeout_is_504_costs_nothing_and_hangs_up_on_the_upstream(
    gateway_factory: GatewayFactory, seed: Seeder, hot: HotState, upstream: Upstream, clean_bus: object
) -> None:
    customer = await seed()
    async with gateway_factory(upstream_timeout_s=0.5) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            await gw.client(customer.key).chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, extra_body={"mock": {"fail": "timeout", "timeout_s": 30}}
            )
        assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"
        with pytest.raises(openai.InternalServerError):
            await gw.client(customer.key).chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True,
                extra_body={"mock": {"fail": "timeout", "timeout_s": 30}},
            )
    assert await hot.available(customer.id) == 10**9
    entries = await eventually(
        lambda: _all_disconnected(upstream), timeout=5
    )
    assert len(entries) == 2


async def _no_holds(hot: HotState, customer_id: str) -> bool:
    return (await hot.snapshot(customer_id)).get("reserved") == "0"


async def _all_disconnected(upstream: Upstream) -> list[dict[str, object]]:
    entries = await upstream.requests("/v1/chat/completions")
    return entries if entries and all(e["disconnected"] for e in entries) else []


async def test_unknown_path_is_404_in_openai_shape(gateway: Gateway, seed: Seeder) -> None:
    customer = await seed()
    with pytest.raises(openai.NotFoundError) as caught:
        await gateway.client(customer.key).post("/fine_tuning/jobs", cast_to=object, body={})
    assert caught.value.type == "invalid_request_error"


async def test_key_found_only_in_postgres_works_and_loads_the_account(
    gateway: Gateway, pg: object, hot: HotState
) -> None:
    key = "sk-tg-" + "P" * 40
    digest = hashlib.sha256(key.encode()).hexdigest()
    customer_id = "cus_pg_" + digest[:8]
    await pg.execute(  # type: ignore[attr-defined]
        "INSERT INTO ledger.gateway_keys VALUES ($1, 'key_pg', $2, NULL, 'active', '') ON CONFLICT DO NOTHING",
        digest, customer_id,
    )
    await pg.execute(  # type: ignore[attr-defined]
        "INSERT INTO ledger.hot_account (customer_id, bal, seq) VALUES ($1, $2, 7) ON CONFLICT DO NOTHING",
        customer_id, 2 * 10**9,
    )
    completion = await gateway.client(key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert completion.usage is not None
    snap = await hot.snapshot(customer_id)
    assert snap["seq"] == "7" and snap["rpm"] == "3" and snap["tpm"] == "40000"  # first tier's defaults
    assert int(snap["unposted"]) > 0
