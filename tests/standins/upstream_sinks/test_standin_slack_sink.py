"""The Slack incoming-webhook sink and the generic signed-webhook receiver, over real HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from .helpers import HOOK_SECRET

SLACK_PATH = "/services/T000/B000/XXXXXXXX"


async def test_text_message_is_accepted_like_slack(slack: httpx.AsyncClient) -> None:
    response = await slack.post(SLACK_PATH, json={"text": "Customer cus_1 crossed 80% of their cap"})

    messages = (await slack.get("/messages")).json()

    assert response.status_code == 200
    assert response.text == "ok"
    assert len(messages) == 1
    assert messages[0]["text"] == "Customer cus_1 crossed 80% of their cap"
    assert messages[0]["path"] == SLACK_PATH


async def test_blocks_only_and_form_payload_are_accepted(slack: httpx.AsyncClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Low balance*"}}]
    as_json = await slack.post(SLACK_PATH, json={"blocks": blocks})
    as_form = await slack.post(SLACK_PATH, data={"payload": orjson.dumps({"text": "via form"}).decode()})

    messages = (await slack.get("/messages")).json()

    assert as_json.text == "ok" and as_form.text == "ok"
    assert messages[0]["blocks"] == blocks
    assert messages[1]["text"] == "via form"


async def test_bad_payloads_get_slack_errors(slack: httpx.AsyncClient) -> None:
    not_json = await slack.post(SLACK_PATH, content=b"{oops", headers={"content-type": "application/json"})
    empty = await slack.post(SLACK_PATH, json={"username": "bot"})
    no_service = await slack.post("/services/", json={"text": "x"})

    assert (not_json.status_code, not_json.text) == (400, "invalid_payload")
    assert (empty.status_code, empty.text) == (400, "no_text")
    assert (no_service.status_code, no_service.text) == (404, "no_service")
    assert (await slack.get("/messages")).json() == []
    assert (await slack.get("/_sink/stats")).json()["rejected"] >= 3


async def test_fail_for_a_while_then_recover(slack: httpx.AsyncClient) -> None:
    await slack.post("/_sink/fail", json={"seconds": 60, "status": 500})

    failed = await slack.post(SLACK_PATH, json={"text": "first try"})
    await slack.delete("/_sink/fail")
    retried = await slack.post(SLACK_PATH, json={"text": "second try"})

    assert failed.status_code == 500
    assert retried.status_code == 200
    assert [m["text"] for m in (await slack.get("/messages")).json()] == ["second try"]


async def test_fail_count_with_rate_limit_and_retry_after(slack: httpx.AsyncClient) -> None:
    await slack.post("/_sink/fail", json={"count": 1, "status": 429, "retry_after": 3})

    limited = await slack.post(SLACK_PATH, json={"text": "a"})
    then_ok = await slack.post(SLACK_PATH, json={"text": "a"})

    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.text == "rate_limited"
    assert then_ok.status_code == 200
    assert (await slack.get("/_sink/fail")).json()["failing"] is False


async def test_fail_control_rejects_bad_status(slack: httpx.AsyncClient) -> None:
    response = await slack.post("/_sink/fail", json={"seconds": 5, "status": 200})

    assert response.status_code == 400
    assert (await slack.post(SLACK_PATH, json={"text": "still fine"})).status_code == 200


def signed_headers(body: bytes, secret: str = HOOK_SECRET) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, now, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


async def test_generic_hook_stores_body_headers_and_checks_signature(slack: httpx.AsyncClient) -> None:
    body = orjson.dumps({"type": "balance.low", "customer_id": "cus_1"})
    good = await slack.post("/hooks/ops", content=body, headers=signed_headers(body))
    forged = await slack.post("/hooks/ops", content=body, headers=signed_headers(body, "whsec_" + "c2VjcmV0"))
    other = await slack.post("/hooks/finance", content=body, headers=signed_headers(body))

    ops = (await slack.get("/hooks/ops")).json()

    assert good.status_code == forged.status_code == other.status_code == 200
    assert len(ops) == 2
    assert ops[0]["json"] == {"type": "balance.low", "customer_id": "cus_1"}
    assert ops[0]["headers"]["webhook-id"].startswith("msg_")
    assert [h["signature_valid"] for h in ops] == [True, False]
    assert len((await slack.get("/hooks")).json()) == 3

    assert (await slack.delete("/hooks")).json() == {"deleted": 3}
    assert (await slack.get("/hooks")).json() == []
