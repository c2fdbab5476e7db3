"""HTTP control API around one FaultProxy, for running the proxy as its own process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .proxy import FaultProxy, ToxicError, Toxics


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class FaultProxySettings(BaseSettings):
    """FAULTPROXY_LISTEN / FAULTPROXY_UPSTREAM / FAULTPROXY_CONTROL, each HOST:PORT."""

    model_config = SettingsConfigDict(env_prefix="FAULTPROXY_", extra="ignore")

    listen: str = "127.0.0.1:0"
    upstream: str = "127.0.0.1:6379"
    control: str = "127.0.0.1:8474"
    log_level: str = "warning"
    seed: int | None = None

    @field_validator("listen", "upstream", "control")
    @classmethod
    def _hostport(cls, value: str) -> str:
        split_hostport(value)
        return value


def create_control_app(proxy: FaultProxy, *, manage_proxy: bool = True) -> Starlette:
    """Routes over an existing proxy; with manage_proxy the app's lifespan starts and stops it."""

    def describe() -> dict[str, Any]:
        return proxy.toxics.as_dict()

    async def get_toxics(request: Request) -> Response:
        return JSONResponse(describe())

    async def put_toxics(request: Request) -> Response:
        try:
            patch = await request.json()
            await proxy.update(patch)
        except ValueError as exc:  # ToxicError and JSON decode errors both land here
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(describe())

    async def delete_toxics(request: Request) -> Response:
        await proxy.clear_toxics()
        return JSONResponse(describe())

    async def delete_toxic(request: Request) -> Response:
        name = request.path_params["name"]
        default = Toxics().as_dict()
        if name not in default:
            return JSONResponse({"error": f"unknown toxic {name!r}"}, status_code=404)
        try:
            await proxy.update({name: default[name]})
        except ToxicError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(describe())

    async def stats(request: Request) -> Response:
        return JSONResponse(
            {
                "listen": f"{proxy.listen_host}:{proxy.port}",
                "upstream": f"{proxy.upstream_host}:{proxy.upstream_port}",
                "active_connections": proxy.active_connections,
                "total_connections": proxy.total_connections,
            }
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "port": proxy.port})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_proxy:
            await proxy.start()
        app.state.proxy = proxy
        try:
            yield
        finally:
            if manage_proxy:
                await proxy.stop()

    return Starlette(
        routes=[
            Route("/toxics", get_toxics, methods=["GET"]),
            Route("/toxics", put_toxics, methods=["PUT", "POST"]),
            Route("/toxics", delete_toxics, methods=["DELETE"]),
            Route("/toxics/{name}", delete_toxic, methods=["DELETE"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def create_app(settings: FaultProxySettings | None = None) -> Starlette:
    cfg = settings or FaultProxySettings()
    listen_host, listen_port = split_hostport(cfg.listen)
    upstream_host, upstream_port = split_hostport(cfg.upstream)
    proxy = FaultProxy(listen_port, upstream_host, upstream_port, listen_host=listen_host, seed=cfg.seed)
    return create_control_app(proxy)
