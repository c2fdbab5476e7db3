"""Seed the demo customer `make up` prints: a customer, $5.00 of granted credits and an API key.
Idempotent on the grant; prints one JSON line with the customer id and the plaintext key."""

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
    print(json.dumps({"customer_id": customer_id, "api_key": key.json()["key"]}))


if __name__ == "__main__":
    main()
