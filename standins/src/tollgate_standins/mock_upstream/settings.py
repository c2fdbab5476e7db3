"""Environment configuration and behaviour knobs of the mock upstream."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

FailMode = Literal["500", "429", "503", "timeout", "mid_stream", "mid_stream_error"]
FAIL_MODES: frozenset[str] = frozenset({"500", "429", "503", "timeout", "mid_stream", "mid_stream_error"})

DEFAULT_MODELS = [
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o1-mini",
    "o3-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
]


class MockUpstreamSettings(BaseSettings):
    """Read from ``MOCK_UPSTREAM_*``; the knob fields are the defaults that ``DELETE /_mock/config``
    returns to."""

    model_config = SettingsConfigDict(env_prefix="MOCK_UPSTREAM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8090
    log_level: str = "warning"
    # When set, every /v1 call must carry "Authorization: Bearer <api_key>" or gets OpenAI's 401.
    api_key: str | None = None
    log_size: int = Field(default=200, ge=0)
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    # Off by default so a gateway can send any model name; on, unknown models get OpenAI's 404.
    strict_models: bool = False
    reasoning_model_prefixes: list[str] = Field(default_factory=lambda: ["o1", "o3"])
    embedding_dimensions: int = Field(default=16, ge=1, le=4096)

    latency_ms: int = Field(default=0, ge=0)
    chunk_delay_ms: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=16, ge=0)
    no_usage: bool = False
    fail: FailMode | None = None
    fail_after_chunks: int = Field(default=2, ge=0)
    fail_times: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    reasoning_share_pct: int = Field(default=50, ge=0, le=100)
    timeout_s: int = Field(default=300, ge=0)
    retry_after_s: int | None = Field(default=None, ge=0)


class KnobError(ValueError):
    """A knob patch that would put the mock in a state it cannot act on."""


@dataclasses.dataclass(frozen=True, slots=True)
class Knobs:
    latency_ms: int = 0
    chunk_delay_ms: int = 0
    output_tokens: int = 16
    no_usage: bool = False
    fail: str | None = None
    fail_after_chunks: int = 2
    # Global only: how many upcoming requests the global `fail` applies to (0 = all of them).
    fail_times: int = 0
    cached_tokens: int = 0
    reasoning_share_pct: int = 50
    timeout_s: int = 300
    retry_after_s: int | None = None

    @classmethod
    def from_settings(cls, s: MockUpstreamSettings) -> Knobs:
        return cls(**{f.name: getattr(s, f.name) for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, patch: Mapping[str, Any], *, per_request: bool = False) -> Knobs:
        """Validated by hand: pydantic per request would cost more than the whole mock response."""
        if not isinstance(patch, Mapping):
            raise KnobError("mock knobs must be a JSON object")
        changes: dict[str, Any] = {}
        for key, value in patch.items():
            if key not in _KNOB_NAMES:
                raise KnobError(f"unknown mock knob {key!r}; known: {sorted(_KNOB_NAMES)}")
            if per_request and key == "fail_times":
                raise KnobError("fail_times is a global knob (PUT /_mock/config), not a per-request one")
            changes[key] = _check(key, value)
        return dataclasses.replace(self, **changes) if changes else self


_KNOB_NAMES = frozenset(f.name for f in dataclasses.fields(Knobs))
_PCT_KNOBS = frozenset({"reasoning_share_pct"})


def _check(key: str, value: Any) -> Any:
    if key == "fail":
        if value is None:
            return None
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or text not in FAIL_MODES:
            raise KnobError(f"fail must be null or one of {sorted(FAIL_MODES)}")
        return text
    if key == "no_usage":
        if not isinstance(value, bool):
            raise KnobError("no_usage must be a boolean")
        return value
    if key == "retry_after_s" and value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise KnobError(f"{key} must be a non-negative integer")
    if key in _PCT_KNOBS and value > 100:
        raise KnobError(f"{key} must be between 0 and 100")
    return value
