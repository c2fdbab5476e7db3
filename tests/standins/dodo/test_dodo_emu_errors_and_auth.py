"""Auth, error bodies and status codes, mapped to the SDK's exception classes."""

from __future__ import annotations

import dodopayments
import httpx
import pytest
from dodo_emulator_kit import RunningEmulator, run_emulator


def test_missing_bearer_is_401_with_dodo_error_body(emulator: RunningEmulator) -> None:
    response = httpx.get(f"{emulator.base_url}/customers")
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"
    assert response.json()["message"]


def test_configured_api_key_rejects_other_keys() -> None:
    with run_emulator(api_key="sk_right") as emu:
        with pytest.raises(dodopayments.AuthenticationError) as exc:
            emu.sdk(bearer_token="sk_wrong").customers.list()
        assert exc.value.status_code == 401
        assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "UNAUTHORIZED"
        assert emu.sdk(bearer_token="sk_right").customers.list().items == []


def test_unknown_ids_are_404_not_found(client: dodopayments.DodoPayments) -> None:
    calls = [
        lambda: client.customers.retrieve("cus_missing"),
        lambda: client.products.retrieve("pdt_missing"),
        lambda: client.payments.retrieve("pay_missing"),
        lambda: client.subscriptions.retrieve("sub_missing"),
        lambda: client.refunds.retrieve("ref_missing"),
        lambda: client.meters.retrieve("mtr_missing"),
        lambda: client.usage_events.retrieve("evt_missing"),
        lambda: client.credit_entitlements.retrieve("cde_missing"),
        lambda: client.checkout_sessions.retrieve("cks_missing"),
        lambda: client.webhooks.retrieve("ep_missing"),
        lambda: client.addons.retrieve("adn_missing"),
    ]
    for call in calls:
        with pytest.raises(dodopayments.NotFoundError) as exc:
            call()
        assert isinstance(exc.value.body, dict)
        assert exc.value.body["code"] == "NOT_FOUND"
        assert "not found" in exc.value.body["message"]


def test_schema_errors_are_422(client: dodopayments.DodoPayments) -> None:
    with pytest.raises(dodopayments.UnprocessableEntityError) as exc:
        client.customers.create(email="a@example.com", name=["not", "a", "string"])  # type: ignore[arg-type]
    assert isinstance(exc.value.body, dict)
    assert exc.value.body["code"] == "INVALID_REQUEST_BODY"
    assert "name" in exc.value.body["message"]

    with pytest.raises(dodopayments.UnprocessableEntityError) as exc:
        client.customers.list(page_size=101)
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "INVALID_QUERY_PARAMS"


def test_health_endpoint(emulator: RunningEmulator) -> None:
    assert httpx.get(f"{emulator.base_url}/healthz").json() == {"status": "ok"}
