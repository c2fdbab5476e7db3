"""An ASGI app under uvicorn in a daemon thread of the test process, with its own event loop and
real loopback sockets: the server never shares the test's loop, so a test's blocking calls (or a
misbehaving test) cannot stall it. Port 0 is bound by uvicorn itself, so there is no
pick-then-bind race. (`support.servers.AppServer` is the in-loop variant, for the app under test.)

    with ThreadedServer(app) as server:        # or: server = ThreadedServer(app).start() ... server.stop()
        httpx.get(server.url + "/healthz")
"""

from __future__ import annotations

import threading
import time
from typing import Any, Self

import uvicorn


class ThreadedServer:
    """uvicorn on `host:port` (port 0: a free one, read back once started) in a daemon thread.

    `app` is the ASGI app (its `state` stays reachable for white-box checks), `server` the
    uvicorn server, `port`/`url` valid once `start()` returned. Subclasses may override `start`
    to narrow its return type."""

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
        graceful_shutdown_s: int = 2, start_timeout_s: float = 15.0, stop_timeout_s: float = 10.0,
    ) -> None:
        self.app = app
        self.host = host
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                           timeout_graceful_shutdown=graceful_shutdown_s)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"uvicorn-{type(app).__name__}")
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start the thread and wait until uvicorn listens (lifespan startup done)."""
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"{type(self.app).__name__} server exited during startup (see its log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{type(self.app).__name__} server did not start within {self.start_timeout_s}s")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit (lifespan shutdown runs) and wait for the thread."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(self.stop_timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
