"""Helpers for the console tests: a browser-like HTTP client (cookies, no redirects followed),
reading the CSRF token and text out of pages, and admin-API shortcuts."""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

ADMIN_TOKEN = "console-test-admin-token"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_TAGS = re.compile(r"<[^>]+>")


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def text_of(page: str) -> str:
    """What a person reads: tags removed, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(_TAGS.sub(" ", page)).split())


@dataclass
class Console:
    """The ledger app under test, seen from outside."""

    url: str

    def browser(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, follow_redirects=False, timeout=15)

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.url}/admin/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=15
        )

    async def customer(self, *, name: str = "Ada Lovelace", cents: int = 0) -> tuple[str, str, str]:
        """A customer with a key (and credits): (customer id, plaintext key, key id)."""
        async with self.admin() as admin:
            created = await admin.post("/customers", json={
                "email": f"{uuid.uuid4().hex[:10]}@example.com", "name": name, "create_in_dodo": False,
            })
            assert created.status_code == 201, created.text
            customer_id = created.json()["customer_id"]
            if cents:
                granted = await admin.post(f"/customers/{customer_id}/grants", json={
                    "amount_cents": cents, "reason": "welcome credits", "idempotency_key": f"welcome-{customer_id}",
                })
                assert granted.status_code == 200, granted.text
            key = await admin.post(f"/customers/{customer_id}/keys", json={"name": "sign-in key"})
            assert key.status_code == 201, key.text
        return customer_id, key.json()["key"], key.json()["key_id"]

    async def post_form(self, client: httpx.AsyncClient, path: str, form: dict[str, Any], *,
                        page: str = "/console") -> httpx.Response:
        """Post a form the way a browser does: the CSRF token from a page of the same session."""
        token = csrf_of((await client.get(page)).text)
        return await client.post(path, data={"csrf": token, **form})

    async def sign_in(self, client: httpx.AsyncClient, key: str) -> httpx.Response:
        page = await client.get("/console/sign-in")
        assert page.status_code == 200
        return await client.post("/console/sign-in", data={"csrf": csrf_of(page.text), "api_key": key,
                                                           "next": "/console"})

    async def sign_in_operator(self, client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> httpx.Response:
        page = await client.get("/console/sign-in")
        return await client.post("/console/sign-in/operator", data={"csrf": csrf_of(page.text), "admin_token": token})
