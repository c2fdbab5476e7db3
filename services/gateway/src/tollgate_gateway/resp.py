"""The hot path's Redis connection: a minimal RESP2 client with automatic pipelining.

Why: the admit and settle scripts are the gateway's only Redis traffic per request, and with
redis-py each call cost ~100 us of Python (connection pool, encoders, a RESP3 parser written in
Python) plus its own socket write. Here every command issued during one event-loop iteration
goes out in a single write on one connection and the replies are matched in order, so under load
many requests share one syscall, and a call costs a few microseconds of encoding and parsing.
Redis executes commands one at a time anyway: one pipelined connection per worker is what it
serves fastest. Everything else (auth lookups, reloads, 429 details) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ResponseError

Reply = Any


class RespError(ResponseError):
    """An error reply from Redis (e.g. NOSCRIPT, or a script's own error)."""


class _Protocol(asyncio.Protocol):
    def __init__(self, client: PipelinedRedis) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        # (waiter, tag): a tagged command's reply is an array ending with its tag (the request id).
        self.waiters: deque[tuple[asyncio.Future[Reply], bytes | None]] = deque()
        self.buf = bytearray()
        self.closed = False
        # Commands are buffered per connection: bytes must go out on the connection whose waiter
        # queue holds their waiters, or replies would be matched to the wrong commands.
        self.out: list[bytes] = []
        self.flush_scheduled = False

    def abort(self) -> None:
        """Replies are matched by position: once one is lost (a timeout), none can be trusted."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = ConnectionError("redis connection lost")
        while self.waiters:
            waiter, _ = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        self.client._lost(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while self.waiters:
            try:
                value, pos = _parse(buf, pos)
            except _Incomplete:
                break
            waiter, tag = self.waiters.popleft()
            if tag is not None and not isinstance(value, RespError) and _tag(value) != tag:
                self._misaligned(waiter, value)
                return
            if not waiter.done():
                if isinstance(value, RespError):
                    waiter.set_exception(value)
                else:
                    waiter.set_result(value)
        if pos:
            del buf[:pos]

    def _misaligned(self, waiter: asyncio.Future[Reply], value: Reply) -> None:
        """Replies come in command order, so commands queued before the one this reply names
        were lost on the way (a middlebox dropping bytes); their outcome is unknown, and the
        connection can no longer be trusted. The reply still reaches the command it answers."""
        tag = _tag(value)
        lost = [waiter]
        while self.waiters:
            candidate, candidate_tag = self.waiters.popleft()
            if candidate_tag is not None and candidate_tag == tag:
                if not candidate.done():
                    candidate.set_result(value)
                break
            lost.append(candidate)
        error = ConnectionError("redis reply lost: the connection dropped a command or its reply")
        for future in lost:
            if not future.done():
                future.set_exception(error)
        self.buf.clear()
        self.abort()


def _tag(value: Reply) -> bytes | None:
    return value[-1] if isinstance(value, list) and value and isinstance(value[-1], bytes) else None


def _expire(waiter: asyncio.Future[Reply], conn: _Protocol) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("redis did not answer in time"))
        conn.abort()


class _Incomplete(Exception):
    pass


def _line(buf: bytearray, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    return bytes(buf[pos:end]), end + 2


def _parse(buf: bytearray, pos: int) -> tuple[Reply, int]:
    if pos >= len(buf):
        raise _Incomplete
    kind = buf[pos]
    line, pos = _line(buf, pos + 1)
    if kind == 0x3A:  # ':' integer
        return int(line), pos
    if kind == 0x24:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 0x2B:  # '+' simple string
        return line, pos
    if kind == 0x2D:  # '-' error
        return RespError(line.decode(errors="replace")), pos
    raise ConnectionError(f"unexpected RESP type byte {kind!r}")


def _encode_arg(arg: Any) -> bytes:
    kind = type(arg)
    if kind is bytes:
        return arg  # type: ignore[no-any-return]
    if kind is str:
        return arg.encode()  # type: ignore[no-any-return]
    if kind is int:
        return b"%d" % arg
    return str(arg).encode()


def _encode(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode_arg(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class PipelinedRedis:
    def __init__(self, url: str, connect_timeout_s: float = 5.0, command_timeout_s: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", ""):
            raise ValueError("the pipelined hot-path client speaks plain redis:// (use a TLS proxy for rediss)")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.lstrip("/") or 0)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.connect_timeout = connect_timeout_s
        self.command_timeout = command_timeout_s
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connection(self) -> _Protocol:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self.host, self.port), self.connect_timeout
            )
        except TimeoutError as exc:
            raise ConnectionError("connecting to redis timed out") from exc
        handshake: list[list[Any]] = []
        if self.password is not None:
            handshake.append(["AUTH", *( [self.username] if self.username else []), self.password])
        if self.db:
            handshake.append(["SELECT", self.db])
        for command in handshake:
            waiter = loop.create_future()
            conn.waiters.append((waiter, None))
            assert conn.transport is not None
            conn.transport.write(_encode(command))
            await waiter
        self._conn = conn
        return conn

    def _lost(self, conn: _Protocol) -> None:
        if self._conn is conn:
            self._conn = None

    async def execute(self, *args: Any, tag: bytes | None = None) -> Reply:
        """Run one command. With `tag`, its reply must be an array ending with the tag: a reply
        that ends otherwise proves lost bytes, and fails the commands it skipped over."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        conn.waiters.append((waiter, tag))
        conn.out.append(_encode(args))
        if not conn.flush_scheduled:
            conn.flush_scheduled = True
            loop.call_soon(self._flush, conn)
        timer = loop.call_later(self.command_timeout, _expire, waiter, conn)
        try:
            return await waiter
        finally:
            timer.cancel()

    @staticmethod
    def _flush(conn: _Protocol) -> None:
        conn.flush_scheduled = False
        out, conn.out = conn.out, []
        if conn.transport is not None and not conn.closed:
            conn.transport.write(b"".join(out))

    def register_script(self, script: str, *, tagged_by_first_arg: bool = False) -> Script:
        """`tagged_by_first_arg`: the script returns an array ending with ARGV[1] (a request id)."""
        return Script(self, script, tagged_by_first_arg)

    async def ping(self) -> None:
        await self.execute("PING")

    async def aclose(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None


class Script:
    """EVALSHA with a fallback to EVAL when Redis does not have the script (yet, or any more)."""

    def __init__(self, client: PipelinedRedis, source: str, tagged_by_first_arg: bool = False) -> None:
        self.client = client
        self.source = source
        self.tagged = tagged_by_first_arg
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Reply:
        tag = _encode_arg(args[0]) if self.tagged else None
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args, tag=tag)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.client.execute("EVAL", self.source, len(keys), *keys, *args, tag=tag)
