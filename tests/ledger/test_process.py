"""`python -m tollgate_ledger` as a real process: migrates, becomes ready against real
dependencies, serves the admin API, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import httpx

from ledger.support import ADMIN_TOKEN, WEBHOOK_SECRET
from support.servers import Infra, service_process


async def test_the_service_process_starts_ready_and_stops_cleanly(provisioned: Infra) -> None:
    env = {"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN, "DODO_PAYMENTS_WEBHOOK_KEY": WEBHOOK_SECRET,
           "LEDGER_RUN_RECONCILER": "false", "DODO_PAYMENTS_BASE_URL": "", "DATABASE_URL": provisioned.database_url}
    async with service_process("tollgate_ledger", provisioned, env=env) as proc:
        base = f"http://127.0.0.1:{proc.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            ready = (await client.get("/readyz")).json()
            created = await client.post("/admin/v1/customers", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                        json={"email": "proc@example.com", "name": "Proc", "create_in_dodo": False})
        assert ready == {"ready": True, "checks": {"postgres": "ok", "redis": "ok", "nats": "ok"}}
        assert created.status_code == 201
    # uvicorn re-raises SIGTERM after its graceful shutdown; the lifespan must have finished.
    assert proc.log is not None and "Application shutdown complete" in proc.log.read_text()
