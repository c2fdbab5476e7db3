"""Pure behaviour, no servers: what the alert texts say, how retries back off, what is masked."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tollgate_contracts.events import BalanceChanged, DeadLetter, PaymentFailed
from tollgate_notifier import alerts
from tollgate_notifier.channels.webhook import signed_headers
from tollgate_notifier.prefs import mask_url
from tollgate_notifier.render import render
from tollgate_notifier.settings import NotifierSettings
from tollgate_notifier.worker import backoff_s

from .helpers import HOOK_SECRET, USD

SETTINGS = NotifierSettings(topup_url="https://pay.example.test/top-up?c={customer_id}", _env_file=None)


def test_low_balance_shows_balance_rounded_down_threshold_and_topup_link() -> None:
    event = BalanceChanged(customer_id="cus_a&b", balance_nanos=4 * USD + 999_999_999, seq=3,
                           threshold_nanos=5 * USD, reason="low")
    context = {"customer_id": event.customer_id, "balance_nanos": event.balance_nanos,
               "threshold_nanos": event.threshold_nanos, "seq": 3}
    out = render(alerts.LOW, context, SETTINGS)
    assert out.subject == "Your Tollgate balance is low: $4.99 left"  # never round a balance up
    assert "$4.99" in out.text and "$5.00" in out.text
    assert "https://pay.example.test/top-up?c=cus_a%26b" in out.text
    assert 'href="https://pay.example.test/top-up?c=cus_a%26b"' in out.html
    assert "cus_a&amp;b" in out.html and "cus_a&amp;b" in out.slack  # escaped for HTML and Slack
    assert "<https://pay.example.test/top-up?c=cus_a%26b|Top up>" in out.slack


def test_every_kind_renders_in_all_formats() -> None:
    contexts: dict[str, dict[str, Any]] = {
        alerts.LOW: {"customer_id": "c", "balance_nanos": 1, "threshold_nanos": None, "seq": 1},
        alerts.DEPLETED: {"customer_id": "c", "balance_nanos": -5, "seq": 1},
        alerts.RESTORED: {"customer_id": "c", "balance_nanos": 25 * USD, "seq": 2},
        alerts.SOFTCAP: {"customer_id": "c", "plan": "plus", "period_start": "2026-11-01T00:00:00+00:00",
                         "cap_nanos": 20 * USD, "used_nanos": 21 * USD, "fallback_model": None},
        alerts.TIER: {"customer_id": "c", "old_tier": None, "new_tier": "tier-1", "rpm": 500, "tpm": 200_000,
                      "lifetime_spend_nanos": 5 * USD, "cause": "pay_1"},
        alerts.RECEIPT: {"customer_id": "c", "payment_id": "pay_1", "amount_cents": 1999,
                         "credited_nanos": 1999 * 10**7, "product_id": None,
                         "occurred_at": datetime(2026, 11, 2, 10, 30, tzinfo=UTC).isoformat()},
        alerts.PAYMENT_FAILED: alerts.payment_failed(PaymentFailed(
            payment_id="p", customer_id="c", amount_cents=500, reason="<b>declined</b>")).context,
        alerts.DRIFT: {"customer_id": "c", "tollgate_nanos": 1, "in_flight_nanos": 0, "dodo_nanos": 2,
                       "drift_nanos": -1, "check_id": "k"},
        alerts.DEADLETTER: alerts.dead_letter(DeadLetter(
            service="ledger", original_subject="billing.x", original_msg_id=None, reason="boom",
            payload="x" * 5000)).context,
    }
    assert set(contexts) == set(alerts.ALL_KINDS)
    for kind, context in contexts.items():
        out = render(kind, json.loads(json.dumps(context)), SETTINGS)  # as stored in jsonb
        assert out.subject and "\n" not in out.subject, kind
        assert out.text.strip() and out.html.startswith("<!doctype html>") and out.slack, kind
    failed = render(alerts.PAYMENT_FAILED, contexts[alerts.PAYMENT_FAILED], SETTINGS)
    assert "&lt;b&gt;declined&lt;/b&gt;" in failed.html and "<b>" not in failed.html
    assert "&lt;b&gt;" in failed.slack
    receipt = render(alerts.RECEIPT, contexts[alerts.RECEIPT], SETTINGS)
    assert receipt.subject == "Receipt: $19.99 added to your Tollgate balance"
    assert "2026-11-02 10:30 UTC" in receipt.text
    dead = render(alerts.DEADLETTER, contexts[alerts.DEADLETTER], SETTINGS)
    assert "truncated" in dead.text and "x" * 2000 in dead.text and "x" * 2001 not in dead.text


def test_retries_back_off_exponentially_to_a_cap() -> None:
    settings = NotifierSettings(retry_base_s=30, retry_max_s=3600, retry_jitter=0, _env_file=None)
    assert [backoff_s(n, settings) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    jittered = NotifierSettings(retry_base_s=30, retry_max_s=3600, retry_jitter=0.2, _env_file=None)
    delays = {backoff_s(3, jittered, random.Random(seed)) for seed in range(20)}
    assert all(96 <= d <= 144 for d in delays) and len(delays) > 1
    assert settings.give_up_after_s("email") == 3 * 24 * 3600
    with pytest.raises(ValueError, match="claim_lease_s"):
        NotifierSettings(claim_lease_s=10, smtp_timeout_s=15, _env_file=None)


def test_urls_carrying_credentials_are_masked() -> None:
    assert mask_url("https://hooks.slack.com/services/T000/B000/XXXX") == "https://hooks.slack.com/services/…"
    assert mask_url("https://example.test/hook?token=abc") == "https://example.test/hook/…"
    assert mask_url(None) is None


def test_webhook_signature_verifies_with_the_standard_webhooks_library() -> None:
    body = json.dumps({"type": "balance.low"})
    headers = signed_headers(HOOK_SECRET, "alert_1", body)
    assert Webhook(HOOK_SECRET).verify(body, headers) == {"type": "balance.low"}
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "b3RoZXItc2VjcmV0").verify(body, headers)
