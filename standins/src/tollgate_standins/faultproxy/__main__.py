"""`python -m tollgate_standins.faultproxy --listen 127.0.0.1:P --upstream 127.0.0.1:Q --control 127.0.0.1:C`

Each flag falls back to FAULTPROXY_LISTEN / FAULTPROXY_UPSTREAM / FAULTPROXY_CONTROL."""

from __future__ import annotations

import argparse

import uvicorn

from .app import FaultProxySettings, create_app, split_hostport


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tollgate_standins.faultproxy")
    parser.add_argument("--listen", help="HOST:PORT clients connect to")
    parser.add_argument("--upstream", help="HOST:PORT of the real service")
    parser.add_argument("--control", help="HOST:PORT of the HTTP control API")
    parser.add_argument("--seed", type=int, help="seed for latency jitter, so a chaos run replays")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (
            ("listen", args.listen),
            ("upstream", args.upstream),
            ("control", args.control),
            ("seed", args.seed),
        )
        if v is not None
    }
    settings = FaultProxySettings(**overrides)
    control_host, control_port = split_hostport(settings.control)
    uvicorn.run(
        create_app(settings),
        host=control_host,
        port=control_port,
        log_level=settings.log_level,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
