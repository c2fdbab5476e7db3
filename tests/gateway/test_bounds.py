"""The worst case reserved before a request runs really is an upper bound of what it can cost:
the body's byte length bounds the prompt tokens the provider counts, whatever the text."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate_gateway import tokens
from tollgate_gateway.estimate import prompt_bound

messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": st.text(max_size=400)}
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(messages=messages)
async def test_the_byte_bound_covers_the_provider_token_count(messages: list[dict[str, str]]) -> None:
    body = {"model": "gpt-4o-mini", "messages": messages}
    raw = orjson.dumps(body)
    bound = await prompt_bound(
        raw, body, exact_max_bytes=64 * 1024, margin_pct=10, image_allowance=1500, context_window=128_000,
        stateful=False,
    )
    assert bound >= tokens.chat(messages)


async def test_large_bodies_are_counted_with_the_tokenizer_not_their_bytes() -> None:
    text = "the quick brown fox jumps over the lazy dog " * 5_000  # ~220 KB, ~45k tokens
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    raw = orjson.dumps(body)
    bound = await prompt_bound(
        raw, body, exact_max_bytes=64 * 1024, margin_pct=10, image_allowance=1500, context_window=128_000,
        stateful=False,
    )
    counted = tokens.chat(body["messages"])
    assert counted <= bound <= counted * 1.2 < len(raw) / 4


async def test_an_inline_image_costs_its_allowance_not_its_base64_bytes() -> None:
    image = "data:image/png;base64," + "A" * 40_000
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": image}},
    ]}]}
    raw = orjson.dumps(body)
    bound = await prompt_bound(
        raw, body, exact_max_bytes=64 * 1024, margin_pct=10, image_allowance=1500, context_window=128_000,
        stateful=False,
    )
    assert 1500 < bound < 1500 + 400
