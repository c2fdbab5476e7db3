"""Helpers for the Dodo emulator tests: a real emulator server, a webhook receiver, builders.

This test directory is not a package, so the helpers live in a module with a unique name that
the tests import directly.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import uvicorn
from dodopayments import DodoPayments

from tollgate_standins.dodo_emulator import EmulatorSettings, create_app
from tollgate_standins.dodo_emulator.settings import DEV_WEBHOOK_SECRET

WEBHOOK_SECRET = DEV_WEBHOOK_SECRET
API_KEY = "sk_test_emulator"

MONTHLY = {
    "payment_frequency_count": 1,
    "payment_frequency_interval": "Month",
    "subscription_period_count": 20,
    "subscription_period_interval": "Year",
}


@dataclass
class RunningEmulator:
    base_url: str
    settings: EmulatorSettings
    server: uvicorn.Server

    def sdk(self, **kwargs: Any) -> DodoPayments:
        options: dict[str, Any] = {"bearer_token": API_KEY, "max_retries": 0}
        options.update(kwargs)
        return DodoPayments(base_url=self.base_url, _strict_response_validation=True, **options)


@contextmanager
def run_emulator(**overrides: Any) -> Iterator[RunningEmulator]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    options: dict[str, Any] = {"port": port, "public_url": base_url, "deduct_interval_s": 3600.0}
    options.update(overrides)
    settings = EmulatorSettings(**options)
    config = uvicorn.Config(create_app(settings), log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10, what="emulator start")
    try:
        yield RunningEmulator(base_url, settings, server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def wait_for(predicate: Callable[[], Any], *, timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- a webhook receiver -----------------------------------------------------------------------

@dataclass
class Received:
    body: str
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    # Status codes to answer in turn; once used up, every request gets 200.
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_type(self, event_type: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.json["type"] == event_type]

    def wait_type(self, event_type: str, count: int = 1, timeout: float = 5.0) -> list[Received]:
        return wait_for(lambda: len(self.of_type(event_type)) >= count and self.of_type(event_type),
                        timeout=timeout, what=f"{count} x {event_type}")

    def types(self) -> list[str]:
        with self.lock:
            return [r.json["type"] for r in self.requests]


@contextmanager
def start_receiver() -> Iterator[Receiver]:
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length).decode()
            recv = holder["r"]
            with recv.lock:
                status = recv.statuses.pop(0) if recv.statuses else 200
                if 200 <= status < 300:
                    recv.requests.append(Received(body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["r"] = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield holder["r"]
    finally:
        server.shutdown()
        server.server_close()


# -- builders for common objects --------------------------------------------------------------

class World:
    """Small builders so that each test reads as the scenario it checks."""

    def __init__(self, client: DodoPayments, control: httpx.Client) -> None:
        self.client = client
        self.control = control

    def customer(self, email: str = "ada@example.com", name: str = "Ada Lovelace") -> Any:
        return self.client.customers.create(email=email, name=name)

    def entitlement(self, precision: int = 2, **kwargs: Any) -> Any:
        options: dict[str, Any] = {
            "name": "USD credits", "overage_enabled": False, "precision": precision,
            "rollover_enabled": False, "unit": "USD",
        }
        options.update(kwargs)
        return self.client.credit_entitlements.create(**options)

    def topup(self, ce_id: str, credits: str = "20", price: int = 2000, **mapping: Any) -> Any:
        return self.client.products.create(
            name="Top-up", tax_category="saas",
            price={"type": "one_time_price", "price": price, "currency": "USD", "discount": 0,
                   "purchasing_power_parity": False},
            credit_entitlements=[{"credit_entitlement_id": ce_id, "credits_amount": credits, **mapping}],
        )

    def plan(self, price: int = 1000, credits: list[dict[str, Any]] | None = None,
             addons: list[str] | None = None, name: str = "Pro") -> Any:
        return self.client.products.create(
            name=name, tax_category="saas", addons=addons,
            price={"type": "recurring_price", "price": price, "currency": "USD", **MONTHLY},
            credit_entitlements=credits,
        )

    def meter(self, aggregation: dict[str, Any] | None = None, event_name: str = "llm.usage",
              **kwargs: Any) -> Any:
        return self.client.meters.create(
            aggregation=aggregation or {"type": "sum", "key": "cost_microusd"}, event_name=event_name,
            measurement_unit="micro-USD", name=kwargs.pop("name", "LLM cost"), **kwargs,
        )

    def usage_product(self, meter_id: str, ce_id: str, units_per_credit: str) -> Any:
        return self.client.products.create(
            name="Metered usage", tax_category="saas",
            price={"type": "usage_based_price", "fixed_price": 0, "currency": "USD", **MONTHLY,
                   "meters": [{"meter_id": meter_id, "credit_entitlement_id": ce_id,
                               "meter_units_per_credit": units_per_credit}]},
        )

    def checkout(self, product_id: str, customer_id: str, quantity: int = 1, **kwargs: Any) -> Any:
        cart_item: dict[str, Any] = {"product_id": product_id, "quantity": quantity}
        if "addons" in kwargs:
            cart_item["addons"] = kwargs.pop("addons")
        return self.client.checkout_sessions.create(
            product_cart=[cart_item], customer={"customer_id": customer_id}, **kwargs
        )

    def pay(self, session_id: str) -> dict[str, Any]:
        response = self.control.post(f"/_emulator/checkouts/{session_id}/pay")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def buy(self, product_id: str, customer_id: str, **kwargs: Any) -> dict[str, Any]:
        return self.pay(self.checkout(product_id, customer_id, **kwargs).session_id)

    def balance(self, ce_id: str, customer_id: str) -> str:
        return str(self.client.credit_entitlements.balances.retrieve(customer_id, credit_entitlement_id=ce_id).balance)

    def deduct(self) -> int:
        response = self.control.post("/_emulator/deduct")
        response.raise_for_status()
        return int(response.json()["debits"])

    def ingest(self, customer_id: str, *values: int, event_name: str = "llm.usage", prefix: str = "evt") -> int:
        events = [
            {"event_id": f"{prefix}-{i}", "customer_id": customer_id, "event_name": event_name,
             "timestamp": datetime.now(UTC), "metadata": {"cost_microusd": value}}
            for i, value in enumerate(values)
        ]
        return self.client.usage_events.ingest(events=events).ingested_count

    def webhook(self, url: str, **kwargs: Any) -> Any:
        return self.client.webhooks.create(url=url, **kwargs)

    def deliveries(self, **params: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.control.get("/_emulator/webhook-deliveries", params=params).json()["items"]
        return items
