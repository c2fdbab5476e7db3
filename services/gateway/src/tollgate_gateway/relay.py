"""Follows one upstream SSE stream on its way to the client, event by event and without holding
anything back: splits events, notes the usage, collects the generated text (for a local count
when the upstream gives no usage or the stream ends early), strips the usage chunk the client did
not ask for, and cuts the stream off cleanly once the output would exceed what was reserved."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from tollgate_gateway import tokens
from tollgate_gateway.billing import Usage, from_openai
from tollgate_gateway.parsing import CHAT, RESPONSES

DONE = b"data: [DONE]"
_TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass(slots=True)
class UsageMark:
    """Where the usage goes in the outgoing stream: rendered once billing has settled."""

    obj: dict[str, Any]  # the chunk / terminal event carrying the usage
    usage: Usage | None  # None: the upstream gave none, the gateway counts it
    event_name: bytes | None = None  # Responses: the `event:` line


class StreamRelay:
    def __init__(self, kind: str, allowed_output: int, deadline: float) -> None:
        self.kind = kind
        self.allowed = allowed_output
        self.deadline = deadline
        self.sep = b"\n\n"
        self._sep_known = False
        self.buf = b""
        self.usage: Usage | None = None
        self.texts: dict[int, list[str]] = {}
        self.meta: dict[str, Any] = {}
        self.sequence = -1
        self.done = False
        self.failed = False
        self.cut = False
        self._counted = 0
        self._pending: list[str] = []
        self._pending_bytes = 0

    # -- feeding
    def feed(self, data: bytes) -> list[bytes | UsageMark]:
        if not self._sep_known:
            self._sep_known = True
            if b"\r\n" in data:
                self.sep = b"\r\n\r\n"
        buf = self.buf + data if self.buf else data
        out: list[bytes | UsageMark] = []
        sep = self.sep
        start = 0
        while not self.cut:
            end = buf.find(sep, start)
            if end < 0:
                break
            event = buf[start:end]
            start = end + len(sep)
            self._event(event, sep, out)
        self.buf = b"" if self.cut else buf[start:]
        if not self.cut and not self.done and time.monotonic() > self.deadline:
            self.cut = True  # the hold would expire: end now, settle under it
        return out

    def _event(self, event: bytes, sep: bytes, out: list[bytes | UsageMark]) -> None:
        name: bytes | None = None
        if event.startswith(b"data: ") and b"\n" not in event:
            payload = event[6:]
        else:
            data_lines = []
            for line in event.splitlines():
                if line.startswith(b"data:"):
                    data_lines.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
            if not data_lines:
                out.append(event + sep)  # comments, keep-alives
                return
            payload = b"\n".join(data_lines)
        if payload == b"[DONE]":
            self.done = True
            if self.usage is None and self.kind != RESPONSES:
                out.append(UsageMark({**self.meta, "choices": []}, None))
            out.append(event + sep)
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            out.append(event + sep)
            return
        if not isinstance(obj, dict):
            out.append(event + sep)
            return
        if self.kind == RESPONSES:
            self._responses_event(obj, name, event + sep, out)
        else:
            self._completion_chunk(obj, event + sep, out)

    def _completion_chunk(self, obj: dict[str, Any], raw: bytes, out: list[bytes | UsageMark]) -> None:
        if obj.get("error"):
            self.failed = True
            out.append(raw)
            return
        if not self.meta:
            self.meta = {k: obj[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in obj}
        added = 0
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    added += self._choice_text(choice)
        if added and self._over_budget():
            self._drop_last(choices)
            self.cut = True
            return
        usage = from_openai(obj.get("usage"))
        if usage is not None:
            self.usage = usage
            out.append(UsageMark(obj, usage))
            return
        out.append(raw)

    def _choice_text(self, choice: dict[str, Any]) -> int:
        index = choice.get("index", 0)
        index = index if isinstance(index, int) else 0
        if self.kind != CHAT:
            text = choice.get("text")
            if isinstance(text, str) and text:
                self._add(index, text)
                return 1
            return 0
        delta = choice.get("delta")
        if not delta or not isinstance(delta, dict):
            return 0
        added = 0
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._add(index, content)
            added += 1
        if len(delta) > 1 or content is None:  # the common chunk carries content only
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                self._add(index, refusal)
                added += 1
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        for field in ("name", "arguments"):
                            value = fn.get(field)
                            if isinstance(value, str) and value:
                                self._add(index, value)
                                added += 1
        return added

    def _responses_event(
        self, obj: dict[str, Any], name: bytes | None, raw: bytes, out: list[bytes | UsageMark]
    ) -> None:
        kind = obj.get("type")
        seq = obj.get("sequence_number")
        if isinstance(seq, int):
            self.sequence = seq
        if kind in _TEXT_DELTAS:
            delta = obj.get("delta")
            if isinstance(delta, str) and delta:
                index = obj.get("output_index", 0)
                self._add(index if isinstance(index, int) else 0, delta)
                if self._over_budget():
                    self._pop(index if isinstance(index, int) else 0)
                    self.cut = True
                    return
        elif kind == "response.created" and isinstance(obj.get("response"), dict):
            self.meta = dict(obj["response"])
        elif kind in _TERMINAL:
            self.done = True
            if kind == "response.failed":
                self.failed = True
            response = obj.get("response")
            usage = from_openai(response.get("usage")) if isinstance(response, dict) else None
            if usage is not None:
                self.usage = usage
                out.append(UsageMark(obj, usage, name))
                return
            if isinstance(response, dict):
                out.append(UsageMark(obj, None, name))
                return
        elif kind == "error":
            self.failed = True
        out.append(raw)

    # -- output accounting
    def _add(self, index: int, piece: str) -> None:
        self.texts.setdefault(index, []).append(piece)
        self._pending.append(piece)
        self._pending_bytes += len(piece) if piece.isascii() else len(piece.encode())

    def _pop(self, index: int) -> None:
        self.texts[index].pop()

    def _drop_last(self, choices: Any) -> None:
        for choice in choices:
            if isinstance(choice, dict):
                index = choice.get("index", 0)
                pieces = self.texts.get(index if isinstance(index, int) else 0)
                if pieces:
                    pieces.pop()

    def _over_budget(self) -> bool:
        # Bytes bound tokens from above: only tokenize when the cheap bound says we might be over.
        if self._counted + self._pending_bytes <= self.allowed:
            return False
        self._counted += tokens.count_all(self._pending)
        self._pending = []
        self._pending_bytes = 0
        return self._counted > self.allowed

    def output_tokens(self) -> int:
        return sum(tokens.count("".join(pieces)) for pieces in self.texts.values())

    # -- endings the gateway writes itself
    def cutoff_frames(self) -> list[bytes | UsageMark]:
        """A clean end: finish_reason "length" per choice, the usage (rendered by the caller) and
        [DONE]; for Responses a `response.incomplete` event with the usage."""
        if self.kind == RESPONSES:
            response = dict(self.meta)
            text = "".join(self.texts.get(0, []))
            response.update(
                status="incomplete",
                incomplete_details={"reason": "max_output_tokens"},
                output=[
                    {
                        "id": "msg_cutoff", "type": "message", "status": "incomplete", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
                    }
                ],
            )
            event = {"type": "response.incomplete", "sequence_number": self.sequence + 1, "response": response}
            return [UsageMark(event, None, b"response.incomplete")]
        frames: list[bytes | UsageMark] = []
        indexes = sorted(self.texts) or [0]
        base = dict(self.meta)
        for index in indexes:
            if self.kind == CHAT:
                choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": "length"}
            else:
                choice = {"text": "", "index": index, "logprobs": None, "finish_reason": "length"}
            frames.append(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
        frames.append(UsageMark({**base, "choices": []}, None))
        frames.append(DONE + b"\n\n")
        return frames

    def failure_frames(self, message: str) -> list[bytes]:
        if self.kind == RESPONSES:
            event = {
                "type": "error", "code": "upstream_error", "message": message, "param": None,
                "sequence_number": self.sequence + 1,
            }
            return [b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"]
        error = {"error": {"message": message, "type": "server_error", "param": None, "code": "upstream_error"}}
        return [b"data: " + orjson.dumps(error) + b"\n\n", DONE + b"\n\n"]


def render_usage(
    mark: UsageMark, kind: str, client_wants_usage: bool, usage_obj: dict[str, Any], extra: dict[str, Any]
) -> bytes:
    """The usage chunk/event as the client receives it: with the gateway's billing facts added
    (`usage.tollgate`), or - for a client that did not ask for usage - without the usage at all."""
    obj = mark.obj
    if kind == RESPONSES:
        response = obj.get("response")
        if isinstance(response, dict):
            response["usage"] = {**usage_obj, "tollgate": extra}
        name = mark.event_name or str(obj.get("type", "message")).encode()
        return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
    choices = obj.get("choices")
    if not client_wants_usage:
        if not choices:
            return b""
        stripped = {k: v for k, v in obj.items() if k != "usage"}
        return b"data: " + orjson.dumps(stripped) + b"\n\n"
    return b"data: " + orjson.dumps({**obj, "usage": {**usage_obj, "tollgate": extra}}) + b"\n\n"
