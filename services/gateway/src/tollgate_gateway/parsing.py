"""One orjson parse per request, and checks of only the fields billing depends on. Everything
else in the body is the upstream's business and passes through untouched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tollgate_gateway.errors import bad_request

CHAT = "chat"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"

ENDPOINTS: dict[str, str] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/responses": RESPONSES,
}

# OpenAI's documented default for legacy completions without max_tokens.
LEGACY_COMPLETIONS_DEFAULT_MAX_TOKENS = 16
MAX_CHOICES = 128


@dataclass(slots=True)
class Parsed:
    kind: str
    body: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool
    max_out: int | None  # the client's cap on output tokens per choice, if any
    max_fields: tuple[str, ...]  # the field(s) that carry it in this request
    choices: int  # how many outputs are generated (and billed) per request
    stateful: bool  # earlier turns are added upstream (Responses previous_response_id/conversation)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < minimum:
        raise bad_request(f"Invalid type or value for '{name}': expected an integer >= {minimum}.", name)
    return int(value)


def _opt_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"Invalid type for '{name}': expected a boolean.", name)
    return value


def _prompt_like(value: Any, name: str) -> int:
    """Validates a prompt/input list; returns how many separate inputs it holds."""
    if isinstance(value, str):
        return 1
    if isinstance(value, list) and value:
        if all(_is_int(v) for v in value):
            return 1
        if all(isinstance(v, str) or (isinstance(v, list) and all(_is_int(t) for t in v)) for v in value):
            return len(value)
    raise bad_request(
        f"Invalid type for '{name}': expected a string, an array of strings, an array of tokens or an "
        "array of token arrays.", name,
    )


def parse(kind: str, raw: bytes) -> Parsed:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request(
            "We could not parse the JSON body of your request. The API expects a JSON payload.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter.", "model")
    stream = _opt_bool(body, "stream")
    wants_usage = False
    if stream:
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise bad_request("Invalid type for 'stream_options': expected an object.", "stream_options")
        wants_usage = bool(options and options.get("include_usage") is True)
    n = _opt_int(body, "n", 1) or 1
    if n > MAX_CHOICES:
        raise bad_request(f"'n' must be at most {MAX_CHOICES}.", "n")
    stateful = False

    if kind == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise bad_request("Invalid type for 'messages': expected a non-empty array of message objects.", "messages")
        mct = _opt_int(body, "max_completion_tokens", 1)
        mt = _opt_int(body, "max_tokens", 1)
        fields = tuple(f for f, v in (("max_completion_tokens", mct), ("max_tokens", mt)) if v is not None)
        caps = [v for v in (mct, mt) if v is not None]
        return Parsed(kind, body, model, stream, wants_usage, min(caps) if caps else None, fields, n, stateful)

    if kind == COMPLETIONS:
        prompts = _prompt_like(body.get("prompt"), "prompt")
        best_of = _opt_int(body, "best_of", 1) or 1
        mt = _opt_int(body, "max_tokens", 0)
        cap = LEGACY_COMPLETIONS_DEFAULT_MAX_TOKENS if mt is None else mt
        return Parsed(kind, body, model, stream, wants_usage, cap, ("max_tokens",), max(n, best_of) * prompts, stateful)

    if kind == EMBEDDINGS:
        _prompt_like(body.get("input"), "input")
        if stream:
            raise bad_request("Embeddings cannot be streamed.", "stream")
        return Parsed(kind, body, model, False, False, 0, (), 1, stateful)

    input_ = body.get("input")
    if not isinstance(input_, str | list):
        raise bad_request("Invalid type for 'input': expected a string or an array of input items.", "input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("Invalid type for 'instructions': expected a string.", "instructions")
    if _opt_bool(body, "background"):
        # The final usage of a background response is only known when someone polls for it later,
        # which this gateway does not do: refuse rather than serve unbilled.
        raise bad_request("Background responses are not supported by this gateway.", "background")
    stateful = body.get("previous_response_id") is not None or body.get("conversation") is not None
    mot = _opt_int(body, "max_output_tokens", 1)
    return Parsed(kind, body, model, stream, False, mot, ("max_output_tokens",), 1, stateful)
