"""Asyncio TCP fault proxy with Toxiproxy-style toxics, for chaos tests against NATS/Redis/Postgres.

Toxiproxy itself cannot be installed from this environment's registries; this covers the toxics
our chaos tests need (latency+jitter, down, reset_peer, limit_data, timeout) in ~300 lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import struct
from collections.abc import Mapping
from types import TracebackType
from typing import Any

_READ_SIZE = 65536


class ToxicError(ValueError):
    """A toxics patch with an unknown name or a value of the wrong type."""


@dataclasses.dataclass(frozen=True, slots=True)
class Toxics:
    # Added to every chunk forwarded in either direction, +/- a uniform jitter.
    latency_ms: int = 0
    jitter_ms: int = 0
    # Listener closed (new connections get ECONNREFUSED) and every open connection closed.
    down: bool = False
    # Open connections are reset (RST) now, and new ones are reset on accept, until cleared.
    reset_peer: bool = False
    # A connection is cut once it has forwarded this many bytes (both directions together),
    # counted from when the toxic was set or the connection opened, whichever is later: the
    # same as Toxiproxy, so "let the handshake through, cut the next big reply" is expressible.
    limit_data: int | None = None
    # Data is read and dropped in both directions while the connection is held open.
    timeout: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, patch: Mapping[str, Any]) -> Toxics:
        if not isinstance(patch, Mapping):
            raise ToxicError("toxics must be a JSON object")
        changes: dict[str, Any] = {}
        for key, value in patch.items():
            if key not in _TOXIC_NAMES:
                raise ToxicError(f"unknown toxic {key!r}; known: {sorted(_TOXIC_NAMES)}")
            if key in ("down", "reset_peer", "timeout"):
                if not isinstance(value, bool):
                    raise ToxicError(f"{key} must be a boolean")
            elif key == "limit_data" and value is None:
                pass
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ToxicError(f"{key} must be a non-negative integer")
            changes[key] = value
        return dataclasses.replace(self, **changes)


_TOXIC_NAMES = frozenset(f.name for f in dataclasses.fields(Toxics))


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER with a zero timeout makes close() abortive."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    __slots__ = ("client", "closed", "forwarded", "limit_base", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.forwarded = 0
        self.limit_base = 0
        self.closed = False

    def close(self, *, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if reset:
            _reset(self.client)
        else:
            self.client.transport.close()
        self.upstream.transport.abort()


class FaultProxy:
    """`await proxy.start()`, point clients at `proxy.port`, change toxics with `await
    proxy.set_toxics(down=True)` / `await proxy.clear_toxics()`, then `await proxy.stop()`.

    `listen_port=0` picks a free port; the chosen port is kept across down/up cycles."""

    def __init__(
        self,
        listen_port: int,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        seed: int | None = None,
    ) -> None:
        self.listen_host = listen_host
        self.port = listen_port
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._toxics = Toxics()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self._random = random.Random(seed)
        self._started = False
        self.total_connections = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._started = True
        if not self._toxics.down:
            await self._listen()

    async def stop(self) -> None:
        self._started = False
        await self._unlisten()
        for conn in list(self._conns):
            conn.close()
        # Closed sockets end the pumps by themselves; cancel only what is stuck (e.g. mid-connect).
        if self._tasks:
            _, stuck = await asyncio.wait(set(self._tasks), timeout=2)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.gather(*stuck, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._on_client, self.listen_host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    # ------------------------------------------------------------------ toxics

    @property
    def toxics(self) -> Toxics:
        return self._toxics

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    async def update(self, patch: Mapping[str, Any]) -> Toxics:
        """Merge `patch` into the current toxics (raises ToxicError) and apply the transitions."""
        async with self._lock:
            before = self._toxics
            after = before.merged(patch)
            self._toxics = after
            if after.down and not before.down:
                await self._unlisten()
                for conn in list(self._conns):
                    conn.close()
            elif before.down and not after.down and self._started:
                await self._listen()
            if after.limit_data != before.limit_data:
                for conn in self._conns:
                    conn.limit_base = conn.forwarded
            if after.reset_peer and not before.reset_peer:
                for conn in list(self._conns):
                    conn.close(reset=True)
            return after

    async def set_toxics(self, **toxics: Any) -> Toxics:
        return await self.update(toxics)

    async def clear_toxics(self) -> Toxics:
        return await self.update(Toxics().as_dict())

    # ------------------------------------------------------------------ forwarding

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # asyncio.start_server's done-callback calls task.exception(), which re-raises a
            # cancellation as a logged "Exception in callback"; finishing normally avoids that.
            writer.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.total_connections += 1
        if self._toxics.reset_peer:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            # Upstream really down: the client should see what it would see without the proxy.
            _reset(writer)
            return
        conn = _Conn(writer, up_writer)
        toxics = self._toxics
        if toxics.down or toxics.reset_peer:
            conn.close(reset=toxics.reset_peer)
            return
        self._conns.add(conn)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, conn)),
            asyncio.ensure_future(self._pump(up_reader, writer, conn)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            conn.close()
            self._conns.discard(conn)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn) -> None:
        try:
            while True:
                data = await src.read(_READ_SIZE)
                if not data or conn.closed:
                    return
                toxics = self._toxics
                if toxics.timeout:
                    continue
                if toxics.latency_ms or toxics.jitter_ms:
                    jitter = self._random.randint(-toxics.jitter_ms, toxics.jitter_ms) if toxics.jitter_ms else 0
                    await asyncio.sleep(max(0, toxics.latency_ms + jitter) / 1000)
                    toxics = self._toxics
                    if conn.closed:
                        return
                    if toxics.timeout:
                        continue
                if toxics.limit_data is not None:
                    allowed = toxics.limit_data - (conn.forwarded - conn.limit_base)
                    if allowed < len(data):
                        if allowed > 0:
                            dst.write(data[:allowed])
                            conn.forwarded += allowed
                            with contextlib.suppress(ConnectionError):
                                await dst.drain()
                        return
                conn.forwarded += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            return
