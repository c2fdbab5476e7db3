"""Seed the demo customer `make up` prints: a customer, $5.00 of granted credits, an API key and a
month of synthetic usage history, so the console's charts show something on first start.

Prints one JSON line: customer_id, api_key (plaintext) and console_url. Idempotent on the grant
and on the history (it is deterministic per customer and day). The history is demo data kept
apart from the ledger (`ledger.console_synthetic_usage`): it moves no money and is never sent to
Dodo, so the $5.00 stays $5.00 and reconciliation stays clean."""

from __future__ import annotations

import json
import os

import httpx

LEDGER = os.environ.get("TOLLGATE_LEDGER_URL", "http://127.0.0.1:8081")
TOKEN = os.environ.get("TOLLGATE_ADMIN_TOKEN", "dev-admin-token")


def main() -> None:
    with httpx.Client(base_url=f"{LEDGER}/admin/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api:
        customer = api.post("/customers", json={"email": "demo@tollgate.local", "name": "Demo Customer"})
        customer.raise_for_status()
        customer_id = customer.json()["customer_id"]
        api.post(
            f"/customers/{customer_id}/grants",
            json={"amount_cents": 500, "reason": "demo credits", "idempotency_key": f"demo-grant-{customer_id}"},
        ).raise_for_status()
        key = api.post(f"/customers/{customer_id}/keys", json={"name": "demo"})
        key.raise_for_status()
        api.post(
            f"/customers/{customer_id}/synthetic-usage", json={"days": 30, "requests_per_day": 40}
        ).raise_for_status()
    print(json.dumps({"customer_id": customer_id, "api_key": key.json()["key"], "console_url": f"{LEDGER}/console"}))


if __name__ == "__main__":
    main()
