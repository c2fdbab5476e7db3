"""A minimal round-robin TCP load balancer for tests: the stable address in front of a service's
replicas (the Dodo webhook target, the admin API), so killing one replica does not take the
address down. A connection goes to the next replica that accepts it; it never retries a request
that a replica already started to read (that is the client's business, as with a real balancer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class TcpBalancer:
    def __init__(self, port: int, backends: Callable[[], list[int]], host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._backends = backends
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        ports = self._backends()
        for _ in range(len(ports)):
            port = ports[self._next % len(ports)]
            self._next += 1
            try:
                return await asyncio.wait_for(asyncio.open_connection(self.host, port), timeout=1.0)
            except (OSError, TimeoutError):
                continue
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except asyncio.CancelledError:
            # start_server's done-callback would log a cancelled handler as an error.
            writer.transport.abort()
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
