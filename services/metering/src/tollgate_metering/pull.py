"""A continuous pull on a durable JetStream consumer, messages handed to a callback as they arrive.

nats-py's `PullSubscription.fetch` waits for each message with its own timeout task, which cost
~40 µs of CPU per message here (measured); a plain inbox subscription with a callback, fed by
pull requests we send ourselves, costs ~14 µs. At 20,000 messages/s that difference is most of a
core. The protocol is JetStream's own: `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>` with
`{"batch", "expires"}`, reply to our inbox; status messages (404/408/409) end a request.
One request is outstanding at a time; a new one is sent when the last is used up or ends, and
only when the caller has room. A request lost with the connection (NATS restarted) is re-sent
after `expires` plus a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tollgate_platform.logging import get_logger

log = get_logger("tollgate_metering.pull")

GRACE_S = 2.0


class Puller:
    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        on_message: Callable[[Msg], Awaitable[None]],
        room: asyncio.Event,
        batch: int,
        expires_s: float = 1.0,
    ) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.on_message = on_message
        self.room = room
        self.batch = batch
        self.expires_s = expires_s
        self.outstanding = 0
        self.request_done = asyncio.Event()
        self.inbox = ""
        self.sub: Subscription | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(self.inbox, cb=self._deliver, pending_msgs_limit=-1, pending_bytes_limit=-1)
        self.task = asyncio.create_task(self._request_loop(), name="metering-pull")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()

    async def _request_loop(self) -> None:
        request = json.dumps({"batch": self.batch, "expires": int(self.expires_s * 1e9)}).encode()
        while True:
            await self.room.wait()
            self.request_done.clear()
            self.outstanding = self.batch
            try:
                await self.nc.publish(self.subject, request, reply=self.inbox)
            except Exception as exc:  # disconnected: wait for the reconnect, then ask again
                log.warning("pull request not sent", error=type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.request_done.wait(), timeout=self.expires_s + GRACE_S)

    async def _deliver(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status") if not msg.data else None
        if status is not None:
            if status != "100":  # 404 no messages, 408 expired, 409 limits/leadership: ask again
                if status == "409":
                    log.info("pull request ended by the server", description=headers.get("Description"))
                self.request_done.set()
            return
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.request_done.set()
        await self.on_message(msg)
