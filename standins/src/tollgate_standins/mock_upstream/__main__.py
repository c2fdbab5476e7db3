"""`python -m tollgate_standins.mock_upstream [--host H] [--port P]` (env: MOCK_UPSTREAM_*)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .settings import MockUpstreamSettings


class _DropIntendedAborts(logging.Filter):
    """`fail: mid_stream` aborts responses on purpose; uvicorn would log each one as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tollgate_standins.mock_upstream")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = MockUpstreamSettings(**overrides)
    logging.getLogger("uvicorn.error").addFilter(_DropIntendedAborts())
    # No access log: it would cost more per request than the mock's own work.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
