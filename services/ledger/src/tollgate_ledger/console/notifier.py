"""Alert channels live in the notifier service; the console edits them through its admin API
(`/admin/v1/preferences/{customer}`, docs/notifier.md). The notifier may be down or not deployed:
every call answers None / an error message instead of raising, and the page says so."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from tollgate_platform.logging import get_logger

log = get_logger(__name__)


@functools.cache
def _tls() -> ssl.SSLContext:
    # Loading the CA bundle costs ~20 ms; a client per call must not pay it every time.
    return ssl.create_default_context()


@dataclass(frozen=True, slots=True)
class NotifierClient:
    base_url: str
    token: str
    timeout_s: float

    def _client(self) -> httpx.AsyncClient:
        # Short-lived on purpose: only the alerts page calls the notifier, and nothing is left
        # open for the ledger's shutdown to close.
        return httpx.AsyncClient(
            base_url=self.base_url.rstrip("/"), timeout=self.timeout_s, verify=_tls(),
            headers={"Authorization": f"Bearer {self.token}"},
        )

    async def preferences(self, customer_id: str) -> dict[str, Any] | None:
        try:
            async with self._client() as client:
                response = await client.get(f"/admin/v1/preferences/{customer_id}")
        except httpx.HTTPError as exc:
            log.info("notifier unreachable", error=type(exc).__name__)
            return None
        if response.status_code != 200:
            log.info("notifier refused the preferences read", status=response.status_code)
            return None
        body: dict[str, Any] = response.json()
        return body

    async def update(self, customer_id: str, change: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(saved preferences, None) or (None, what to tell the customer)."""
        try:
            async with self._client() as client:
                response = await client.put(f"/admin/v1/preferences/{customer_id}", json=change)
        except httpx.HTTPError as exc:
            log.info("notifier unreachable", error=type(exc).__name__)
            return None, "Alert channels cannot be changed right now (the notification service did not answer)."
        if response.status_code == 422:
            return None, _message(response) or "Those settings were not accepted."
        if response.status_code != 200:
            log.info("notifier refused the preferences update", status=response.status_code)
            return None, "Alert channels cannot be changed right now."
        body: dict[str, Any] = response.json()
        return body, None


def _message(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error", {})
    except ValueError:
        return None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else None
