"""`python -m tollgate_standins.slack_sink [--host H] [--port P]` (env: SLACK_SINK_*)."""

from __future__ import annotations

import argparse

import uvicorn

from .app import SlackSinkSettings, create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tollgate_standins.slack_sink")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = SlackSinkSettings(**overrides)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
