"""No secret appears in any service's logs, metrics, traces or error bodies: the upstream API key,
the Dodo API key, the webhook signing secret, the SMTP password, the admin token, and every
customer key issued during the security tests. Runs last in this package (see conftest), so the
logs searched hold everything the other tests did - failed logins, forged webhooks, fuzzing -
plus the paths below that handle each secret: an upstream failure, Dodo failing, an email sent
through an SMTP server that requires the password, usage metered to Dodo with its key."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import httpx
import pytest

from security.conftest import Tollgate
from support.servers import eventually
from support.system import SERVICES


async def _exercise_every_secret(tollgate: Tollgate) -> tuple[str, list[str]]:
    """Returns the buyer's customer id and the error bodies the paths handling secrets answered with."""
    bodies: list[str] = []
    buyer = await tollgate.customer(name="leak-buyer")
    async with tollgate.admin() as admin:  # a pack: Dodo checkout (Dodo key) -> webhook (secret) -> email (SMTP)
        r = await admin.post(f"/admin/v1/customers/{buyer.customer_id}/checkout", json={"pack": "Tollgate credits $5"})
        r.raise_for_status()
        session_id = r.json()["session_id"]
    async with tollgate.dodo() as dodo:
        (await dodo.post(f"/_emulator/checkouts/{session_id}/pay")).raise_for_status()
    async with httpx.AsyncClient(base_url=tollgate.gateways[0], timeout=30) as gateway:
        headers = {"Authorization": f"Bearer {buyer.key}"}
        for _ in range(3):  # usage the metering service sends to Dodo with the Dodo key
            r = await gateway.post("/v1/chat/completions", headers=headers, json={
                "model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code in (200, 402), r.text
        for fail in ("500", "503", "mid_stream"):  # the upstream failing: error bodies to the client
            r = await gateway.post("/v1/chat/completions", headers=headers, json={
                "model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                "mock": {"fail": fail}})
            bodies.append(r.text)
        r = await gateway.get("/v1/models", headers={"Authorization": f"Bearer {tollgate.secrets.upstream_key}"})
        bodies.append(r.text)  # someone trying the upstream key on the gateway
    async with tollgate.dodo() as dodo:  # Dodo failing while the ledger calls it
        (await dodo.put("/_emulator/faults", json={"endpoints": [
            {"method": "*", "path_prefix": "/checkouts", "error_rate": 1.0, "status": 500},
            {"method": "*", "path_prefix": "/customers", "error_rate": 1.0, "status": 401}]})).raise_for_status()
        try:
            async with tollgate.admin() as admin:
                r = await admin.post(f"/admin/v1/customers/{buyer.customer_id}/checkout",
                                     json={"pack": "Tollgate credits $5"})
                bodies.append(r.text)
                r = await admin.post("/admin/v1/customers", json={"email": "dodo-down@security.example", "name": "x"})
                bodies.append(r.text)
                r = await admin.get("/admin/v1/customers", headers={"Authorization": "Bearer wrong"})
                bodies.append(r.text)
        finally:
            (await dodo.delete("/_emulator/faults")).raise_for_status()
    async with httpx.AsyncClient(timeout=30) as client:
        smtp = tollgate.system.url("smtp-sink")

        async def receipt_mailed() -> bool:
            mails = (await client.get(f"{smtp}/messages")).json()
            return any(m.get("auth_login") == "tollgate" for m in mails)

        await eventually(receipt_mailed, timeout=30, interval=0.3)
    await eventually(lambda: len(tollgate.traces.bodies) > 0, timeout=30, interval=0.3)
    return buyer.customer_id, bodies


async def test_no_secret_in_logs_metrics_traces_or_error_bodies(tollgate: Tollgate) -> None:
    buyer, error_bodies = await _exercise_every_secret(tollgate)
    places: dict[str, bytes] = {}
    for log in sorted(tollgate.infra.workdir.glob("*.log")):
        if log.name.split("-", 1)[0] in SERVICES:
            places[f"log {log.name}"] = log.read_bytes()
    async with httpx.AsyncClient(timeout=30) as client:
        for service in SERVICES:
            for i, replica in enumerate(tollgate.system.replicas[service]):
                places[f"metrics {service}[{i}]"] = (await client.get(f"{replica.url}/metrics")).content
    places.update({f"error body {i}": body.encode() for i, body in enumerate(error_bodies)})
    places.update({f"trace export {i}": body for i, body in enumerate(tollgate.traces.bodies)})
    assert any(name.startswith("log gateway") for name in places) and any(n.startswith("log notifier") for n in places)
    # The search sees real content: the buyer's (non-secret) id is logged and traced somewhere.
    assert any(buyer.encode() in v for k, v in places.items() if k.startswith("log"))
    assert any(buyer.encode() in v for k, v in places.items() if k.startswith("trace"))

    wanted = {**tollgate.secrets.named(), **{f"customer key {k[:12]}": k for k in tollgate.customer_keys}}
    leaks = [f"{what} in {where}" for what, secret in wanted.items() for where, content in places.items()
             if secret.encode() in content]
    assert not leaks, "\n".join(leaks)


LOGGING_PROBE = """
import structlog
from tollgate_platform.logging import configure_logging

configure_logging("probe", "INFO", json={json})
log = structlog.get_logger("probe")

def authenticate(authorization: bytes) -> None:
    presented = authorization.decode().split(" ", 1)[1]
    raise RuntimeError("redis went away")  # any unexpected error while a key is in hand

try:
    authenticate(b"Bearer {key}")
except RuntimeError:
    log.exception("unexpected gateway error", request_id="req_probe")
"""


@pytest.mark.parametrize("json_logs", [True, False], ids=["LOG_JSON=true", "LOG_JSON=false"])
def test_an_unexpected_error_logs_its_traceback_but_no_key(json_logs: bool) -> None:
    """Found with the chaos run's console logs: with LOG_JSON=false the console renderer prints
    rich tracebacks *with local variables*, after the redaction processor has run, so the
    customer's plaintext key (`presented`, `authorization`) is written to the log on any
    unexpected error. With LOG_JSON=true the traceback is dropped altogether ("exc_info": true),
    which hides the cause from operators. Wanted: the traceback (file, line, exception), no secret."""
    key = "sk-tg-" + secrets.token_urlsafe(30)
    out = subprocess.run(
        [sys.executable, "-c", LOGGING_PROBE.format(json=json_logs, key=key)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )
    logged = out.stdout + out.stderr
    assert "redis went away" in logged, f"no traceback in the log:\n{logged[-2000:]}"
    assert key not in logged and key[6:] not in logged, "the plaintext API key is in the log"
