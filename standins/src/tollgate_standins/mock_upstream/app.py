"""OpenAI-compatible mock LLM provider as a raw ASGI app.

Raw ASGI rather than FastAPI because this process is the baseline of the gateway benchmarks:
no routing tables, no request models, no middleware; bodies parsed once with orjson and
stream frames assembled from pre-serialised byte pieces.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.types import Receive, Scope, Send

from .settings import KnobError, Knobs, MockUpstreamSettings
from .tokens import WORDS, WORDS_JSON, TokenCounter, generated_text

MODEL_CREATED = 1_700_000_000
FINGERPRINT = "fp_mock"
SSE_DONE = b"data: [DONE]\n\n"
_MID_STREAM_MODES = frozenset({"mid_stream", "mid_stream_error"})
_MAX_CHOICES = 128
_YIELD_EVERY = 8

_UPSTREAM_ERRORS: dict[int, tuple[str, str, str | None]] = {
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    429: (
        "Rate limit reached for requests on the mock upstream. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    503: (
        "The engine is currently overloaded, please try again later.",
        "server_error",
        "server_is_overloaded",
    ),
}
_STREAM_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"

Handler = Callable[["_Call", dict[str, Any]], Awaitable[None]]


class _Disconnect:
    """Watches the ASGI receive channel so a client that hangs up stops the work it asked for.

    Started lazily: a plain non-stream request without latency never pays for the extra task."""

    __slots__ = ("_receive", "_task", "event")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None
        self.event = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.event.set()
                return

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds` (or just yield once); True when the client went away meanwhile."""
        self.start()
        if seconds <= 0:
            await asyncio.sleep(0)
            return self.event.is_set()
        if self.event.is_set():
            return True
        try:
            async with asyncio.timeout(seconds):
                await self.event.wait()
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class _Call:
    __slots__ = ("entry", "knobs", "rid", "send", "watch")

    def __init__(self, rid: bytes, entry: dict[str, Any], knobs: Knobs, watch: _Disconnect, send: Send) -> None:
        self.rid = rid
        self.entry = entry
        self.knobs = knobs
        self.watch = watch
        self.send = send


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _int_field(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _length(natural: int, cap: int | None) -> tuple[int, str]:
    if cap is not None and cap < natural:
        return cap, "length"
    return natural, "stop"


def _choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return min(n, _MAX_CHOICES)
    return 1


def _hex(nbytes: int) -> str:
    return os.urandom(nbytes).hex()


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


class MockUpstream:
    """The ASGI application; one instance holds the knobs, request log and token counter."""

    def __init__(self, settings: MockUpstreamSettings) -> None:
        self.settings = settings
        self.tokens = TokenCounter()
        self.defaults = Knobs.from_settings(settings)
        self.knobs = self.defaults
        self.log: deque[dict[str, Any]] = deque(maxlen=settings.log_size)
        self.request_count = 0
        self.counts: dict[str, int] = {}
        self._seq = 0
        self._models = frozenset(settings.models)
        self._models_body = orjson.dumps({"object": "list", "data": [self._model(m) for m in settings.models]})
        self._reasoning_prefixes = tuple(settings.reasoning_model_prefixes)
        self._api_key = settings.api_key
        self._embed_cache: dict[tuple[bytes, int, bool], Any] = {}
        self._post: dict[str, Handler] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._responses,
        }

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/v1/"):
                await self._v1(scope, receive, send, path)
            elif path.startswith("/_mock/"):
                await self._control(scope, receive, send, path)
            elif path in ("/healthz", "/readyz"):
                await _plain_json(send, 200, b'{"status":"ok"}')
            else:
                await _plain_json(send, 404, b'{"error":"not found"}')
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # ------------------------------------------------------------------ /v1 dispatch

    async def _v1(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method: str = scope["method"]
        raw = await _read_body(receive) if method == "POST" else b""
        rid = ("req_" + _hex(16)).encode()
        entry = self._record(scope, method, path, raw, rid)
        call = _Call(rid, entry, self.knobs, _Disconnect(receive), send)
        try:
            if self._api_key is not None and not await self._authorized(call, scope):
                return
            if method == "GET":
                await self._get(call, path)
                return
            handler = self._post.get(path) if method == "POST" else None
            if handler is None:
                await self._error(call, 404, f"Invalid URL ({method} {path})", "invalid_request_error")
                return
            body = entry["body"]
            if not isinstance(body, dict):
                await self._error(
                    call,
                    400,
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                    "using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
                    "invalid_request_error",
                )
                return
            try:
                call.knobs = self._resolve_knobs(body.get("mock"))
            except KnobError as exc:
                await self._error(call, 400, f"mock upstream: {exc}", "invalid_request_error", param="mock")
                return
            await handler(call, body)
        finally:
            call.watch.stop()

    def _record(self, scope: Scope, method: str, path: str, raw: bytes, rid: bytes) -> dict[str, Any]:
        self.request_count += 1
        self.counts[path] = self.counts.get(path, 0) + 1
        self._seq += 1
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode("utf-8", "replace")
        entry: dict[str, Any] = {
            "seq": self._seq,
            "request_id": rid.decode(),
            "method": method,
            "path": path,
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "body": body,
            "received_at": time.time(),
            "status": None,
            "stream": False,
            "tokens_generated": 0,
            "completed": False,
            "disconnected": False,
            "aborted": False,
        }
        self.log.append(entry)
        return entry

    async def _authorized(self, call: _Call, scope: Scope) -> bool:
        header = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                header = value
                break
        token = header[7:].decode("latin-1").strip() if header[:7].lower() == b"bearer " else ""
        if token and token == self._api_key:
            return True
        if not token:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            code = None
        else:
            masked = f"{token[:3]}***{token[-4:]}" if len(token) > 8 else "***"
            message = f"Incorrect API key provided: {masked}. You can find your API key in your gateway config."
            code = "invalid_api_key"
        await self._error(call, 401, message, "invalid_request_error", code=code)
        return False

    def _resolve_knobs(self, patch: Any) -> Knobs:
        current = self.knobs
        knobs = current if patch is None else current.merged(patch, per_request=True)
        overridden = isinstance(patch, dict) and "fail" in patch
        if current.fail is not None and current.fail_times > 0 and not overridden:
            left = current.fail_times - 1
            self.knobs = Knobs(**{**current.as_dict(), "fail_times": left, "fail": current.fail if left else None})
        return knobs

    async def _get(self, call: _Call, path: str) -> None:
        if path == "/v1/models":
            await self._send_bytes(call, 200, self._models_body)
            return
        if path.startswith("/v1/models/"):
            model = path[len("/v1/models/") :]
            if model in self._models:
                await self._send_bytes(call, 200, orjson.dumps(self._model(model)))
            else:
                await self._model_not_found(call, model)
            return
        await self._error(call, 404, f"Invalid URL (GET {path})", "invalid_request_error")

    # ------------------------------------------------------------------ shared response plumbing

    async def _send_bytes(
        self, call: _Call, status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        call.entry["status"] = status
        await call.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", call.rid),
                    *extra,
                ],
            }
        )
        await call.send({"type": "http.response.body", "body": body})

    async def _error(
        self,
        call: _Call,
        status: int,
        message: str,
        type_: str,
        *,
        param: str | None = None,
        code: str | None = None,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        body = orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
        await self._send_bytes(call, status, body, extra)

    async def _model_not_found(self, call: _Call, model: str) -> None:
        await self._error(
            call,
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            code="model_not_found",
        )

    async def _check_model(self, call: _Call, body: dict[str, Any]) -> str | None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            await self._error(
                call,
                400,
                "you must provide a model parameter",
                "invalid_request_error",
                param="model",
            )
            return None
        if self.settings.strict_models and model not in self._models:
            await self._model_not_found(call, model)
            return None
        return model

    async def _before_first_byte(self, call: _Call) -> bool:
        """Latency and pre-response failures; False when the request is already answered or gone."""
        knobs = call.knobs
        if knobs.latency_ms and await call.watch.pause(knobs.latency_ms / 1000):
            call.entry["disconnected"] = True
            return False
        fail = knobs.fail
        if fail is None or fail in _MID_STREAM_MODES:
            return True
        if fail == "timeout":
            if await call.watch.pause(knobs.timeout_s):
                call.entry["disconnected"] = True
                return False
            return True
        status = int(fail)
        message, type_, code = _UPSTREAM_ERRORS[status]
        extra: list[tuple[bytes, bytes]] = []
        if status == 429 and knobs.retry_after_s is not None:
            extra.append((b"retry-after", str(knobs.retry_after_s).encode()))
        await self._error(call, status, message, type_, code=code, extra=extra)
        return False

    async def _send_whole(self, call: _Call, body: bytes, tokens: int) -> None:
        fail = call.knobs.fail
        if fail == "mid_stream_error":
            # A non-stream reply has no in-band error channel: the closest honest thing is a 500.
            message, type_, code = _UPSTREAM_ERRORS[500]
            await self._error(call, 500, message, type_, code=code)
            return
        entry = call.entry
        entry["status"] = 200
        await call.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", call.rid),
                ],
            }
        )
        if fail == "mid_stream":
            # Promise the full content-length, deliver half, then return without finishing: uvicorn
            # closes the socket, so the client sees a truncated body.
            await call.send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            entry["aborted"] = True
            return
        await call.send({"type": "http.response.body", "body": body})
        entry["tokens_generated"] = tokens
        entry["completed"] = True

    async def _stream(
        self,
        call: _Call,
        head: Sequence[bytes],
        token_frame: Callable[[int], bytes],
        total: int,
        tail: Callable[[], Sequence[bytes]],
        error: Callable[[int], Sequence[bytes]],
    ) -> None:
        knobs = call.knobs
        entry = call.entry
        send = call.send
        watch = call.watch
        entry["stream"] = True
        entry["status"] = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", call.rid),
                ],
            }
        )
        try:
            for frame in head:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            failing = knobs.fail in _MID_STREAM_MODES
            stop_at = min(knobs.fail_after_chunks, total) if failing else total
            delay = knobs.chunk_delay_ms / 1000
            sent = 0
            for i in range(stop_at):
                # Without a delay, yield to the loop (so the disconnect watcher can run) only every
                # few tokens: a short stream then costs a handful of loop turns, not one per token.
                if delay > 0 or i % _YIELD_EVERY == _YIELD_EVERY - 1:
                    if await watch.pause(delay):
                        entry["disconnected"] = True
                        return
                elif watch.event.is_set():
                    entry["disconnected"] = True
                    return
                await send({"type": "http.response.body", "body": token_frame(i), "more_body": True})
                sent = i + 1
                entry["tokens_generated"] = sent
            if failing:
                if knobs.fail == "mid_stream":
                    # Returning without the final empty body makes uvicorn drop the connection: no
                    # terminating chunk, no [DONE], exactly what a crashed provider looks like.
                    entry["aborted"] = True
                    return
                for frame in error(sent):
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
            else:
                for frame in tail():
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            entry["completed"] = not failing
        except OSError:
            entry["disconnected"] = True

    # ------------------------------------------------------------------ usage

    def _reasoning(self, model: str, completion: int, knobs: Knobs) -> int:
        if model.startswith(self._reasoning_prefixes):
            return completion * knobs.reasoning_share_pct // 100
        return 0

    def _completion_usage(self, model: str, prompt: int, completion: int, knobs: Knobs) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(knobs.cached_tokens, prompt), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self._reasoning(model, completion, knobs),
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    @staticmethod
    def _model(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}

    # ------------------------------------------------------------------ chat completions

    async def _chat(self, call: _Call, body: dict[str, Any]) -> None:
        model = await self._check_model(call, body)
        if model is None:
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            await self._error(
                call, 400, "'messages' must be a non-empty array", "invalid_request_error", param="messages"
            )
            return
        if not await self._before_first_byte(call):
            return
        knobs = call.knobs
        prompt = self.tokens.chat(messages)
        count, finish = _length(knobs.output_tokens, _int_field(body, "max_completion_tokens", "max_tokens"))
        n = _choices(body)
        usage = None if knobs.no_usage else self._completion_usage(model, prompt, count * n, knobs)
        cid = "chatcmpl-" + _hex(12)
        created = int(time.time())

        if body.get("stream") is not True:
            text = generated_text(count)
            response: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": c,
                        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                    for c in range(n)
                ],
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT,
            }
            if usage is not None:
                response["usage"] = usage
            await self._send_whole(call, orjson.dumps(response), count * n)
            return

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        prefix = b"data: " + orjson.dumps(base)[:-1] + b',"choices":[{"index":'
        word_tails = tuple(
            b',"delta":{"content":' + w + b'},"logprobs":null,"finish_reason":null}]}\n\n' for w in WORDS_JSON
        )
        indexes = tuple(str(c).encode() for c in range(n))
        nwords = len(WORDS)

        def token_frame(i: int) -> bytes:
            return prefix + indexes[i % n] + word_tails[(i // n) % nwords]

        head = [
            _sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": c,
                            "delta": {"role": "assistant", "content": "", "refusal": None},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
            for c in range(n)
        ]

        def tail() -> list[bytes]:
            frames = [
                _sse(
                    {
                        **base,
                        "choices": [{"index": c, "delta": {}, "logprobs": None, "finish_reason": finish}],
                    }
                )
                for c in range(n)
            ]
            if include_usage and usage is not None:
                frames.append(_sse({**base, "choices": [], "usage": usage}))
            frames.append(SSE_DONE)
            return frames

        await self._stream(call, head, token_frame, count * n, tail, _chat_stream_error)

    # ------------------------------------------------------------------ legacy completions

    async def _completions(self, call: _Call, body: dict[str, Any]) -> None:
        model = await self._check_model(call, body)
        if model is None:
            return
        prompts = self.tokens.prompt_items(body.get("prompt"))
        if prompts is None:
            await self._error(
                call,
                400,
                "'prompt' must be a string, an array of strings, an array of tokens or an array of token arrays",
                "invalid_request_error",
                param="prompt",
            )
            return
        if not await self._before_first_byte(call):
            return
        knobs = call.knobs
        count, finish = _length(knobs.output_tokens, _int_field(body, "max_tokens"))
        n = min(_choices(body) * len(prompts), _MAX_CHOICES)
        usage = None if knobs.no_usage else self._completion_usage(model, sum(prompts), count * n, knobs)
        cid = "cmpl-" + _hex(12)
        created = int(time.time())
        base = {"id": cid, "object": "text_completion", "created": created, "model": model}

        if body.get("stream") is not True:
            text = generated_text(count)
            response: dict[str, Any] = {
                **base,
                "choices": [{"text": text, "index": c, "logprobs": None, "finish_reason": finish} for c in range(n)],
                "system_fingerprint": FINGERPRINT,
            }
            if usage is not None:
                response["usage"] = usage
            await self._send_whole(call, orjson.dumps(response), count * n)
            return

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        prefix = b"data: " + orjson.dumps(base)[:-1] + b',"choices":[{"text":'
        indexes = tuple(
            b',"index":' + str(c).encode() + b',"logprobs":null,"finish_reason":null}]}\n\n' for c in range(n)
        )
        nwords = len(WORDS)

        def token_frame(i: int) -> bytes:
            return prefix + WORDS_JSON[(i // n) % nwords] + indexes[i % n]

        def tail() -> list[bytes]:
            frames = [
                _sse({**base, "choices": [{"text": "", "index": c, "logprobs": None, "finish_reason": finish}]})
                for c in range(n)
            ]
            if include_usage and usage is not None:
                frames.append(_sse({**base, "choices": [], "usage": usage}))
            frames.append(SSE_DONE)
            return frames

        await self._stream(call, (), token_frame, count * n, tail, _chat_stream_error)

    # ------------------------------------------------------------------ embeddings

    async def _embeddings(self, call: _Call, body: dict[str, Any]) -> None:
        model = await self._check_model(call, body)
        if model is None:
            return
        raw_input = body.get("input")
        counts = self.tokens.prompt_items(raw_input)
        if counts is None:
            await self._error(
                call,
                400,
                "'input' must be a non-empty string, array of strings, array of tokens or array of token arrays",
                "invalid_request_error",
                param="input",
            )
            return
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            await self._error(
                call,
                400,
                f"Invalid value for 'encoding_format': {encoding!r}. Supported values are: 'float' and 'base64'.",
                "invalid_request_error",
                param="encoding_format",
            )
            return
        dims = _int_field(body, "dimensions") or self.settings.embedding_dimensions
        if not await self._before_first_byte(call):
            return
        # prompt_items() accepted it, so it is a string or a non-empty list.
        if isinstance(raw_input, list) and not all(isinstance(t, int) for t in raw_input):
            inputs: list[Any] = raw_input
        else:
            inputs = [raw_input]
        as_base64 = encoding == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _embedding(self._embed_cache, orjson.dumps(item), dims, as_base64),
            }
            for i, item in enumerate(inputs)
        ]
        response: dict[str, Any] = {"object": "list", "data": data, "model": model}
        prompt = sum(counts)
        if not call.knobs.no_usage:
            response["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        await self._send_whole(call, orjson.dumps(response), 0)

    # ------------------------------------------------------------------ responses API

    async def _responses(self, call: _Call, body: dict[str, Any]) -> None:
        model = await self._check_model(call, body)
        if model is None:
            return
        input_ = body.get("input")
        if not isinstance(input_, (str, list)):
            await self._error(
                call,
                400,
                "'input' must be a string or an array of input items",
                "invalid_request_error",
                param="input",
            )
            return
        if not await self._before_first_byte(call):
            return
        knobs = call.knobs
        prompt = self.tokens.responses_input(body.get("instructions"), input_)
        cap = _int_field(body, "max_output_tokens")
        count, finish = _length(knobs.output_tokens, cap)
        status = "completed" if finish == "stop" else "incomplete"
        usage: dict[str, Any] | None = None
        if not knobs.no_usage:
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {
                    "cached_tokens": min(knobs.cached_tokens, prompt),
                    "cache_write_tokens": 0,
                },
                "output_tokens": count,
                "output_tokens_details": {"reasoning_tokens": self._reasoning(model, count, knobs)},
                "total_tokens": prompt + count,
            }
        resp_id = "resp_" + _hex(16)
        msg_id = "msg_" + _hex(16)
        created = int(time.time())
        text = generated_text(count)

        def response(state: str, output: list[dict[str, Any]], use: dict[str, Any] | None) -> dict[str, Any]:
            return {
                "id": resp_id,
                "object": "response",
                "created_at": created,
                "status": state,
                "background": False,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if state == "incomplete" else None,
                "instructions": body.get("instructions"),
                "max_output_tokens": cap,
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "service_tier": "default",
                "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}},
                "tool_choice": "auto",
                "tools": [],
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": use,
                "user": body.get("user"),
                "metadata": body.get("metadata") or {},
            }

        part_done = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item_done = {
            "id": msg_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part_done],
        }

        if body.get("stream") is not True:
            await self._send_whole(call, orjson.dumps(response(status, [item_done], usage)), count)
            return

        in_progress = response("in_progress", [], None)
        head = [
            _event(
                "response.created",
                {"type": "response.created", "sequence_number": 0, "response": in_progress},
            ),
            _event(
                "response.in_progress",
                {"type": "response.in_progress", "sequence_number": 1, "response": in_progress},
            ),
            _event(
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "sequence_number": 2,
                    "output_index": 0,
                    "item": {
                        "id": msg_id,
                        "type": "message",
                        "status": "in_progress",
                        "role": "assistant",
                        "content": [],
                    },
                },
            ),
            _event(
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "sequence_number": 3,
                    "item_id": msg_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                },
            ),
        ]
        first_seq = len(head)
        delta_prefix = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
        )
        delta_middle = b',"item_id":"' + msg_id.encode() + b'","output_index":0,"content_index":0,"delta":'
        word_tails = tuple(w + b',"logprobs":[]}\n\n' for w in WORDS_JSON)
        nwords = len(WORDS)

        def token_frame(i: int) -> bytes:
            return delta_prefix + str(first_seq + i).encode() + delta_middle + word_tails[i % nwords]

        def tail() -> list[bytes]:
            seq = first_seq + count
            terminal = "response.completed" if status == "completed" else "response.incomplete"
            return [
                _event(
                    "response.output_text.done",
                    {
                        "type": "response.output_text.done",
                        "sequence_number": seq,
                        "item_id": msg_id,
                        "output_index": 0,
                        "content_index": 0,
                        "text": text,
                        "logprobs": [],
                    },
                ),
                _event(
                    "response.content_part.done",
                    {
                        "type": "response.content_part.done",
                        "sequence_number": seq + 1,
                        "item_id": msg_id,
                        "output_index": 0,
                        "content_index": 0,
                        "part": part_done,
                    },
                ),
                _event(
                    "response.output_item.done",
                    {
                        "type": "response.output_item.done",
                        "sequence_number": seq + 2,
                        "output_index": 0,
                        "item": item_done,
                    },
                ),
                _event(
                    terminal,
                    {
                        "type": terminal,
                        "sequence_number": seq + 3,
                        "response": response(status, [item_done], usage),
                    },
                ),
            ]

        def error(sent: int) -> list[bytes]:
            return [
                _event(
                    "error",
                    {
                        "type": "error",
                        "code": "server_error",
                        "message": _STREAM_ERROR_MESSAGE,
                        "param": None,
                        "sequence_number": first_seq + sent,
                    },
                )
            ]

        await self._stream(call, head, token_frame, count, tail, error)

    # ------------------------------------------------------------------ control API

    async def _control(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method: str = scope["method"]
        raw = await _read_body(receive)
        if path == "/_mock/config":
            if method == "GET":
                await _plain_json(send, 200, orjson.dumps(self.knobs.as_dict()))
            elif method == "PUT":
                try:
                    patch = orjson.loads(raw or b"{}")
                    self.knobs = self.knobs.merged(patch)
                except (orjson.JSONDecodeError, KnobError) as exc:
                    await _plain_json(send, 400, orjson.dumps({"error": str(exc)}))
                    return
                await _plain_json(send, 200, orjson.dumps(self.knobs.as_dict()))
            elif method == "DELETE":
                self.knobs = self.defaults
                await _plain_json(send, 200, orjson.dumps(self.knobs.as_dict()))
            else:
                await _plain_json(send, 405, b'{"error":"method not allowed"}')
            return
        if path == "/_mock/requests":
            if method == "GET":
                query = parse_qs(scope.get("query_string", b"").decode())
                entries = list(self.log)
                if "path" in query:
                    entries = [e for e in entries if e["path"] == query["path"][0]]
                payload = {"count": self.request_count, "by_path": self.counts, "requests": entries}
                await _plain_json(send, 200, orjson.dumps(payload))
            elif method == "DELETE":
                self.log.clear()
                self.request_count = 0
                self.counts = {}
                await _plain_json(send, 200, b'{"count":0}')
            else:
                await _plain_json(send, 405, b'{"error":"method not allowed"}')
            return
        await _plain_json(send, 404, b'{"error":"not found"}')


def _chat_stream_error(sent: int) -> list[bytes]:
    # What OpenAI does after the 200 is out: an in-band error object, then [DONE].
    return [
        _sse({"error": {"message": _STREAM_ERROR_MESSAGE, "type": "server_error", "param": None, "code": None}}),
        SSE_DONE,
    ]


_EMBED_CACHE_MAX = 4096


def _embedding(cache: dict[tuple[bytes, int, bool], Any], key: bytes, dims: int, as_base64: bool) -> Any:
    """A unit vector derived from the input alone, so the same input always embeds the same way;
    float lists hold the float32-rounded values so both encodings decode to the same numbers."""
    cache_key = (key, dims, as_base64)
    cached = cache.get(cache_key)
    if cached is not None:
        return cached
    rng = random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))
    values = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = array.array("f", (v / norm for v in values))
    result: Any
    if as_base64:
        if sys.byteorder == "big":
            packed.byteswap()
        result = base64.b64encode(packed.tobytes()).decode()
    else:
        result = packed.tolist()
    if len(cache) >= _EMBED_CACHE_MAX:
        cache.clear()
    cache[cache_key] = result
    return result


async def _plain_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: MockUpstreamSettings | None = None) -> MockUpstream:
    return MockUpstream(settings or MockUpstreamSettings())
