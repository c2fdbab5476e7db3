"""tollgate_metering.wire leans on a few nats-py internals; pin them, and check that its parser
reads any byte stream exactly as nats-py's own."""

from __future__ import annotations

import inspect
import json
import random
from typing import Any

import pytest
from nats.aio.client import Client
from nats.protocol import parser as nats_parser

from tollgate_metering.wire import Delivery, MessageParser, MeteringClient, parse_headers, status_of


def test_the_nats_internals_wire_uses_are_there() -> None:
    assert list(inspect.signature(Client._process_msg).parameters) == [
        "self", "sid", "subject", "reply", "data", "headers"]
    assert list(inspect.signature(Client._send_command).parameters) == ["self", "cmd", "priority"]
    assert inspect.iscoroutinefunction(Client._flush_pending)
    assert Client._parse_header_lines(b"A: 1\r\nB:2\r\n\r\n") == {"A": "1", "B": "2"}
    client = MeteringClient()
    for name in ("_pending", "_pending_data_size", "_max_pending_size", "_flush_queue", "_ps", "stats"):
        assert hasattr(client, name), name
    assert isinstance(client._ps, MessageParser)
    assert nats_parser.AWAITING_CONTROL_LINE == nats_parser.Parser().state
    assert {"buf", "state", "needed", "header_needed", "msg_arg"} <= set(vars(nats_parser.Parser()))


class Recorder:
    """Stands in for the client the parser calls back."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))


def _stream(rng: random.Random, count: int) -> bytes:
    parts: list[bytes] = []
    for i in range(count):
        kind = rng.random()
        payload = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 5, 300))))
        reply = rng.choice((b"", b"$JS.ACK.USAGE.metering-usage.1.%d.%d.1796000000000000000.0" % (i, i), b"_INBOX.x.1"))
        sid = rng.randrange(1, 50)
        if kind < 0.45:
            headers = b"NATS/1.0\r\nNats-Msg-Id: r%d\r\ntraceparent: 00-%032x-%016x-01\r\n\r\n" % (i, i, i)
            if rng.random() < 0.1:
                headers, payload = b"NATS/1.0 404 No Messages\r\n\r\n", b""
            head = b"HMSG usage.recorded.t_%d %d %s%d %d\r\n" % (
                i, sid, reply + b" " if reply else b"", len(headers), len(headers) + len(payload))
            parts.append(head + headers + payload + b"\r\n")
        elif kind < 0.85:
            head = b"MSG _INBOX.abc.%d %d %s%d\r\n" % (i, sid, reply + b" " if reply else b"", len(payload))
            parts.append(head + payload + b"\r\n")
        elif kind < 0.9:
            parts.append(b"PING\r\n")
        elif kind < 0.94:
            parts.append(b"PONG\r\n")
        elif kind < 0.97:
            parts.append(b"+OK\r\n")
        elif kind < 0.99:
            parts.append(b"INFO " + json.dumps({"server_id": str(i), "max_payload": 1048576}).encode() + b"\r\n")
        else:
            parts.append(b"-ERR 'Permissions Violation for Subscription to foo'\r\n")
    return b"".join(parts)


async def _feed(parser_class: type[nats_parser.Parser], stream: bytes, cuts: list[int]) -> list[tuple[Any, ...]]:
    recorder = Recorder()
    parser = parser_class(recorder)
    previous = 0
    for cut in [*cuts, len(stream)]:
        await parser.parse(stream[previous:cut])
        previous = cut
    assert not parser.buf
    return recorder.calls


@pytest.mark.parametrize("seed", range(40))
async def test_the_parser_reads_like_nats_py_s(seed: int) -> None:
    rng = random.Random(seed)
    stream = _stream(rng, 300)
    if seed % 4 == 0:
        cuts = list(range(1, len(stream), 1 + seed % 7))  # tiny reads: every split point
    else:
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, rng.choice((1, 10, 100, 1000)))))
    assert await _feed(MessageParser, stream, cuts) == await _feed(nats_parser.Parser, stream, cuts)


def test_deliveries_read_what_nats_py_would() -> None:
    raw_headers = b"NATS/1.0\r\nNats-Msg-Id: req_1:replay:7\r\ntraceparent: 00-ab-cd-01\r\n\r\n"
    delivery = Delivery((b"usage.recorded.t_a", b"$JS.ACK.USAGE.metering-usage.3.10.9.1796000000000000000.5",
                         b"{}", raw_headers))
    assert delivery.headers == {"Nats-Msg-Id": "req_1:replay:7", "traceparent": "00-ab-cd-01"}
    assert delivery.header_contains(b":replay:") and not Delivery((b"s", b"r", b"", None)).header_contains(b"x")
    assert delivery.ack_command() == b"PUB $JS.ACK.USAGE.metering-usage.3.10.9.1796000000000000000.5 0\r\n\r\n"
    msg = delivery.msg(Client())
    assert msg.metadata.num_delivered == 3 and msg.metadata.sequence.stream == 10
    assert msg.subject == "usage.recorded.t_a" and msg.headers == delivery.headers
    assert status_of(b"NATS/1.0 408 Request Timeout\r\n\r\n") == b"408"
    assert status_of(raw_headers) is None and parse_headers(None) is None
