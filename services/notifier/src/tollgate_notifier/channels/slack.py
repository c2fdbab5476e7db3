"""Slack incoming webhooks: one JSON POST with mrkdwn text."""

from __future__ import annotations

import httpx

from tollgate_notifier.channels.http import post
from tollgate_notifier.render import Rendered


class SlackSender:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(self, url: str, rendered: Rendered) -> None:
        await post(self.client, url, what="slack", json={"text": rendered.slack, "unfurl_links": False})
