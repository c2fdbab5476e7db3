"""OpenAI-compatible mock LLM provider (stand-in for the upstream the gateway proxies to)."""

from .app import MockUpstream, create_app
from .settings import FAIL_MODES, KnobError, Knobs, MockUpstreamSettings

__all__ = ["FAIL_MODES", "KnobError", "Knobs", "MockUpstream", "MockUpstreamSettings", "create_app"]
