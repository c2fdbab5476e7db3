"""Outgoing webhooks: Standard Webhooks signing, asynchronous delivery, Dodo's retry schedule.

Each emitted event becomes one message (its id is the `webhook-id` header, stable across retries)
and one delivery per subscribed endpoint. The `data` of a message that refers to an object is
rendered when each attempt is made, so a delivery carries the latest state, as Dodo's does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from standardwebhooks import Webhook

from .ids import new_id
from .state import Obj
from .timeutil import iso, now_iso, utcnow

if TYPE_CHECKING:
    from .runtime import Emulator

log = logging.getLogger("tollgate_standins.dodo_emulator.webhooks")

# Dodo (Svix) schedule: the first attempt, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
RETRY_SCHEDULE_S = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)

PAYLOAD_TYPES = {
    "payment": "Payment",
    "subscription": "Subscription",
    "refund": "Refund",
    "dispute": "Dispute",
    "credit_ledger_entry": "CreditLedgerEntry",
    "credit_balance_low": "CreditBalanceLow",
}


class WebhookDispatcher:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._queues: dict[str, deque[str]] = {}
        self._senders: dict[str, set[asyncio.Task[None]]] = {}
        self._held: list[str] = []
        self._held_timer: asyncio.TimerHandle | None = None
        self._client: httpx.AsyncClient | None = None
        self._timer_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient()
        self._wakeup = asyncio.Event()
        self._timer_task = asyncio.create_task(self._timer(), name="dodo-emulator-webhook-timer")
        # Deliveries that were pending when the state was saved resume from their next attempt.
        for delivery in list(self.emu.state.deliveries.values()):
            if delivery["status"] == "pending":
                self._ready(delivery["id"])

    async def stop(self) -> None:
        tasks = [t for t in (self._timer_task, *self._sender_tasks()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._timer_task = None
        self._senders.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def reset(self) -> None:
        self._heap.clear()
        self._queues.clear()
        self._held.clear()
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        for task in self._sender_tasks():
            task.cancel()
        self._senders.clear()

    def _sender_tasks(self) -> list[asyncio.Task[None]]:
        return [task for tasks in self._senders.values() for task in tasks]

    @property
    def running(self) -> bool:
        return self._timer_task is not None

    # -- emitting ----------------------------------------------------------------------------

    def emit(
        self,
        event_type: str,
        *,
        kind: str,
        ref_id: str | None = None,
        data: Obj | None = None,
        extra: Obj | None = None,
    ) -> Obj:
        state = self.emu.state
        message: Obj = {
            "id": new_id("msg"),
            "type": event_type,
            "timestamp": now_iso(),
            "kind": kind,
            "ref_id": ref_id,
            "data": data,
            "extra": extra or {},
        }
        state.messages[message["id"]] = message
        state.bump("webhooks_emitted")
        for endpoint in state.webhook_endpoints.values():
            if endpoint.get("disabled"):
                continue
            filter_types = endpoint.get("filter_types") or []
            if filter_types and event_type not in filter_types:
                continue
            self._new_delivery(message, endpoint)
        return message

    def _new_delivery(self, message: Obj, endpoint: Obj, *, replay_of: str | None = None,
                      body: str | None = None) -> Obj:
        faults = self.emu.faults
        delivery: Obj = {
            "id": new_id("dlv"),
            "message_id": message["id"],
            "endpoint_id": endpoint["id"],
            "url": endpoint["url"],
            "type": message["type"],
            "status": "pending",
            "attempts": [],
            "created_at": now_iso(),
            "next_attempt_at": now_iso(),
            "duplicate": False,
            "replay_of": replay_of,
            "body": body,
        }
        self.emu.state.deliveries[delivery["id"]] = delivery
        if replay_of is None:
            if faults.drop_webhook():
                delivery["status"] = "dropped"
                delivery["next_attempt_at"] = None
                return delivery
            delivery["duplicate"] = faults.duplicate_webhook()
        if faults.config.webhooks.reorder and replay_of is None:
            self._hold(delivery["id"])
        else:
            self._ready(delivery["id"])
        return delivery

    def redeliver(self, event_type: str | None = None) -> int:
        state = self.emu.state
        originals = [
            d for d in list(state.deliveries.values())
            if d["status"] == "succeeded" and d["replay_of"] is None
            and (event_type is None or d["type"] == event_type)
        ]
        for original in originals:
            endpoint = state.webhook_endpoints.get(original["endpoint_id"])
            message = state.messages.get(original["message_id"])
            if endpoint is None or message is None:
                continue
            self._new_delivery(message, endpoint, replay_of=original["id"], body=original["body"])
        return len(originals)

    # -- scheduling --------------------------------------------------------------------------

    def _hold(self, delivery_id: str) -> None:
        # Reorder fault: collect first attempts for a short window, then release them backwards.
        self._held.append(delivery_id)
        if self._held_timer is None and self.running:
            window = self.emu.faults.config.webhooks.reorder_window_ms / 1000
            self._held_timer = asyncio.get_running_loop().call_later(window, self._release_held)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        self._held_timer = None
        for delivery_id in reversed(held):
            self._ready(delivery_id)

    def _schedule(self, delivery_id: str, delay_s: float) -> None:
        if delay_s <= 0:
            self._ready(delivery_id)
            return
        due = asyncio.get_running_loop().time() + delay_s
        heapq.heappush(self._heap, (due, next(self._seq), delivery_id))
        self._wakeup.set()

    def _ready(self, delivery_id: str) -> None:
        if not self.running:
            return
        delivery = self.emu.state.deliveries.get(delivery_id)
        if delivery is None or delivery["status"] != "pending":
            return
        endpoint_id = delivery["endpoint_id"]
        self._queues.setdefault(endpoint_id, deque()).append(delivery_id)
        senders = self._senders.setdefault(endpoint_id, set())
        # Up to `webhook_concurrency` senders per endpoint, as Dodo (Svix) sends in parallel; a
        # single sender keeps deliveries to one receiver in order, which the reorder fault needs.
        limit = 1 if self.emu.faults.config.webhooks.reorder else self.emu.settings.webhook_concurrency
        if len(senders) < limit:
            senders.add(asyncio.create_task(self._drain(endpoint_id)))

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                _, _, delivery_id = heapq.heappop(self._heap)
                self._ready(delivery_id)
            timeout = self._heap[0][0] - now if self._heap else None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    async def _drain(self, endpoint_id: str) -> None:
        queue = self._queues.setdefault(endpoint_id, deque())
        try:
            while queue:
                delivery_id = queue.popleft()
                try:
                    await self._attempt(delivery_id)
                except Exception:
                    log.exception("webhook delivery %s crashed", delivery_id)
        finally:
            # Synchronously with the queue found empty: a delivery queued after this still finds
            # room for a sender.
            self._senders.get(endpoint_id, set()).discard(asyncio.current_task())  # type: ignore[arg-type]

    # -- sending -----------------------------------------------------------------------------

    def build_body(self, message: Obj) -> str:
        if message["ref_id"] is not None:
            data = self.emu.render_ref(message["kind"], message["ref_id"])
        else:
            data = dict(message["data"] or {})
        data.update(message["extra"])
        data["payload_type"] = PAYLOAD_TYPES.get(message["kind"], message["kind"])
        envelope = {
            "business_id": self.emu.settings.business_id,
            "type": message["type"],
            "timestamp": message["timestamp"],
            "data": data,
        }
        return orjson.dumps(envelope).decode()

    async def _attempt(self, delivery_id: str) -> None:
        state = self.emu.state
        delivery = state.deliveries.get(delivery_id)
        if delivery is None or delivery["status"] != "pending":
            return
        endpoint = state.webhook_endpoints.get(delivery["endpoint_id"])
        message = state.messages.get(delivery["message_id"])
        if endpoint is None or message is None or endpoint.get("disabled"):
            delivery["status"] = "cancelled"
            return
        body = delivery["body"] if delivery["replay_of"] else self.build_body(message)
        copies = 2 if delivery["duplicate"] else 1
        ok = False
        for copy in range(copies):
            status_code, error = await self._send(endpoint, message["id"], body)
            if self.emu.state.deliveries.get(delivery_id) is not delivery:
                return  # reset while the request was in flight
            delivery["attempts"].append(
                {"at": now_iso(), "status_code": status_code, "error": error, "duplicate": copy > 0}
            )
            if copy == 0:
                ok = status_code is not None and 200 <= status_code < 300
                if not ok:
                    break
        if ok:
            delivery["status"] = "succeeded"
            delivery["body"] = body
            delivery["next_attempt_at"] = None
            state.bump("webhooks_delivered")
        else:
            attempts = sum(1 for a in delivery["attempts"] if not a["duplicate"])
            if attempts < len(RETRY_SCHEDULE_S):
                delay = RETRY_SCHEDULE_S[attempts] * self.emu.settings.webhook_retry_factor
                delivery["next_attempt_at"] = iso(utcnow() + timedelta(seconds=delay))
                self._schedule(delivery_id, delay)
            else:
                delivery["status"] = "failed"
                delivery["next_attempt_at"] = None
                state.bump("webhooks_failed")
        self.emu.mark_dirty()

    async def _send(self, endpoint: Obj, message_id: str, body: str) -> tuple[int | None, str | None]:
        assert self._client is not None
        timestamp = utcnow()
        signature = Webhook(self.emu.settings.webhook_secret).sign(message_id, timestamp, body)
        headers: dict[str, Any] = dict(endpoint.get("headers") or {})
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": "Tollgate-Dodo-Emulator/1.0",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(timestamp.timestamp())),
                "webhook-signature": signature,
            }
        )
        try:
            response = await self._client.post(
                endpoint["url"], content=body.encode(), headers=headers,
                timeout=self.emu.settings.webhook_timeout_s,
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return response.status_code, None
