"""Everything the metering process holds while it runs: the NATS connection, the Dodo client, the
catalogue (re-read when bootstrap rewrites it), the consumer and the lag poller."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path

from nats.js import JetStreamContext
from opentelemetry.sdk.trace import TracerProvider

from tollgate_contracts.streams import METERING_USAGE
from tollgate_dodo.catalogue import Catalogue
from tollgate_dodo.client import create_client
from tollgate_metering import metrics
from tollgate_metering.consumer import ConsumerLimits, UsageConsumer
from tollgate_metering.mapping import Mapper
from tollgate_metering.settings import MeteringSettings
from tollgate_metering.wire import MeteringClient, connect
from tollgate_money import PriceBook
from tollgate_platform.logging import get_logger

log = get_logger("tollgate_metering.runtime")

CHECK_INTERVAL_S = 1.0
DODO_CHECK_TTL_S = 30.0


class CatalogueWatch:
    """The catalogue file as a Mapper, rebuilt when the file's mtime changes."""

    def __init__(self, path: Path, book: PriceBook, settings: MeteringSettings) -> None:
        self.path = path
        self.book = book
        self.settings = settings
        self._mtime: float | None = None
        self._mapper: Mapper | None = None
        self._checked = 0.0

    def current(self) -> Mapper | None:
        now = time.monotonic()
        if self._mapper is not None and now - self._checked < CHECK_INTERVAL_S:
            return self._mapper  # asked once per message: look at the file at most once a second
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return self._mapper
        if mtime != self._mtime:
            try:
                catalogue = Catalogue.load(self.path)
            except ValueError:
                log.exception("catalogue unreadable; keeping the previous one", path=str(self.path))
                return self._mapper
            if catalogue is not None:
                self._mapper = Mapper(
                    catalogue, self.book, self.settings.missing_customer_policy, self.settings.max_event_age_s
                )
                self._mtime = mtime
                log.info("catalogue loaded", strategy=catalogue.meter_strategy, meters=len(catalogue.meters))
        return self._mapper

    def mapper(self) -> Mapper:
        current = self.current()
        if current is None:
            raise RuntimeError("no catalogue")
        return current


class Runtime:
    def __init__(self, settings: MeteringSettings, provider: TracerProvider) -> None:
        self.settings = settings
        self.provider = provider
        self.nc: MeteringClient | None = None
        self.js: JetStreamContext | None = None
        self.consumer: UsageConsumer | None = None
        self.catalogue = CatalogueWatch(settings.dodo_catalogue_file, PriceBook.load(settings.pricing_file), settings)
        self.client = create_client(
            settings, max_retries=0, timeout=settings.dodo_timeout_s, tracer_provider=provider,
            max_connections=settings.senders * 2 + 2,
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self._dodo_ok_at = -DODO_CHECK_TTL_S

    async def start(self) -> None:
        self.nc = await connect(self.settings.nats_url, "tollgate-metering")
        self.js = self.nc.jetstream()
        self.tasks = [
            asyncio.create_task(self._start_consumer(), name="metering-starter"),
            asyncio.create_task(self._poll_lag(), name="metering-lag"),
        ]

    async def stop(self) -> None:
        # Python 3.11's wait_for (inside nats-py's requests) can swallow a cancellation, so the
        # background loops also watch a flag and the wait for them is bounded.
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        if self.consumer is not None:
            await self.consumer.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)  # the last acks reach the server before we go
            with contextlib.suppress(Exception):
                await self.nc.close()
        await self.client.close()

    async def _start_consumer(self) -> None:
        """Waits for the two things provisioning makes: the catalogue file and the durable consumer."""
        assert self.js is not None
        while self.catalogue.current() is None:
            log.warning("no Dodo catalogue yet; run `tollgate dodo bootstrap`",
                        path=str(self.settings.dodo_catalogue_file))
            await asyncio.sleep(self.settings.catalogue_poll_s)
        spec = METERING_USAGE
        while True:
            try:
                info = await self.js.consumer_info(spec.stream.name, spec.durable)
                break
            except Exception as exc:
                log.warning("consumer not available yet; run `tollgate provision streams`", error=type(exc).__name__)
                await asyncio.sleep(2.0)
        limits = ConsumerLimits(
            stream=spec.stream.name,
            durable=spec.durable,
            ack_wait_s=float(info.config.ack_wait or spec.ack_wait_s),
            max_deliver=int(info.config.max_deliver or spec.max_deliver),
        )
        assert self.nc is not None
        self.consumer = UsageConsumer(
            self.settings, self.nc, self.js, self.client, self.catalogue.mapper, limits,
            self.provider.get_tracer("tollgate_metering"),
        )
        await self.consumer.start()
        log.info("consuming", durable=spec.durable, ack_wait_s=limits.ack_wait_s, max_deliver=limits.max_deliver)

    async def _poll_lag(self) -> None:
        """Lag in messages from the consumer's counters; in seconds from the stream time of the
        oldest unacknowledged message (the one right after the ack floor)."""
        assert self.js is not None
        spec = METERING_USAGE
        while not self.stopping:
            await asyncio.sleep(self.settings.lag_poll_s)
            try:
                info = await self.js.consumer_info(spec.stream.name, spec.durable)
                metrics.PENDING_MESSAGES.set(info.num_pending or 0)
                metrics.ACK_PENDING_MESSAGES.set(info.num_ack_pending or 0)
                if not (info.num_pending or info.num_ack_pending):
                    metrics.LAG_SECONDS.set(0)
                    continue
                floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
                oldest = await self.js.get_msg(spec.stream.name, seq=floor + 1, next=True, subject=spec.filter_subject)
                if oldest.time is not None:
                    metrics.LAG_SECONDS.set(max((datetime.now(UTC) - oldest.time).total_seconds(), 0.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("lag poll failed", error=type(exc).__name__)

    # -- readiness ---------------------------------------------------------------------------

    async def check_nats(self) -> None:
        if self.nc is None or not self.nc.is_connected:
            raise ConnectionError("NATS not connected")

    async def check_consumer(self) -> None:
        if self.consumer is None:
            raise RuntimeError("consumer not started (catalogue or durable consumer missing)")

    async def check_dodo(self) -> None:
        # Probes come every few seconds from every replica; Dodo's rate limit is per API key.
        if time.monotonic() - self._dodo_ok_at < DODO_CHECK_TTL_S:
            return
        await self.client.meters.list(page_size=1, page_number=0)
        self._dodo_ok_at = time.monotonic()
