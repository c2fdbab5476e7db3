"""`python -m tollgate_standins.mock_upstream [--host H] [--port P]` (env: MOCK_UPSTREAM_*)."""

from __future__ import annotations

import argparse

import uvicorn

from .app import create_app
from .settings import MockUpstreamSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tollgate_standins.mock_upstream")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = MockUpstreamSettings(**overrides)
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
