"""`python -m tollgate_standins.smtp_sink [--host H] [--smtp-port P] [--http-port P]` (env: SMTP_SINK_*)."""

from __future__ import annotations

import argparse

import uvicorn

from .app import SmtpSinkSettings, create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tollgate_standins.smtp_sink")
    parser.add_argument("--host")
    parser.add_argument("--smtp-port", type=int)
    parser.add_argument("--http-port", type=int)
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (("host", args.host), ("smtp_port", args.smtp_port), ("http_port", args.http_port))
        if v is not None
    }
    settings = SmtpSinkSettings(**overrides)
    # The SMTP listener is started by the app's lifespan, inside uvicorn's loop: one process, one loop.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
