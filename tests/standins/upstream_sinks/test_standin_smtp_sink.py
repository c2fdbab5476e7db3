"""The SMTP sink, fed by a real SMTP client (aiosmtplib) and read back over its HTTP API."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib
import pytest

from .conftest import SmtpSink
from .helpers import SMTP_PASSWORD, SMTP_USER


def make_message(subject: str = "Low balance", to: str = "ops@example.test") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "tollgate@example.test"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Your balance is below the threshold.")
    return message


async def send(sink: SmtpSink, message: EmailMessage, **kwargs: object) -> None:
    await aiosmtplib.send(message, hostname="127.0.0.1", port=sink.smtp_port, start_tls=False, **kwargs)  # type: ignore[arg-type]


async def test_received_message_is_listed_with_envelope_and_content(smtp_sink: SmtpSink) -> None:
    await send(smtp_sink, make_message())

    messages = (await smtp_sink.http.get("/messages", params={"wait_ms": 5000})).json()

    assert len(messages) == 1
    got = messages[0]
    assert got["from"] == "tollgate@example.test"
    assert got["to"] == ["ops@example.test"]
    assert got["subject"] == "Low balance"
    assert got["text"].strip() == "Your balance is below the threshold."
    assert got["html"] is None
    assert got["headers"]["Subject"] == "Low balance"
    assert got["received_at"]
    assert got["auth_login"] is None


async def test_multipart_message_exposes_text_and_html(smtp_sink: SmtpSink) -> None:
    message = make_message("Top-up received")
    message.add_alternative("<p>Thanks for your <b>top-up</b>.</p>", subtype="html")

    await send(smtp_sink, message)
    got = (await smtp_sink.http.get("/messages", params={"wait_ms": 5000})).json()[0]

    assert "Your balance is below" in got["text"]
    assert "<b>top-up</b>" in got["html"]


async def test_recipient_filter_and_clear(smtp_sink: SmtpSink) -> None:
    await send(smtp_sink, make_message(to="alice@example.test"))
    await send(smtp_sink, make_message(to="bob@example.test"))

    for_bob = (await smtp_sink.http.get("/messages", params={"to": "bob@"})).json()
    cleared = (await smtp_sink.http.delete("/messages")).json()
    after = (await smtp_sink.http.get("/messages")).json()

    assert [m["to"] for m in for_bob] == [["bob@example.test"]]
    assert cleared == {"deleted": 2}
    assert after == []


async def test_refuse_mode_answers_421_until_lifted(smtp_sink: SmtpSink) -> None:
    status = (await smtp_sink.http.post("/_sink/refuse", json={"seconds": 60})).json()
    assert status["refusing"] is True

    with pytest.raises(aiosmtplib.SMTPResponseException) as info:
        await send(smtp_sink, make_message())
    assert info.value.code == 421
    assert (await smtp_sink.http.get("/messages")).json() == []
    assert (await smtp_sink.http.get("/_sink/refuse")).json()["refused"] >= 1

    lifted = (await smtp_sink.http.delete("/_sink/refuse")).json()
    await send(smtp_sink, make_message())

    assert lifted["refusing"] is False
    assert len((await smtp_sink.http.get("/messages")).json()) == 1


async def test_refuse_rejects_a_bad_body(smtp_sink: SmtpSink) -> None:
    response = await smtp_sink.http.post("/_sink/refuse", json={"seconds": "soon"})

    assert response.status_code == 400
    assert (await smtp_sink.http.get("/_sink/refuse")).json()["refusing"] is False


async def test_auth_with_configured_credentials(smtp_auth_sink: SmtpSink) -> None:
    await send(smtp_auth_sink, make_message(), username=SMTP_USER, password=SMTP_PASSWORD)

    got = (await smtp_auth_sink.http.get("/messages", params={"wait_ms": 5000})).json()

    assert len(got) == 1
    assert got[0]["auth_login"] == SMTP_USER


async def test_auth_rejects_wrong_password_and_anonymous_mail(smtp_auth_sink: SmtpSink) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await send(smtp_auth_sink, make_message(), username=SMTP_USER, password="wrong")
    with pytest.raises(aiosmtplib.SMTPResponseException) as info:
        await send(smtp_auth_sink, make_message())

    assert info.value.code == 530
    assert (await smtp_auth_sink.http.get("/messages")).json() == []
