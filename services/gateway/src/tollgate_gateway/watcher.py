"""Watching the client side of a request while the upstream works: a client that hangs up
cancels the request at once, so the upstream call stops. Billing is recorded after the watch
ends, so a hang-up never interrupts it."""

from __future__ import annotations

import asyncio

from starlette.types import Receive


class Watcher:
    __slots__ = ("_target", "_task", "finished", "gone")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.finished = False
        self._target = asyncio.current_task()
        self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.gone = True
                    if self._target is not None:
                        self._target.cancel()
                return

    def stop(self) -> None:
        # Not cancelled: the server reports a disconnect to `receive` as soon as the response is
        # complete, so the task ends by itself. A cancelled task would keep its CancelledError,
        # whose traceback holds this watcher: one reference cycle per request for the collector.
        self.finished = True
        self._target = None


def uncancel() -> None:
    """After a hang-up was handled: the task carries on (to settle), it is not being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()
