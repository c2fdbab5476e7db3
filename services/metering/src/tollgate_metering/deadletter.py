"""Dead letters: the original payload, its subject and msg id, and why, on
`deadletter.metering.<original subject>` (the DEADLETTER stream). Published before the original
is acknowledged, so a crash in between redelivers the original rather than losing it; the
dead letter's own msg id makes the second copy a duplicate."""

from __future__ import annotations

import base64

from nats.js import JetStreamContext

from tollgate_contracts import subjects
from tollgate_contracts.events import DeadLetter
from tollgate_platform import bus

SERVICE = "metering"


def build(
    subject: str, msg_id: str | None, payload: bytes, reason: str, deliveries: int
) -> DeadLetter:
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    return DeadLetter(
        service=SERVICE,
        original_subject=subject,
        original_msg_id=msg_id,
        reason=reason,
        payload=text,
        payload_encoding=encoding,  # type: ignore[arg-type]
        deliveries=deliveries,
    )


async def publish(js: JetStreamContext, letter: DeadLetter) -> None:
    await bus.publish_event(js, subjects.deadletter(SERVICE, letter.original_subject), letter, timeout=5.0)
