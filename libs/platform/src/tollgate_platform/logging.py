"""Structured logging (structlog, JSON lines) with secrets redacted before anything is written."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(authorization|api[_-]?key|secret|password|token|webhook[_-]?key|cookie)", re.I)
_SECRET_VALUES = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|whsec_[A-Za-z0-9+/=]+|Bearer\s+\S+)")


def redact(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub("[redacted]", value)
    if isinstance(value, dict):
        return {k: "[redacted]" if _SECRET_KEYS.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = "[redacted]" if _SECRET_KEYS.search(key) else redact(event_dict[key])
    return event_dict


class _RedactingFilter(logging.Filter):
    """Stdlib records (uvicorn, faststream, httpx) pass through the same redaction."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _SECRET_VALUES.sub("[redacted]", record.msg)
        if record.args:
            record.args = tuple(redact(a) for a in record.args) if isinstance(record.args, tuple) else record.args
        return True


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # The traceback becomes text before redaction, so a key inside it is redacted too.
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(isinstance(f, _RedactingFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_RedactingFilter())
        handler.setFormatter(logging.Formatter(f'{{"service":"{service}","level":"%(levelname)s","logger":"%(name)s","event":"%(message)s"}}'))
        root.handlers = [handler]
    # httpx logs every request line at INFO, including query strings; keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
