"""What every service process does the same way: logging, tracing, the FastAPI app with its ops
routes, and the `python -m tollgate_<service> [serve|migrate]` entry point."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from tollgate_platform.db import migrate
from tollgate_platform.logging import configure_logging
from tollgate_platform.ops_http import ReadinessCheck, add_ops_routes
from tollgate_platform.settings import ServiceSettings
from tollgate_platform.telemetry import create_tracer_provider

S = TypeVar("S", bound=ServiceSettings)


def build_app(
    service: str,
    settings: ServiceSettings,
    *,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    checks: Callable[[], Mapping[str, ReadinessCheck]],
    tracer_provider: TracerProvider | None,
    **fastapi_kwargs: Any,
) -> tuple[FastAPI, TracerProvider]:
    configure_logging(service, settings.log_level, settings.log_json)
    provider = tracer_provider or create_tracer_provider(service, settings.otlp_endpoint)
    app = FastAPI(title=f"Tollgate {service}", lifespan=lifespan, **fastapi_kwargs)
    add_ops_routes(app, checks)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics"
    )
    return app, provider


def main(
    service: str,
    settings_cls: type[S],
    factory: str,
    migrations_dir: Path | None,
    default_port: int,
) -> None:
    """CLI for a service: `serve` (default) runs uvicorn on the factory, `migrate` applies SQL."""
    parser = argparse.ArgumentParser(prog=f"tollgate-{service}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    settings = settings_cls()
    if args.command == "migrate":
        if migrations_dir is not None:
            applied = migrate(settings.database_url, migrations_dir, service)
            print(f"{service}: {applied} migration(s) applied")  # noqa: T201
        return
    host = args.host or getattr(settings, "host", "127.0.0.1")
    port = args.port or getattr(settings, "port", default_port)
    workers = args.workers or getattr(settings, "workers", 1)
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=20,
        lifespan="on",
    )


def run_sync(coro: Any) -> Any:
    return asyncio.run(coro)
