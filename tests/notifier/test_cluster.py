"""Three notifier replicas (real processes) sharing the durable consumers: alerts arrive once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from typer.testing import CliRunner

from support.servers import eventually
from tollgate_cli.main import app as cli_app
from tollgate_contracts import streams, subjects
from tollgate_contracts.events import (
    DeadLetter,
    DriftDetected,
    Event,
    PaymentFailed,
    PaymentSucceeded,
    SoftCapReached,
    TierChanged,
)
from tollgate_platform import bus

from .helpers import ADMIN_TOKEN, HOOK_SECRET, USD, Cluster, balance_event, balance_subject, customer


async def test_low_balance_delivered_twice_to_three_replicas_alerts_once(cluster: Cluster) -> None:
    cid = customer()
    email = f"{cid}@customers.test"
    await cluster.set_prefs(cid, email=email)
    low = balance_event(cid, seq=41, reason="low", balance_usd=4.99)
    subject = balance_subject("low", cid)
    await cluster.publish(subject, low)
    await cluster.publish(subject, low, msg_id=f"{low.msg_id}:redelivered")

    mails = await eventually(lambda: cluster.sinks.emails(email))
    slack = await eventually(lambda: cluster.sinks.slack_messages(cid))
    await cluster.settled(cid)

    mails = await cluster.sinks.emails(email)
    slack = await cluster.sinks.slack_messages(cid)
    assert len(mails) == 1 and len(slack) == 1
    mail = mails[0]
    assert "$4.99" in mail["subject"]
    assert "$4.99" in mail["text"] and "$5.00" in mail["text"]
    assert f"https://billing.example.test/top-up?customer={cid}" in mail["text"]
    assert f'href="https://billing.example.test/top-up?customer={cid}"' in mail["html"]
    assert "$4.99" in slack[0]["text"] and f"https://billing.example.test/top-up?customer={cid}" in slack[0]["text"]
    assert slack[0]["path"] == "/services/T000/B000/XXXX"  # the default Slack webhook


async def test_smtp_refusing_for_a_while_delivers_once_after_it_recovers(cluster: Cluster) -> None:
    # Production retries start at 30 s and back off to an hour (horizon 3 days); the cluster
    # here runs a compressed schedule (0.2 s doubling to 0.8 s) so a few seconds of refusal
    # exercise several retries.
    cid = customer()
    email = f"{cid}@customers.test"
    await cluster.set_prefs(cid, email=email, channels=["email"])
    refused_before = await cluster.sinks.smtp_refused_count()
    await cluster.sinks.refuse_smtp(3)
    await cluster.publish(balance_subject("low", cid), balance_event(cid, seq=7, reason="low", balance_usd=3.10))

    async def retried() -> list[dict[str, object]]:
        rows = await cluster.deliveries(customer_id=cid, channel="email")
        return [r for r in rows if r["attempts"] >= 2 and r["last_error"]]

    retrying = (await eventually(retried))[0]
    assert retrying["status"] == "pending" and "SMTP" in retrying["last_error"]
    assert await cluster.sinks.smtp_refused_count() > refused_before
    mails = await eventually(lambda: cluster.sinks.emails(email), timeout=20)
    await cluster.settled(cid)

    assert len(await cluster.sinks.emails(email)) == 1 and "$3.10" in mails[0]["subject"]
    [row] = await cluster.deliveries(customer_id=cid, channel="email")
    assert row["status"] == "sent" and row["sent_at"] and row["last_error"] is None
    outcomes = [a["outcome"] for a in row["attempt_log"]]
    assert outcomes[-1] == "sent" and set(outcomes[:-1]) == {"retry"} and len(outcomes) == row["attempts"] >= 2
    assert all("421" in a["error"] for a in row["attempt_log"][:-1])


async def test_low_then_topup_then_low_again_alerts_twice_and_says_restored(cluster: Cluster) -> None:
    cid = customer()
    email = f"{cid}@customers.test"
    await cluster.set_prefs(cid, email=email)
    steps = [
        ("low", balance_event(cid, seq=10, reason="low", balance_usd=4.50)),
        ("low", balance_event(cid, seq=11, reason="low", balance_usd=4.00)),  # still below: no new alert
        ("restored", balance_event(cid, seq=12, reason="restored", balance_usd=25.00)),
        ("low", balance_event(cid, seq=30, reason="low", balance_usd=4.75)),
    ]
    for reason, event in steps:
        await cluster.publish(balance_subject(reason, cid), event)
        await cluster.settled(cid)  # one step at a time: this test is about the sequence

    subjects_seen = [m["subject"] for m in await cluster.sinks.emails(email)]
    assert subjects_seen == [
        "Your Tollgate balance is low: $4.50 left",
        "Your Tollgate balance is back to $25.00",
        "Your Tollgate balance is low: $4.75 left",
    ]
    assert len(await cluster.sinks.slack_messages(cid)) == 3

    # Redelivery of every step (new Nats-Msg-Ids, so JetStream stores them again) sends nothing.
    for reason, event in steps:
        await cluster.publish(balance_subject(reason, cid), event, msg_id=f"{event.msg_id}:again")
    await cluster.settled(cid)
    assert len(await cluster.sinks.emails(email)) == 3
    assert len(await cluster.sinks.slack_messages(cid)) == 3

    states = (await cluster.admin.get(f"/admin/v1/alert-states/{cid}")).json()["data"]
    assert [(s["kind"], s["state"], s["opened_seq"]) for s in states] == [("balance.low", "alarm", 30)]


async def test_depleted_is_its_own_alert_and_updates_are_ignored(cluster: Cluster) -> None:
    cid = customer()
    email = f"{cid}@customers.test"
    await cluster.set_prefs(cid, email=email, channels=["email"])
    await cluster.publish(balance_subject("updated", cid), balance_event(cid, seq=1, reason="updated", balance_usd=9))
    await cluster.publish(balance_subject("low", cid), balance_event(cid, seq=2, reason="low", balance_usd=1))
    await cluster.settled(cid)
    depleted = balance_event(cid, seq=3, reason="depleted", balance_usd=0, threshold_usd=None)
    await cluster.publish(balance_subject("depleted", cid), depleted)
    await cluster.publish(balance_subject("depleted", cid), depleted, msg_id="dup")
    await cluster.settled(cid)

    subjects_seen = [m["subject"] for m in await cluster.sinks.emails(email)]
    assert subjects_seen == ["Your Tollgate balance is low: $1.00 left", "Your Tollgate balance is used up"]


async def test_one_off_alerts_arrive_once_each(cluster: Cluster) -> None:
    cid = customer()
    email = f"{cid}@customers.test"
    await cluster.set_prefs(cid, email=email)
    period = datetime(2026, 11, 1, tzinfo=UTC)
    events: list[tuple[str, Event]] = [
        (subjects.for_customer(subjects.TIER_CHANGED, cid), TierChanged(
            customer_id=cid, old_tier="tier-1", new_tier="tier-2", lifetime_spend_nanos=55 * USD,
            rpm=5000, tpm=2_000_000, cause="pay_t1")),
        (subjects.for_customer(subjects.SOFTCAP_REACHED, cid), SoftCapReached(
            customer_id=cid, plan="plus", period_start=period, cap_nanos=20 * USD, used_nanos=20 * USD + 1,
            fallback_model="gpt-4o-mini")),
        (subjects.for_customer(subjects.PAYMENT_SUCCEEDED, cid), PaymentSucceeded(
            payment_id=f"pay_{cid}", customer_id=cid, amount_cents=2500, credited_nanos=25 * USD)),
        (subjects.for_customer(subjects.PAYMENT_FAILED, cid), PaymentFailed(
            payment_id=f"payf_{cid}", customer_id=cid, amount_cents=1000, reason="card declined")),
        (subjects.for_customer(subjects.DRIFT_DETECTED, cid), DriftDetected(
            customer_id=cid, tollgate_nanos=10 * USD, in_flight_nanos=0, dodo_nanos=9 * USD,
            drift_nanos=USD, check_id=f"chk_{cid}")),
        (subjects.deadletter("metering", f"usage.recorded.{cid}"), DeadLetter(
            service="metering", original_subject=f"usage.recorded.{cid}", original_msg_id=f"req_{cid}",
            reason="Dodo rejected the event: 422", payload='{"event_id": "x"}', deliveries=20)),
    ]
    for subject, event in events:
        await cluster.publish(subject, event)
        await cluster.publish(subject, event, msg_id=f"{event.msg_id}:again")
    await cluster.settled(cid)
    await cluster.settled()

    customer_mail = sorted(m["subject"] for m in await cluster.sinks.emails(email))
    assert customer_mail == sorted([
        "Your Tollgate rate-limit tier is now tier-2",
        "You reached the plus plan's usage cap for this period",
        "Receipt: $25.00 added to your Tollgate balance",
        "Your Tollgate payment of $10.00 failed",
    ])
    assert len(await cluster.sinks.slack_messages(cid, path="/services/T000/B000/XXXX")) == 4
    ops_mail = [m for m in await cluster.sinks.emails("ops@tollgate.test") if cid in m["subject"]]
    assert sorted(m["subject"] for m in ops_mail) == sorted([
        f"[Tollgate ops] Ledger drift for {cid}: $1.00",
        f"[Tollgate ops] Dead letter from metering: usage.recorded.{cid}",
    ])
    assert len(await cluster.sinks.slack_messages(cid, path="/services/T000/B000/OPERATOR")) == 2
    receipt = next(m for m in await cluster.sinks.emails(email) if m["subject"].startswith("Receipt"))
    assert f"pay_{cid}" in receipt["text"] and "$25.00" in receipt["html"]


async def test_unreadable_event_is_dead_lettered_and_operators_hear_about_it(cluster: Cluster) -> None:
    cid = customer()
    subject = balance_subject("low", cid)
    await bus.publish_raw(cluster.js, subject, b'{"customer_id": "' + cid.encode() + b'", "seq": "x"}', f"bad-{cid}")
    await cluster.settled()

    ops = await eventually(lambda: _ops_mail_about(cluster, cid))
    assert ops[0]["subject"] == f"[Tollgate ops] Dead letter from notifier: {subject}"
    assert "not a valid BalanceChanged" in ops[0]["text"] and cid in ops[0]["text"]
    letters = await cluster.js.stream_info(streams.DEADLETTERS.name, subjects_filter=f"deadletter.notifier.{subject}")
    assert letters.state.subjects == {f"deadletter.notifier.{subject}": 1}


async def _ops_mail_about(cluster: Cluster, text: str) -> list[dict[str, Any]]:
    return [m for m in await cluster.sinks.emails("ops@tollgate.test") if text in (m["text"] or "")]


async def test_admin_api_requires_the_admin_credential(cluster: Cluster) -> None:
    base = cluster.admin.base_url
    async with httpx.AsyncClient(base_url=base, timeout=10) as anonymous:
        requests: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/admin/v1/deliveries", {}),
            ("GET", "/admin/v1/preferences/cus_1", {}),
            ("PUT", "/admin/v1/preferences/cus_1", {"json": {"email": "x@y.test"}}),
            ("PUT", "/admin/v1/preferences/cus_1", {"content": b"not json at all"}),
        ]
        for method, path, body in requests:
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": ADMIN_TOKEN}):
                response = await anonymous.request(method, path, headers=headers, **body)
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["error"]["type"] == "authentication_error"
                assert response.headers["www-authenticate"] == "Bearer"
        assert (await anonymous.get("/healthz")).status_code == 200
    assert (await cluster.admin.get("/admin/v1/deliveries")).status_code == 200


async def test_preferences_are_validated_and_secrets_never_shown(cluster: Cluster) -> None:
    cid = customer()
    shown = await cluster.admin.get(f"/admin/v1/preferences/{cid}")
    assert shown.json()["stored"] is False
    assert shown.json()["channels"] == ["email", "slack"] and shown.json()["effective_email"] is None

    bad = [
        {"webhook_secret": "not-a-whsec"},
        {"email": "nobody"},
        {"channels": ["pager"]},
        {"slack_webhook_url": "ftp://x"},
        {"low_balance_threshold_percent": 150},
        {"channels": ["webhook"]},  # webhook needs a URL and a secret
        {"surprise": 1},
    ]
    for body in bad:
        response = await cluster.admin.put(f"/admin/v1/preferences/{cid}", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["type"] == "invalid_request_error"

    saved = await cluster.set_prefs(
        cid, channels=["email", "webhook"], email=f"{cid}@x.test",
        slack_webhook_url="https://hooks.slack.example/services/TSECRET/BSECRET/verysecret",
        webhook_url="https://hooks.example.test/tollgate?token=hunter2", webhook_secret=HOOK_SECRET,
        low_balance_threshold_nanos=5 * USD,
    )
    text = json.dumps(saved)
    assert "verysecret" not in text and "hunter2" not in text and HOOK_SECRET not in text
    assert saved["webhook_secret_set"] is True and saved["slack_uses_default"] is False
    assert saved["low_balance_threshold"] == {"type": "absolute", "nanos": 5 * USD, "display": "$5.00"}

    # Fields left out keep their value; the other kind of threshold replaces this one.
    again = await cluster.set_prefs(cid, low_balance_threshold_percent="12.5")
    assert again["channels"] == ["email", "webhook"] and again["webhook_secret_set"] is True
    assert again["low_balance_threshold"] == {"type": "percent_of_last_topup", "percent": "12.5"}
    assert (await cluster.admin.get(f"/admin/v1/preferences/{cid}")).json() == again


async def test_generic_webhook_is_signed_the_standard_webhooks_way(cluster: Cluster) -> None:
    cid = customer()
    hook = f"{cluster.sinks.slack_url}/hooks/{cid}"
    await cluster.set_prefs(cid, channels=["webhook"], webhook_url=hook, webhook_secret=HOOK_SECRET)
    receipt = PaymentSucceeded(payment_id=f"pay_{cid}", customer_id=cid, amount_cents=1000, credited_nanos=10 * USD)
    subject = subjects.for_customer(subjects.PAYMENT_SUCCEEDED, cid)
    await cluster.publish(subject, receipt)
    await cluster.publish(subject, receipt, msg_id="again")
    await cluster.settled(cid)

    [delivered] = await cluster.sinks.hooks(cid)
    assert delivered["signature_valid"] is True
    assert delivered["headers"]["webhook-id"].startswith("alert_")
    assert delivered["json"]["type"] == "payment.receipt"
    assert delivered["json"]["data"]["payment_id"] == f"pay_{cid}"
    assert delivered["json"]["data"]["credited_nanos"] == 10 * USD
    assert await cluster.sinks.emails(f"{cid}@customers.test") == []  # email was not chosen


async def test_a_permanent_slack_rejection_is_recorded_not_retried(cluster: Cluster) -> None:
    cid = customer()
    await cluster.set_prefs(cid, channels=["slack"], slack_webhook_url=f"{cluster.sinks.slack_url}/services/T/B/{cid}")
    await cluster.sinks.http.post(f"{cluster.sinks.slack_url}/_sink/fail", json={"count": 1, "status": 404})
    await cluster.publish(balance_subject("low", cid), balance_event(cid, seq=3, reason="low", balance_usd=2))
    await cluster.settled(cid)

    [row] = await cluster.deliveries(customer_id=cid)
    assert row["status"] == "failed" and row["attempts"] == 1
    assert "HTTP 404" in row["last_error"] and cid not in row["last_error"]  # the URL is a secret
    assert [a["outcome"] for a in row["attempt_log"]] == ["failed"]
    assert await cluster.sinks.slack_messages(cid) == []
    assert [r["id"] for r in await cluster.deliveries(status="failed", customer_id=cid)] == [row["id"]]


async def test_operator_cli_sets_preferences_and_reads_the_delivery_log(cluster: Cluster) -> None:
    cid = customer()
    runner = CliRunner(env={"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN, "NOTIFIER_URL": str(cluster.admin.base_url)})

    def cli(*args: str) -> Any:
        result = runner.invoke(cli_app, ["notifier", *args])
        assert result.exit_code == 0, result.output
        return result.output

    shown = json.loads(cli("prefs", "set", cid, "--email", f"{cid}@cli.test", "--channels", "email",
                           "--threshold-usd", "2.50", "--json"))
    assert shown["effective_email"] == f"{cid}@cli.test" and shown["low_balance_threshold"]["display"] == "$2.50"
    assert "$2.50" in cli("prefs", "show", cid)

    await cluster.publish(balance_subject("low", cid), balance_event(cid, seq=9, reason="low", balance_usd=2.0,
                                                                     threshold_usd=2.5))
    await cluster.settled(cid)
    log = json.loads(cli("deliveries", "--customer", cid, "--json"))["data"]
    assert [(d["channel"], d["status"], d["kind"], d["target"]) for d in log] == [
        ("email", "sent", "balance.low", f"{cid}@cli.test")
    ]
    assert f"{cid}@cli.test" in cli("deliveries", "--customer", cid, "--status", "sent")
    assert "no deliveries" in cli("deliveries", "--customer", cid, "--status", "failed")

    bad = CliRunner(env={"TOLLGATE_ADMIN_TOKEN": "wrong", "NOTIFIER_URL": str(cluster.admin.base_url)})
    denied = bad.invoke(cli_app, ["notifier", "deliveries", "--json"])
    assert denied.exit_code == 1 and "401" in denied.output
