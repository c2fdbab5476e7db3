"""`python -m tollgate_standins.<name>` starts each stand-in as its own process, configured from
the environment, doing its real job."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from email.message import EmailMessage

import aiosmtplib
import httpx

from .helpers import eventually, free_port


@asynccontextmanager
async def running(module: str, env: Mapping[str, str], health_url: str) -> AsyncIterator[httpx.AsyncClient]:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"tollgate_standins.{module}"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"{module} exited with {proc.returncode}")
                try:
                    return (await http.get(health_url)).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout=20)
            yield http
    finally:
        proc.terminate()
        proc.wait(10)


async def test_mock_upstream_process_serves_chat_with_env_config() -> None:
    port = free_port()
    env = {"MOCK_UPSTREAM_PORT": str(port), "MOCK_UPSTREAM_API_KEY": "sk-env", "MOCK_UPSTREAM_OUTPUT_TOKENS": "3"}
    base = f"http://127.0.0.1:{port}"
    async with running("mock_upstream", env, f"{base}/healthz") as http:
        denied = await http.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": []})
        ok = await http.post(
            f"{base}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-env"},
        )

    assert denied.status_code == 401
    assert ok.status_code == 200
    assert ok.json()["usage"]["completion_tokens"] == 3


async def test_smtp_sink_process_receives_mail() -> None:
    smtp_port, http_port = free_port(), free_port()
    env = {"SMTP_SINK_SMTP_PORT": str(smtp_port), "SMTP_SINK_HTTP_PORT": str(http_port)}
    base = f"http://127.0.0.1:{http_port}"
    async with running("smtp_sink", env, f"{base}/healthz") as http:
        message = EmailMessage()
        message["From"] = "a@example.test"
        message["To"] = "b@example.test"
        message["Subject"] = "hello"
        message.set_content("body")
        await aiosmtplib.send(message, hostname="127.0.0.1", port=smtp_port, start_tls=False)
        messages = (await http.get(f"{base}/messages", params={"wait_ms": 5000})).json()

    assert [m["subject"] for m in messages] == ["hello"]


async def test_slack_sink_process_accepts_webhook() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with running("slack_sink", {"SLACK_SINK_PORT": str(port)}, f"{base}/healthz") as http:
        posted = await http.post(f"{base}/services/T/B/X", json={"text": "hi"})
        messages = (await http.get(f"{base}/messages")).json()

    assert posted.text == "ok"
    assert [m["text"] for m in messages] == ["hi"]
