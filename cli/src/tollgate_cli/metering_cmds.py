"""`tollgate metering dead-letters list|replay`: usage the metering service could not deliver.

Dead letters live on the DEADLETTER stream (`deadletter.metering.<original subject>`), each with
the original payload, subject and Nats-Msg-Id. A replay re-publishes the payload to its original
subject under a NEW msg id, `<original>:replay:<dead-letter seq>`: the USAGE stream would drop the
original id as a duplicate within its 2-hour window. The Dodo event ids still derive from the
request id inside the payload, so a replay of something Dodo already has changes nothing there,
and replaying the same dead letter twice within the window is a NATS duplicate.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tollgate_cli.output import emit, fail
from tollgate_contracts import streams, subjects
from tollgate_contracts.events import DeadLetter
from tollgate_platform import bus
from tollgate_platform.settings import ServiceSettings

app = typer.Typer(help="Metering: inspect and replay dead-lettered usage.", no_args_is_help=True)
dead_letters = typer.Typer(help="Usage the metering service could not deliver to Dodo.", no_args_is_help=True)
app.add_typer(dead_letters, name="dead-letters")
JsonOut = Annotated[bool, typer.Option("--json")]

SERVICE = "metering"
REPLAY_MARK = ":replay:"


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    time: datetime | None
    letter: DeadLetter

    def payload(self) -> bytes:
        if self.letter.payload_encoding == "base64":
            return base64.b64decode(self.letter.payload)
        return self.letter.payload.encode()

    def summary(self) -> dict[str, Any]:
        usage: dict[str, Any] = {}
        try:
            parsed = json.loads(self.payload())
            if isinstance(parsed, dict):
                usage = parsed
        except ValueError:
            pass
        return {
            "id": self.seq,
            "time": self.time.isoformat() if self.time else None,
            "subject": self.letter.original_subject,
            "msg_id": self.letter.original_msg_id,
            "reason": self.letter.reason,
            "deliveries": self.letter.deliveries,
            "request_id": usage.get("event_id"),
            "customer_id": usage.get("customer_id"),
            "model": usage.get("model"),
        }


async def read_dead_letters(js: JetStreamContext, service: str = SERVICE) -> list[Entry]:
    """Every dead letter of a service, oldest first, read through a throw-away consumer."""
    filter_subject = subjects.deadletter(service, ">")
    info = await js.stream_info(streams.DEADLETTERS.name, subjects_filter=filter_subject)
    if not info.state.messages:
        return []
    sub = await js.pull_subscribe(
        filter_subject,
        stream=streams.DEADLETTERS.name,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0,
        ),
    )
    entries: list[Entry] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(batch=500, timeout=1.0)
            except TimeoutError:
                break
            for msg in msgs:
                meta = msg.metadata
                entries.append(Entry(meta.sequence.stream, meta.timestamp, DeadLetter.model_validate_json(msg.data)))
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return entries


def replay_msg_id(entry: Entry) -> str:
    return f"{entry.letter.original_msg_id or f'dlq-{entry.seq}'}{REPLAY_MARK}{entry.seq}"


async def replay(
    js: JetStreamContext, entries: list[Entry], dodo_customer_id: str | None = None
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for entry in entries:
        payload = entry.payload()
        if dodo_customer_id is not None:
            usage = json.loads(payload)
            usage["dodo_customer_id"] = dodo_customer_id
            payload = json.dumps(usage).encode()
        msg_id = replay_msg_id(entry)
        ack = await bus.publish_raw(
            js, entry.letter.original_subject, payload, msg_id, headers={"Content-Type": "application/json"}
        )
        results.append({"id": entry.seq, "subject": entry.letter.original_subject, "msg_id": msg_id,
                        "already_replayed": bool(ack.duplicate)})
    return results


def _run(coro_factory: Any) -> Any:
    settings = ServiceSettings()

    async def run() -> Any:
        nc = await bus.connect(settings.nats_url, "tollgate-cli-metering")
        try:
            return await coro_factory(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


@dead_letters.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option("--limit", help="show the newest N")] = 100,
    json_out: JsonOut = False,
) -> None:
    """Dead-lettered usage, with the reason each one was refused."""
    entries: list[Entry] = _run(read_dead_letters)
    rows = [e.summary() for e in entries[-limit:]]
    human = "\n".join(
        f"{r['id']:>6}  {r['time']}  {r['request_id'] or r['msg_id']}  {r['customer_id']}  {r['reason']}"
        for r in rows
    ) or "no dead letters"
    emit({"dead_letters": rows, "total": len(entries)}, json_out, human)


@dead_letters.command("replay")
def replay_cmd(
    ids: Annotated[list[int] | None, typer.Option("--id", help="dead letter id (repeatable)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every metering dead letter")] = False,
    dodo_customer_id: Annotated[
        str | None, typer.Option("--dodo-customer-id", help="set the Dodo customer of the replayed usage (one --id)")
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Re-publish dead-lettered usage to its original subject after the cause is fixed."""
    if not ids and not all_:
        fail("give --id N (repeatable) or --all", json_out)
    if dodo_customer_id is not None and (all_ or len(ids or []) != 1):
        fail("--dodo-customer-id needs exactly one --id", json_out)

    async def run(js: JetStreamContext) -> tuple[list[dict[str, Any]], list[int]]:
        entries = await read_dead_letters(js)
        chosen = entries if all_ else [e for e in entries if e.seq in set(ids or [])]
        missing = sorted(set(ids or []) - {e.seq for e in chosen})
        if missing:  # all or nothing: a typo must not replay half of the list
            return [], missing
        return await replay(js, chosen, dodo_customer_id), missing

    results, missing = _run(run)
    if missing:
        fail(f"no metering dead letter with id {', '.join(map(str, missing))}", json_out)
    human = "\n".join(
        f"{r['id']:>6}  -> {r['subject']}  {r['msg_id']}{'  (already replayed)' if r['already_replayed'] else ''}"
        for r in results
    ) or "nothing to replay"
    emit({"replayed": results}, json_out, human)
