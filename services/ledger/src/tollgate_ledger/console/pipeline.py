"""Metering lag and dead letters, read from JetStream over the ledger's own NATS connection.

Lag is what the durable consumers report (num_pending: not yet delivered to any replica;
num_ack_pending: delivered, not acknowledged) plus the age of the oldest unacknowledged message.
Dead letters are read newest first straight from the DEADLETTER stream by sequence (no consumer
is created for a page view). A replay re-publishes the original payload to its original subject
under a new Nats-Msg-Id, `<original msg id>:replay:<dead letter seq>` - the same id the CLI
(`tollgate metering dead-letters replay`) uses, so a console replay and a CLI replay of the same
dead letter are one publish, and metering recognises the mark (see docs/metering.md)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from tollgate_contracts import streams
from tollgate_contracts.events import DeadLetter
from tollgate_platform import bus

REPLAY_MARK = ":replay:"
LAG_CONSUMERS = (streams.METERING_USAGE, streams.LEDGER_USAGE)


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    durable: str
    stream: str
    found: bool
    num_pending: int = 0
    num_ack_pending: int = 0
    num_redelivered: int = 0
    oldest_unacked_at: datetime | None = None

    @property
    def lag_seconds(self) -> float | None:
        if self.oldest_unacked_at is None:
            return None
        return max((datetime.now(UTC) - self.oldest_unacked_at).total_seconds(), 0.0)


async def consumer_lag(js: JetStreamContext) -> list[ConsumerLag]:
    return list(await asyncio.gather(*(_one(js, spec) for spec in LAG_CONSUMERS)))


async def _one(js: JetStreamContext, spec: streams.ConsumerSpec) -> ConsumerLag:
    try:
        info = await js.consumer_info(spec.stream.name, spec.durable, timeout=2.0)
    except NotFoundError:
        return ConsumerLag(spec.durable, spec.stream.name, found=False)
    oldest: datetime | None = None
    if (info.num_pending or 0) + (info.num_ack_pending or 0) > 0 and info.ack_floor is not None:
        try:
            msg = await js.get_msg(spec.stream.name, seq=(info.ack_floor.stream_seq or 0) + 1)
            oldest = _time(msg.time)
        except NotFoundError:  # aged out or purged: the age is unknown, the counts still hold
            oldest = None
    return ConsumerLag(
        spec.durable, spec.stream.name, True, info.num_pending or 0, info.num_ack_pending or 0,
        info.num_redelivered or 0, oldest,
    )


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            # nats-server writes nanoseconds; Python parses microseconds.
            head, _, rest = value.rstrip("Z").partition(".")
            return datetime.fromisoformat(f"{head}.{rest[:6].ljust(6, '0')}" if rest else head).replace(tzinfo=UTC)
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Letter:
    seq: int
    time: datetime | None
    letter: DeadLetter | None  # None: the stored message is not a DeadLetter (shown, not replayable)
    subject: str

    def payload(self) -> bytes:
        assert self.letter is not None
        if self.letter.payload_encoding == "base64":
            return base64.b64decode(self.letter.payload)
        return self.letter.payload.encode()

    @property
    def usage(self) -> dict[str, Any]:
        if self.letter is None:
            return {}
        try:
            parsed = json.loads(self.payload())
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    @property
    def replay_msg_id(self) -> str:
        original = self.letter.original_msg_id if self.letter else None
        return f"{original or f'dlq-{self.seq}'}{REPLAY_MARK}{self.seq}"


@dataclass(frozen=True, slots=True)
class LetterPage:
    letters: list[Letter]
    total: int
    next_before: int | None


async def dead_letters(js: JetStreamContext, *, limit: int, before: int | None = None) -> LetterPage:
    """The newest `limit` dead letters with a sequence below `before`."""
    try:
        info = await js.stream_info(streams.DEADLETTERS.name)
    except NotFoundError:
        return LetterPage([], 0, None)
    if not info.state.messages:
        return LetterPage([], 0, None)
    first, last = info.state.first_seq, info.state.last_seq
    top = min(last, (before - 1) if before else last)
    letters: list[Letter] = []
    seq = top
    # Walk down in small concurrent batches; deleted sequences are simply skipped.
    while seq >= first and len(letters) < limit:
        batch = list(range(seq, max(first, seq - limit) - 1, -1))
        found = await asyncio.gather(*(get_letter(js, s) for s in batch))
        letters.extend(item for item in found if item is not None)
        seq = batch[-1] - 1
    letters = letters[:limit]
    more = bool(letters) and letters[-1].seq > first
    return LetterPage(letters, info.state.messages, letters[-1].seq if more else None)


async def get_letter(js: JetStreamContext, seq: int) -> Letter | None:
    try:
        msg = await js.get_msg(streams.DEADLETTERS.name, seq=seq)
    except NotFoundError:
        return None
    try:
        letter: DeadLetter | None = DeadLetter.model_validate_json(msg.data or b"")
    except ValidationError:
        letter = None
    return Letter(seq, _time(msg.time), letter, msg.subject or "")


async def replay(js: JetStreamContext, letter: Letter) -> bool:
    """Re-publish; True when JetStream reports it a duplicate (replayed before, within its window)."""
    assert letter.letter is not None
    ack = await bus.publish_raw(
        js, letter.letter.original_subject, letter.payload(), letter.replay_msg_id,
        headers={"Content-Type": "application/json"},
    )
    return bool(ack.duplicate)
