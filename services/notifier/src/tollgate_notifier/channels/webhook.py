"""Generic outbound webhook signed the Standard Webhooks way (webhook-id / -timestamp /
-signature). The id is the alert's, identical on every retry, so receivers can de-duplicate; the
signature is made per attempt because receivers reject stale timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tollgate_notifier.channels.base import PermanentError
from tollgate_notifier.channels.http import post


def signed_headers(secret: str, msg_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    timestamp = (now or datetime.now(UTC)).replace(microsecond=0)
    try:
        signature = Webhook(secret).sign(msg_id, timestamp, body)
    except Exception as exc:  # a malformed secret must not leak into the log
        raise PermanentError("webhook: the configured secret is not a valid whsec_ secret") from exc
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


class WebhookSender:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(self, url: str, secret: str, msg_id: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)
        headers = signed_headers(secret, msg_id, body)
        await post(self.client, url, what="webhook", content=body.encode(), headers=headers)
