"""The gateway's NATS connection: made in the background (a gateway must start and serve while
NATS is down, spooling usage), reconnecting forever, and carrying the cache-invalidation hints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from tollgate_contracts import subjects
from tollgate_platform import bus
from tollgate_platform.logging import get_logger

log = get_logger("tollgate.gateway.bus")


class BusConnection:
    def __init__(self, url: str, on_key: Callable[[str], None], on_customer: Callable[[str], None]) -> None:
        self.url = url
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._on_key = on_key
        self._on_customer = on_customer
        self._task: asyncio.Task[None] | None = None
        self._reported = False
        self.ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        async def error_cb(exc: Exception) -> None:
            if not self._reported:  # one line per outage, not one per reconnect attempt
                self._reported = True
                log.warning("nats unavailable; usage events go to the spool", error=type(exc).__name__)

        async def reconnected_cb() -> None:
            self._reported = False
            log.info("nats reconnected")

        nc = await bus.connect(
            self.url, "tollgate-gateway", error_cb=error_cb, reconnected_cb=reconnected_cb,
            connect_timeout=2, pending_size=8 * 1024 * 1024,
        )
        self._reported = False
        await nc.subscribe(subjects.CACHE_INVALIDATE_KEY, cb=self._key_hint)
        await nc.subscribe(subjects.CACHE_INVALIDATE_CUSTOMER, cb=self._customer_hint)
        self.nc = nc
        self.js = nc.jetstream()
        self.ready.set()

    async def _key_hint(self, msg: Msg) -> None:
        self._on_key(msg.data.decode(errors="replace").strip())

    async def _customer_hint(self, msg: Msg) -> None:
        self._on_customer(msg.data.decode(errors="replace").strip())

    async def ping(self) -> None:
        if self.nc is None or not self.nc.is_connected:
            raise ConnectionError("nats not connected")
        await self.nc.flush(timeout=1)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.nc is not None:
            # Bounded: with NATS away, draining would wait for a reconnect that may never come.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), timeout=2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), timeout=2.0)
