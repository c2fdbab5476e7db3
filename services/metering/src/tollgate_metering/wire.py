"""The NATS connection of the metering hot path: nats-py's client with two shortcuts.

Measured on this machine (one JetStream message with the gateway's three headers, empty
handler): nats-py's subscription path costs ~18 µs of CPU per message (header dict, `Msg` object,
its queue and task hop, the awaited callback) and `Msg.ack()` another ~10 µs (one `publish` per
ack) - together more than everything else metering does. So, for the pull inbox only:

- `route_raw(sid, handler)`: messages of that subscription are handed to a plain function as the
  protocol gave them (subject, reply, payload, raw header block) straight from the parser
  (`MessageParser`, which also reads MSG/HMSG lines more cheaply than nats-py's regular
  expressions). Headers are parsed only when something needs them (`Delivery.headers`). Such
  messages are not counted in `Client.stats`.
- `send_raw(commands)`: protocol commands written as they are, so the acks of a whole Dodo batch
  are one write (`PUB <reply> 0` each: exactly what `Msg.ack()` sends), with `publish()`'s
  rules for a closed or reconnecting connection (buffered while reconnecting, up to the limit).

Everything else - connecting, reconnecting and re-subscribing (the sid survives a reconnect),
PING/PONG, the JetStream API, dead-letter publishes, naks and in-progress acks - is nats-py's own.
The internals overridden or used (`Client._process_msg`, `_send_command`, `_flush_pending`,
`_parse_header_lines`) are pinned by a test (tests/metering/test_wire.py), so a nats-py upgrade
that changes them fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, OutboundBufferLimitError
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from tollgate_platform.logging import get_logger

_log = get_logger("tollgate_metering.wire")

RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], None]

_HDR_LINE = b"NATS/1.0"
_HDR_START = len(_HDR_LINE) + 2  # after "NATS/1.0\r\n"


class MessageParser(Parser):
    """nats-py's parser with a fast lane for MSG/HMSG, the bulk of what a consumer reads: the
    control line is split instead of matched by regular expressions, the buffer is cut once per
    read instead of twice per message. Anything else (PING, INFO, +OK, -ERR, a message split
    across reads that the original already started on) is left to nats-py's own `parse`, with
    its exact behaviour; so are lines this lane does not recognise."""

    async def parse(self, data: bytes = b"") -> None:
        if self.state != AWAITING_CONTROL_LINE:
            await super().parse(data)
            if self.state != AWAITING_CONTROL_LINE:
                return
            data = b""
        buf = self.buf
        if data:
            buf.extend(data)
        size = len(buf)
        pos = 0
        process = self.nc._process_msg
        raw_routes: dict[bytes, RawHandler] = getattr(self.nc, "_raw_by_sid", {})
        handled = True
        view = memoryview(buf)  # slices without copies; released before the buffer is cut
        try:
            while pos < size:
                if buf.startswith(b"HMSG ", pos):
                    skip, with_headers = 5, True
                elif buf.startswith(b"MSG ", pos):
                    skip, with_headers = 4, False
                else:
                    handled = False
                    break
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break  # the rest of the line comes with the next read
                args = bytes(view[pos + skip : end]).split()
                count = len(args)
                try:
                    if with_headers:
                        if count == 5:
                            subject, sid, reply, header_size, total_size = args
                        elif count == 4:
                            subject, sid, header_size, total_size = args
                            reply = b""
                        else:
                            handled = False
                            break
                        header_len = int(header_size)
                    else:
                        if count == 4:
                            subject, sid, reply, total_size = args
                        elif count == 3:
                            subject, sid, total_size = args
                            reply = b""
                        else:
                            handled = False
                            break
                        header_len = 0
                    start = end + 2
                    stop = start + int(total_size)
                except ValueError:
                    handled = False
                    break
                if stop + 2 > size:
                    break  # the payload comes with the next read
                handler = raw_routes.get(sid)
                sid_number = 0
                if handler is None:
                    try:
                        sid_number = int(sid)
                    except ValueError:
                        handled = False  # not what a server sends; nats-py judges it
                        break
                if header_len:
                    split = start + header_len
                    headers: bytes | None = bytes(view[start:split])
                    payload = bytes(view[split:stop])
                else:
                    headers = None
                    payload = bytes(view[start:stop])
                pos = stop + 2
                if handler is not None:  # a raw-routed inbox: straight to its function
                    try:
                        handler(subject, reply, payload, headers)
                    except Exception:  # never let a handler's bug stop the connection's reader
                        _log.exception("raw message handler failed", subject=subject.decode(errors="replace"))
                else:
                    await process(sid_number, subject, reply, payload, headers)  # type: ignore[arg-type]
        finally:
            view.release()
        if pos:
            del buf[:pos]
        if not handled and buf:
            await super().parse()


class MeteringClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self._raw_handlers: dict[int, RawHandler] = {}
        self._raw_by_sid: dict[bytes, RawHandler] = {}  # the parser's view: sid as on the wire
        self._ps = MessageParser(self)

    def route_raw(self, sid: int, handler: RawHandler) -> None:
        self._raw_handlers[sid] = handler
        self._raw_by_sid[str(sid).encode()] = handler

    def unroute_raw(self, sid: int) -> None:
        self._raw_handlers.pop(sid, None)
        self._raw_by_sid.pop(str(sid).encode(), None)

    async def _process_msg(  # type: ignore[override]
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self._raw_handlers.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        handler(subject, reply, data, headers)

    async def send_raw(self, commands: bytes) -> None:
        if self.is_closed:
            raise ConnectionClosedError
        if not self.is_connected and (
            self._max_pending_size <= 0 or len(commands) + self._pending_data_size > self._max_pending_size
        ):
            raise OutboundBufferLimitError
        await self._send_command(commands)
        if self._flush_queue is not None and self._flush_queue.empty():  # as publish() does
            await self._flush_pending()


async def connect(nats_url: str, name: str, **kwargs: Any) -> MeteringClient:
    """Same options as tollgate_platform.bus.connect (reconnect forever, 1 s apart)."""
    nc = MeteringClient()
    await nc.connect(servers=nats_url.split(","), name=name, max_reconnect_attempts=-1, reconnect_time_wait=1,
                     **kwargs)
    return nc


def status_of(headers: bytes | None) -> bytes | None:
    """The status code of a JetStream status message (`NATS/1.0 404 No Messages`), else None."""
    if headers is not None and headers[8:9] == b" ":
        return headers[9:12]
    return None


def status_description(headers: bytes) -> str:
    line = headers.split(b"\r\n", 1)[0]
    return line[13:].decode(errors="replace")


def parse_headers(raw: bytes | None) -> dict[str, str] | None:
    """The header block as nats-py's `Msg.headers` would have it (for plain, non-status messages)."""
    if not raw:
        return None
    parsed: dict[str, str] = Client._parse_header_lines(raw[_HDR_START:])
    return parsed or None


class Delivery(tuple[bytes, bytes, bytes, "bytes | None"]):
    """One message from the pull inbox, kept as the bytes that came off the wire:
    (subject, reply, payload, raw header block). A tuple, so making one costs next to nothing."""

    __slots__ = ()

    @property
    def subject_b(self) -> bytes:
        return self[0]

    @property
    def reply_b(self) -> bytes:
        return self[1]

    @property
    def data(self) -> bytes:
        return self[2]

    @property
    def raw_headers(self) -> bytes | None:
        return self[3]

    @property
    def headers(self) -> dict[str, str] | None:
        """Parsed on each call: only spans (a few per batch) and dead letters need them."""
        return parse_headers(self[3])

    @property
    def subject(self) -> str:
        return self[0].decode()

    def header_contains(self, needle: bytes) -> bool:
        raw = self[3]
        return raw is not None and needle in raw

    def ack_command(self) -> bytes:
        # What Msg.ack() sends: an empty message to the reply subject.
        return b"PUB " + self[1] + b" 0\r\n\r\n"

    def msg(self, nc: Client) -> Msg:
        """A nats-py message for the rare operations (nak with delay, in-progress, metadata)."""
        return Msg(_client=nc, subject=self.subject, reply=self[1].decode(), data=self[2], headers=self.headers)
