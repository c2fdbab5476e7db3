"""Real servers for the stand-in tests: each stand-in runs under uvicorn in its own thread (own
event loop, real loopback sockets on free ports), so a test's client and the server under test
never share a loop and a misbehaving test cannot stall the server."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from openai import AsyncOpenAI

from tollgate_standins.mock_upstream import MockUpstreamSettings
from tollgate_standins.mock_upstream import create_app as create_mock_upstream
from tollgate_standins.slack_sink import SlackSinkSettings
from tollgate_standins.slack_sink import create_app as create_slack_sink
from tollgate_standins.smtp_sink import SmtpSinkSettings
from tollgate_standins.smtp_sink import create_app as create_smtp_sink

from .helpers import (
    HOOK_SECRET,
    SMTP_PASSWORD,
    SMTP_USER,
    UPSTREAM_KEY,
    ThreadServer,
    Upstream,
    free_port,
    serve,
)


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[ThreadServer]:
    settings = MockUpstreamSettings(api_key=UPSTREAM_KEY, reasoning_share_pct=50, log_size=50)
    with serve(create_mock_upstream(settings)) as server:
        yield server


@pytest.fixture
async def upstream(upstream_server: ThreadServer) -> AsyncIterator[Upstream]:
    async with httpx.AsyncClient(base_url=upstream_server.url, timeout=10) as http:
        await http.delete("/_mock/config")
        await http.delete("/_mock/requests")
        yield Upstream(upstream_server.url, http, upstream_server.app)
        await http.delete("/_mock/config")


@pytest.fixture
async def openai_client(upstream: Upstream) -> AsyncIterator[AsyncOpenAI]:
    client = upstream.client()
    try:
        yield client
    finally:
        await client.close()


# ---------------------------------------------------------------------------- sinks


@dataclass
class SmtpSink:
    url: str
    smtp_port: int
    http: httpx.AsyncClient


def _smtp_sink(settings: SmtpSinkSettings) -> Iterator[ThreadServer]:
    with serve(create_smtp_sink(settings)) as server:
        yield server


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[ThreadServer]:
    yield from _smtp_sink(SmtpSinkSettings(smtp_port=0))


@pytest.fixture(scope="session")
def smtp_auth_server() -> Iterator[ThreadServer]:
    yield from _smtp_sink(
        SmtpSinkSettings(smtp_port=0, auth_username=SMTP_USER, auth_password=SMTP_PASSWORD, auth_required=True)
    )


async def _smtp_fixture(server: ThreadServer) -> AsyncIterator[SmtpSink]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        await http.delete("/messages")
        await http.delete("/_sink/refuse")
        yield SmtpSink(server.url, server.app.state.smtp_port, http)
        await http.delete("/_sink/refuse")


@pytest.fixture
async def smtp_sink(smtp_server: ThreadServer) -> AsyncIterator[SmtpSink]:
    async for sink in _smtp_fixture(smtp_server):
        yield sink


@pytest.fixture
async def smtp_auth_sink(smtp_auth_server: ThreadServer) -> AsyncIterator[SmtpSink]:
    async for sink in _smtp_fixture(smtp_auth_server):
        yield sink


@pytest.fixture(scope="session")
def slack_server() -> Iterator[ThreadServer]:
    with serve(create_slack_sink(SlackSinkSettings(hook_secret=HOOK_SECRET))) as server:
        yield server


@pytest.fixture
async def slack(slack_server: ThreadServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=slack_server.url, timeout=10) as http:
        await http.delete("/messages")
        await http.delete("/hooks")
        await http.delete("/_sink/fail")
        yield http
        await http.delete("/_sink/fail")


# ---------------------------------------------------------------------------- redis for the fault proxy


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """The machine's Redis on 6379 when it answers; otherwise a private redis-server (as in CI
    on a fresh machine), so the fault-proxy tests never depend on what happens to be running."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        if s.recv(16).startswith(b"+PONG"):
            yield 6379
            return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server binary")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="standins-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)
