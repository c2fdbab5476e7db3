"""`python -m tollgate_gateway serve` as operators run it: several uvicorn workers behind one
port, all settings from the environment, and usage delivered from whichever worker served."""

from __future__ import annotations

from pathlib import Path

from openai import AsyncOpenAI

from support.servers import Infra, eventually, service_process

from .conftest import UPSTREAM_KEY, Seeder, TapFactory, ThreadServer, Upstream


async def test_the_gateway_runs_as_a_multi_worker_process(
    clean_bus: Infra, clean_redis: Infra, upstream: Upstream, upstream_server: ThreadServer, gateway_db: str,
    seed: Seeder, usage_tap: TapFactory, workdir: Path,
) -> None:
    customer = await seed()
    tap = await usage_tap(customer.id)
    env = {
        "DATABASE_URL": gateway_db,
        "UPSTREAM_BASE_URL": upstream_server.url + "/v1",
        "UPSTREAM_API_KEY": UPSTREAM_KEY,
        "GATEWAY_WORKERS": "2",
        "GATEWAY_SPOOL_DIR": str(workdir / "process-spool"),
    }
    async with service_process("tollgate_gateway", clean_bus, env=env) as proc:
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{proc.port}/v1", api_key=customer.key, max_retries=0)
        ids = set()
        for _ in range(6):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
            )
            ids.add(raw.headers["x-request-id"])
        events = await eventually(lambda: tap.events if len(tap.events) >= 6 else None)
        assert {e["event_id"] for e in events} == ids
        log = (proc.log.read_text() if proc.log else "")
    assert UPSTREAM_KEY not in log and customer.key not in log  # secrets never reach the logs
